//! The Isthmus controller: the Neutron v2.0 API over the service layer, on any store.

pub mod api;
pub mod auth;
pub mod informer;
pub mod keys;
pub mod kubernetes;
pub mod leader;
pub mod metrics;
pub mod service;
pub mod staged;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;

use isthmus_store::SharedStore;

pub use auth::{Auth, Keystone, KeystoneConfig};
pub use service::{Config, Endpoint, Kind, Listed, Registry, Service, TagOp};

/// Errors starting or running the controller.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The Kubernetes cluster cannot be reached as configured.
    #[error("Kubernetes: {0}")]
    Kubernetes(String),
    /// The HTTP server failed.
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// Builds the API router for a store, serving Neutron's resources.
pub fn app(store: SharedStore, config: Config) -> axum::Router {
    app_with(store, config, Registry::neutron())
}

/// Builds the API router for a store, serving the collections of `registry` (noauth).
pub fn app_with(store: SharedStore, config: Config, registry: Registry) -> axum::Router {
    app_full(store, config, registry, Auth::NoAuth)
}

/// Builds the API router for a store, serving the collections of `registry` to callers
/// identified by `auth`.
pub fn app_full(
    store: SharedStore,
    config: Config,
    registry: Registry,
    auth: Auth,
) -> axum::Router {
    // Never closing: the sender goes now, which watches read as "runs until dropped".
    let (_, closing) = tokio::sync::watch::channel(false);
    router_for(
        Service::new(store, config).shared(),
        registry,
        auth,
        closing,
    )
}

/// How often the controller looks for L3 service ports whose router is gone.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Deletes leftover router service ports and repairs DHCP ports now and then (see
/// [`Service::sweep_router_ports`], [`Service::sweep_dhcp_ports`]), while leading.
async fn sweep(service: Arc<Service>, mut leader: leader::Leadership) {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        leader.wait().await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        match service.sweep_router_ports(now, SWEEP_EVERY.as_secs()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!("deleted {n} router ports whose router is gone"),
            Err(e) => tracing::warn!("router port sweep failed: {e}"),
        }
        match service.sweep_dhcp_ports().await {
            Ok(0) => {}
            Ok(n) => tracing::info!("repaired the DHCP ports of {n} networks"),
            Err(e) => tracing::warn!("DHCP port sweep failed: {e}"),
        }
    }
}

/// Moves the gateways of silent nodes (see [`Service::reschedule_gateways`]), checking every
/// second while leading.
async fn gateway_failover(service: Arc<Service>, mut leader: leader::Leadership) {
    let down_after = std::time::Duration::from_secs(service.config().gateway_down_seconds);
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        leader.wait().await;
        if let Err(e) = service.reschedule_gateways(down_after).await {
            tracing::warn!("moving the gateways of silent nodes failed: {e}");
        }
    }
}

/// Compacts the store's history every [`Config::compact_every`], keeping
/// [`Config::history_kept`] revisions, so that heartbeats and every other write do not grow
/// etcd's history until its space alarm (while leading).
async fn compact(service: Arc<Service>, mut leader: leader::Leadership) {
    let (every, kept) = (
        service.config().compact_every,
        service.config().history_kept,
    );
    loop {
        tokio::time::sleep(every).await;
        leader.wait().await;
        if let Err(e) = service.compact_history(kept).await {
            tracing::warn!("compacting the store's history failed: {e}");
        }
    }
}

fn router_for(
    service: Arc<Service>,
    registry: Registry,
    auth: Auth,
    closing: tokio::sync::watch::Receiver<bool>,
) -> axum::Router {
    let state = Arc::new(api::AppState {
        closing,
        informer: service.informer().clone(),
        service,
        metrics: metrics::Metrics::default(),
        registry,
        octavia: Registry::octavia(),
        auth,
    });
    api::router(state)
}

/// Serves the Neutron and Octavia APIs on `listener` (and on `octavia`, a listener of its own
/// for the load-balancer catalog entry), identifying callers with `auth`, and watches the
/// Kubernetes cluster of `kubernetes` if given, until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    octavia: Option<tokio::net::TcpListener>,
    store: SharedStore,
    config: Config,
    auth: Auth,
    kubernetes: Option<kubernetes::Settings>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ControllerError> {
    let (stopping, stop) = tokio::sync::watch::channel(false);
    let me = format!(
        "{}:{}:{}",
        hostname(),
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let (leadership, campaign) =
        leader::campaign(store.clone(), me, config.leader_lease, stop.clone());
    let campaign = tokio::spawn(campaign);
    let service = Service::new(store, config).shared();
    tokio::spawn(sweep(service.clone(), leadership.clone()));
    tokio::spawn(compact(service.clone(), leadership.clone()));
    tokio::spawn(gateway_failover(service.clone(), leadership));
    let watcher =
        kubernetes.map(|settings| tokio::spawn(kubernetes::run(service.clone(), settings, stop)));
    let (closing, closed) = tokio::sync::watch::channel(false);
    let app = router_for(service, Registry::neutron(), auth, closed.clone());
    let mut shutdown = std::pin::pin!(shutdown);
    let mut connections = tokio::task::JoinSet::new();
    let accept_octavia = || async {
        match &octavia {
            Some(l) => l.accept().await,
            None => std::future::pending().await,
        }
    };
    loop {
        tokio::select! {
            accepted = async { tokio::select! {
                a = listener.accept() => a,
                a = accept_octavia() => a,
            } } => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(connection(stream, app.clone(), closed.clone()));
                }
                // Out of descriptors and the like: the listener itself stays usable.
                Err(e) => {
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    // The Kubernetes watcher and the leader hand their leases over first, so another
    // controller carries on.
    let _ = stopping.send(true);
    if let Some(watcher) = watcher {
        let _ = tokio::time::timeout(GRACE, watcher).await;
    }
    let _ = tokio::time::timeout(GRACE, campaign).await;
    // Node watches end now (agents move to another controller); requests in flight get
    // `GRACE` to finish and are then cut, so that a rolling restart never hangs.
    let _ = closing.send(true);
    let _ = tokio::time::timeout(GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

/// This machine's name, for telling controllers apart in the leader key.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "controller".to_owned())
}

/// How long open connections get to finish once the controller stops.
const GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Largest request head hyper reads (request line and headers); the API refuses heads far
/// smaller than this with Neutron's errors (`api::URI_LIMIT`, `api::HEADERS_LIMIT`), so only
/// beyond it does hyper answer by itself.
const HEAD_BUFFER: usize = 1 << 20;

/// One HTTP/1.1 connection, ended gracefully when `closed` turns true.
async fn connection(
    stream: tokio::net::TcpStream,
    app: axum::Router,
    mut closed: tokio::sync::watch::Receiver<bool>,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(30))
        .max_buf_size(HEAD_BUFFER)
        .max_headers(api::HEADERS_LIMIT * 4);
    let service = hyper_util::service::TowerToHyperService::new(app);
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = async { closed.wait_for(|c| *c).await.is_ok() } => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
