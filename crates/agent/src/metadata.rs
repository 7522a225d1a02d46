//! The metadata proxy, as Neutron's metadata agent does it: instances reach
//! 169.254.169.254:80 in their network's DHCP namespace (DHCP routes it there, on routed and
//! isolated networks alike); the proxy knows who is asking from the connection's source
//! address on that network and forwards to Nova's metadata API with the headers Nova trusts
//! (see [`isthmus_dataplane::metadata`]). Headers a client sends to claim another identity
//! are dropped. An address that is no instance of this node gets 404, as from Neutron.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use isthmus_dataplane::metadata::{headers, Instance, STRIPPED_HEADERS};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::MetadataConfig;

/// The node's instances by (network, address).
pub type Instances = BTreeMap<(String, IpAddr), Instance>;

/// Largest request or response body the proxy carries (Nova's user data is at most 64 KiB).
const BODY_LIMIT: usize = 1 << 20;
/// How long Nova gets to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// What every DHCP namespace's proxy shares.
pub struct Proxy {
    config: MetadataConfig,
    instances: watch::Receiver<Arc<Instances>>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Proxy {
    /// A proxy to `config`'s Nova, knowing instances from `instances`.
    pub fn new(config: MetadataConfig, instances: watch::Receiver<Arc<Instances>>) -> Proxy {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        Proxy {
            config,
            instances,
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }
}

/// Serves the metadata address of `network_id`'s DHCP namespace on `listener`.
pub async fn serve(listener: TcpListener, network_id: String, proxy: Arc<Proxy>) {
    let network = Arc::new(network_id);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("metadata accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (proxy, network) = (proxy.clone(), network.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let (proxy, network) = (proxy.clone(), network.clone());
                async move { Ok::<_, Infallible>(handle(&proxy, &network, peer, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    response
}

fn stripped(name: &hyper::header::HeaderName) -> bool {
    STRIPPED_HEADERS.contains(&name.as_str())
}

async fn handle(
    proxy: &Proxy,
    network: &str,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let address = peer.ip();
    let instance = proxy
        .instances
        .borrow()
        .get(&(network.to_owned(), address))
        .cloned();
    let Some(instance) = instance else {
        return plain(StatusCode::NOT_FOUND, "Instance not found");
    };
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, BODY_LIMIT).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return plain(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large"),
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut upstream = Request::builder()
        .method(parts.method.clone())
        .uri(format!("{}{path}", proxy.config.url));
    for (name, value) in parts.headers.iter().filter(|(n, _)| !stripped(n)) {
        upstream = upstream.header(name, value);
    }
    for (name, value) in headers(&proxy.config.secret, &instance, address) {
        upstream = upstream.header(name, value);
    }
    let Ok(upstream) = upstream.body(Full::new(body)) else {
        return plain(StatusCode::BAD_REQUEST, "Bad request");
    };
    let answer = tokio::time::timeout(UPSTREAM_TIMEOUT, proxy.client.request(upstream)).await;
    let response = match answer {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            tracing::warn!("metadata for {address} on {network}: {e}");
            return plain(StatusCode::BAD_GATEWAY, "Metadata service unavailable");
        }
        Err(_) => {
            tracing::warn!("metadata for {address} on {network}: no answer in time");
            return plain(
                StatusCode::GATEWAY_TIMEOUT,
                "Metadata service did not answer",
            );
        }
    };
    let (parts, body) = response.into_parts();
    let body = match Limited::new(body, BODY_LIMIT).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            tracing::warn!("metadata answer for {address}: {e}");
            return plain(
                StatusCode::BAD_GATEWAY,
                "Metadata service answer unreadable",
            );
        }
    };
    let mut out = Response::new(Full::new(body));
    *out.status_mut() = parts.status;
    for (name, value) in parts.headers.iter().filter(|(n, _)| !stripped(n)) {
        out.headers_mut().append(name, value.clone());
    }
    out
}
