//! The Neutron v2.0 HTTP API. Handlers only translate between HTTP and the service layer:
//! parse, call, render.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Extension, Json, Router};
use isthmus_model::input::parse_json;
use isthmus_model::query::ListQuery;
use isthmus_model::wire::WireSer;
use isthmus_model::{Caller, Error};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{json, Value};

use crate::auth::Auth;
use crate::metrics::Metrics;
use crate::service::{Endpoint, Listed, Registry, Service, TagOp};

/// Octavia's v2 API on the same state (its own routes, errors and policy).
mod octavia;

/// What the handlers share.
pub struct AppState {
    /// The service layer.
    pub service: Arc<Service>,
    /// Request metrics.
    pub metrics: Metrics,
    /// The shared mirror node watches read.
    pub informer: Arc<crate::informer::Informer>,
    /// The resource collections served under `/v2.0/`.
    pub registry: Registry,
    /// Octavia's collections, served under `/v2/lbaas/` and `/v2.0/lbaas/`.
    pub octavia: Registry,
    /// How callers are identified.
    pub auth: Auth,
    /// Turns true when the controller stops: open node watches end then, so that agents move
    /// to another controller and the process exits at once.
    pub closing: tokio::sync::watch::Receiver<bool>,
}

type Shared = State<Arc<AppState>>;

/// A Neutron fault as an HTTP response.
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

/// What went wrong inside a request that answered 500: logged with the request id, never
/// sent to the client.
#[derive(Clone)]
struct InternalDetail(String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let internal = matches!(self.0, Error::Internal(_)) || status.is_server_error();
        let message = if matches!(self.0, Error::Internal(_)) {
            "Request Failed: internal server error while processing your request.".to_owned()
        } else {
            self.0.to_string()
        };
        let body = json!({"NeutronError": {
            "type": self.0.type_name(),
            "message": message,
            "detail": "",
        }});
        let mut response = (status, Json(body)).into_response();
        if internal {
            log_detail(&mut response, self.0.to_string());
        }
        response
    }
}

/// Marks `response` (a 500) with what went wrong, for the log line of its request.
pub(crate) fn log_detail(response: &mut Response, detail: String) {
    response.extensions_mut().insert(InternalDetail(detail));
}

type ApiResult = Result<Response, ApiError>;

/// Longest request URI (longer ones get 414), as Neutron's WSGI server's line limit.
pub const URI_LIMIT: usize = 16 * 1024;

/// Most request headers (more get 431), and their largest total size.
pub const HEADERS_LIMIT: usize = 100;
const HEADER_BYTES_LIMIT: usize = 64 * 1024;

/// Largest request body (bigger ones get 413). Neutron's default `max_request_body_size` is
/// 112 KiB; Isthmus takes up to 1 MiB so that bulk creates of a few thousand ports fit.
pub const BODY_LIMIT: usize = 1 << 20;

/// Extensions that work end to end (and only those).
const EXTENSIONS: &[(&str, &str, &str)] = &[
    ("security-group", "security-group", "The security groups extension."),
    ("port-security", "Port Security", "Provides port security"),
    ("allowed-address-pairs", "Allowed Address Pairs", "Provides allowed address pairs"),
    ("dns-integration", "DNS Integration", "Provides integration with DNS."),
    ("binding", "Port Binding", "Expose port bindings of a virtual port to external application"),
    ("provider", "Provider Network", "Expose mapping of virtual networks to physical networks"),
    ("external-net", "Neutron external network", "Adds external network attribute to network resource."),
    ("net-mtu", "Network MTU", "Provides MTU attribute for a network resource."),
    ("net-mtu-writable", "Network MTU (writable)", "Provides a writable MTU attribute for a network resource."),
    ("standard-attr-tag", "Tag support for resources with standard attribute: subnet, port, network, security_group", "Enables to set tag on resources with standard attribute."),
    ("standard-attr-revisions", "Resource revision numbers", "This extension will display the revision number of neutron resources."),
    ("standard-attr-description", "standard-attr-description", "Extension to add descriptions to standard attributes"),
    ("standard-attr-timestamp", "Resource timestamps", "Adds created_at and updated_at fields to all Neutron resources that have Neutron standard attributes."),
    ("revision-if-match", "If-Match constraints based on revision_number", "Extension indicating that If-Match based on revision_number is supported."),
    ("agent", "agent", "The agent management extension."),
    ("network-ip-availability", "Network IP Availability", "Provides IP availability data for each network and subnet."),
    ("project-id", "project_id field enabled", "Extension that indicates that project_id field is enabled."),
    ("filter-validation", "Filter parameters validation", "Provides validation on filtering parameters."),
    ("ip-substring-filtering", "IP address substring filtering", "Provides IP address substring filtering when listing ports"),
    ("pagination", "Pagination support", "Extension that indicates that pagination is enabled."),
    ("sorting", "Sorting support", "Extension that indicates that sorting is enabled."),
    ("router", "Neutron L3 Router", "Router abstraction for basic L3 forwarding between L2 Neutron networks and access to external networks via a NAT gateway."),
    ("ext-gw-mode", "Neutron L3 Configurable external gateway mode", "Extension of the router abstraction for specifying whether SNAT should occur on the external gateway"),
    ("extraroute", "Neutron Extra Route", "Extra routes configuration for L3 router"),
    ("dvr", "Distributed Virtual Router", "Enables configuration of Distributed Virtual Routers."),
    ("address-scope", "Address scope", "Address scopes extension."),
    ("subnet_allocation", "Subnet Allocation", "Enables allocation of subnets from a subnet pool"),
    ("default-subnetpools", "Default Subnetpools", "Provides ability to mark and use a subnetpool as the default."),
    ("subnetpool-prefix-ops", "Subnet Pool Prefix Operations", "Provides support for adjusting the prefix list of subnet pools"),
    ("rbac-policies", "RBAC Policies", "Allows creation and modification of policies that control tenant access to resources."),
    ("rbac-security-groups", "Add security_group type to network RBAC", "Add security_group type to network RBAC"),
    ("rbac-subnetpool", "Add subnetpool type to network RBAC", "Add subnetpool type to network RBAC"),
    ("rbac-address-scope", "Add address_scope type to RBAC", "Add address_scope type to RBAC"),
    ("l3-ha", "HA Router extension", "Adds HA capability to routers."),
    ("extraroute-atomic", "Atomically add/remove extra routes", "Edit extra routes of a router on server side by atomically adding/removing extra routes"),
    ("router-admin-state-down-before-update", "Enforce Router's Admin State Down Before Update Extension", "Ensure that the admin state of a router is down (admin_state_up=False) before updating the distributed attribute"),
    ("fip-port-details", "Floating IP Port Details Extension", "Add port_details attribute to Floating IP resource"),
    ("floatingip-pools", "Floating IP Pools Extension", "Provides a floating IP pools API."),
    ("floating-ip-router-writable", "Floating IP Router (writable)", "Provides a writable router_id attribute for a floating IP resource."),
    ("port-mac-address-regenerate", "Neutron Port MAC address regenerate", "Network port MAC address regenerate"),
    ("extra_dhcp_opt", "Neutron Extra DHCP options", "Extra options configuration for DHCP. For example PXE boot options to DHCP clients can be specified (e.g. tftp-server, server-ip-address, bootfile-name)"),
    ("availability_zone", "Availability Zone", "The availability zone extension."),
    ("network_availability_zone", "Network Availability Zone", "Availability zone support for network."),
    ("router_availability_zone", "Router Availability Zone", "Availability zone support for router."),
    ("tag-ports-during-bulk-creation", "Tag Ports During Bulk Creation", "Allow to tag ports during bulk creation"),
    ("stateful-security-group", "Stateful security group", "Indicates if the security group is stateful or not"),
    ("security-groups-default-rules", "Default rules for security groups", "Configure set of security group rules used as default rules for every new security group"),
    ("security-groups-normalized-cidr", "Normalized CIDR field for security group rules", "Add new field with normalized remote_ip_prefix cidr in SG rule"),
    ("address-group", "Address group", "Support address group"),
    ("trunk", "Trunk Extension", "Provides support for trunk ports"),
    ("trunk-details", "Trunk port details", "Expose trunk port details"),
    ("subnet-service-types", "Subnet service types", "Provides ability to set the subnet service_types field"),
    ("quotas", "Quota management support", "Expose functions for quotas management per project"),
    ("quota_details", "Quota details management support", "Expose functions for quotas usage statistics per project"),
    ("quota-check-limit", "Quota engine limit check", "Support for checking the resource usage before applying a new quota limit"),
    ("quota-check-limit-default", "Quota engine limit check by default", "By default, the Neutron quota engine checks the resource usage before applying a new quota limit"),
];

/// The API router.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(versions))
        .route("/v2.0", get(resources))
        .route("/v2.0/", get(resources))
        .route("/v2.0/extensions", get(list_extensions))
        .route("/v2.0/extensions/{alias}", get(show_extension))
        .route("/v2.0/{collection}", get(list).post(create::<Neutron>))
        .route(
            "/v2.0/{collection}/{id}",
            get(show::<Neutron>).put(update::<Neutron>).delete(remove),
        )
        .route(
            "/v2.0/{collection}/{id}/{action}",
            get(member_read).put(member_action),
        )
        .route(
            "/v2.0/{collection}/{id}/tags",
            get(show_tags).put(replace_tags).delete(clear_tags),
        )
        .route(
            "/v2.0/{collection}/{id}/tags/{tag}",
            get(check_tag).put(add_tag).delete(remove_tag),
        )
        .route(
            "/v2.0/network-ip-availabilities",
            get(list_ip_availabilities),
        )
        .route(
            "/v2.0/network-ip-availabilities/{id}",
            get(show_ip_availability),
        )
        .route("/v2.0/quotas", get(list_quotas))
        .route(
            "/v2.0/quotas/{project}",
            get(show_quota).put(update_quota).delete(delete_quota),
        )
        .route("/v2.0/quotas/{project}/default", get(default_quota))
        .route("/v2.0/quotas/{project}/details", get(quota_details))
        .route("/v2.0/quotas/{project}/details.json", get(quota_details))
        .route("/v2.0/floatingip_pools", get(list_floating_ip_pools))
        .route("/v2.0/availability_zones", get(list_availability_zones))
        .route("/v2.0/agents", get(list_agents))
        .route("/v2.0/agents/{id}", get(show_agent))
        .route("/isthmus/v1/nodes", get(list_nodes).post(register_node))
        .route(
            "/isthmus/v1/nodes/{name}",
            get(show_node).delete(delete_node),
        )
        .route("/isthmus/v1/nodes/{name}/heartbeat", put(heartbeat))
        .route("/isthmus/v1/nodes/{name}/applied", put(applied))
        .route("/isthmus/v1/nodes/{name}/lb-stats", put(lb_stats))
        .route("/isthmus/v1/ports/{id}/status", put(port_status))
        .route("/isthmus/v1/ports/{id}/subports", post(nested_subport))
        .route(
            "/isthmus/v1/ports/{id}/subports/{container_id}/{ifname}",
            delete(release_nested_subport),
        )
        .route("/isthmus/v1/members/{id}/status", put(member_status))
        .route(
            "/isthmus/v1/floatingips/{id}/status",
            put(floating_ip_status),
        )
        .route(
            "/isthmus/v1/namespace-bindings",
            get(list_namespace_bindings),
        )
        .route(
            "/isthmus/v1/namespace-bindings/{namespace}",
            get(show_namespace_binding)
                .put(put_namespace_binding)
                .delete(delete_namespace_binding),
        )
        .route("/isthmus/v1/watch", get(watch).post(resume_watch))
        .merge(octavia::routes())
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError(Error::PathNotFound) })
        .method_not_allowed_fallback(|| async { ApiError(Error::MethodNotAllowed) })
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

async fn observe(State(state): Shared, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    state.metrics.observe(
        method.as_str(),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Gives every request an id (`X-Openstack-Request-Id`, as Neutron), identifies its caller
/// (401 when it cannot be) and logs what a 500 hides from the client.
async fn authenticate(State(state): Shared, mut request: Request, next: Next) -> Response {
    let request_id = format!("req-{}", uuid::Uuid::new_v4());
    let method = request.method().clone();
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    let too_large = if request.uri().to_string().len() > URI_LIMIT {
        Some(StatusCode::URI_TOO_LONG)
    } else if request.headers().len() > HEADERS_LIMIT || header_bytes > HEADER_BYTES_LIMIT {
        Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
    } else {
        None
    };
    if let Some(status) = too_large {
        let mut response = neutron_format(status.into_response());
        if let Ok(id) = request_id.parse() {
            response.headers_mut().insert("x-openstack-request-id", id);
        }
        return response;
    }
    let path = request.uri().path().to_owned();
    // Version discovery and health are public, as in Neutron's paste pipeline.
    let public = matches!(path.as_str(), "/" | "/healthz" | "/metrics");
    let mut response = if public {
        next.run(request).await
    } else {
        match state.auth.caller(request.headers()).await {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                next.run(request).await
            }
            Err(e) => {
                let mut response = ApiError(e).into_response();
                if response.status() == StatusCode::UNAUTHORIZED {
                    if let Some(challenge) = state.auth.challenge().and_then(|c| c.parse().ok()) {
                        response.headers_mut().insert("www-authenticate", challenge);
                    }
                }
                response
            }
        }
    };
    if octavia::is_octavia(&path) {
        response = octavia::format(response).await;
    } else if !public {
        response = neutron_format(response);
    }
    if let Some(InternalDetail(detail)) = response.extensions().get::<InternalDetail>() {
        tracing::error!(
            request_id = %request_id,
            method = %method,
            path = %path,
            status = response.status().as_u16(),
            "request failed: {detail}"
        );
    }
    if let Ok(id) = request_id.parse() {
        response.headers_mut().insert("x-openstack-request-id", id);
    }
    response
}

/// An error answered by the HTTP layer itself (axum's rejections: a path that is not UTF-8, a
/// body over the limit, a body that is not JSON) in Neutron's error format, with Neutron's
/// words rather than the framework's.
fn neutron_format(response: Response) -> Response {
    let status = response.status();
    let json = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return response;
    }
    let (kind, message) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ("HTTPRequestEntityTooLarge", "Request is too large."),
        StatusCode::URI_TOO_LONG => ("HTTPRequestURITooLong", "The request URI is too long."),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => (
            "HTTPRequestHeaderFieldsTooLarge",
            "The request's header fields are too large.",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ("HTTPUnsupportedMediaType", "The request body must be JSON.")
        }
        StatusCode::NOT_FOUND => ("HTTPNotFound", "The resource could not be found."),
        StatusCode::METHOD_NOT_ALLOWED => (
            "HTTPMethodNotAllowed",
            "The method is not allowed for this resource.",
        ),
        s if s.is_server_error() => (
            "InternalServerError",
            "Request Failed: internal server error while processing your request.",
        ),
        _ => ("HTTPBadRequest", "The request could not be understood."),
    };
    let body = json!({"NeutronError": {"type": kind, "message": message, "detail": ""}});
    let mut rewritten = (status, Json(body)).into_response();
    for name in ["www-authenticate", "allow"] {
        if let Some(v) = response.headers().get(name) {
            rewritten.headers_mut().insert(name, v.clone());
        }
    }
    rewritten
}

fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost:9696");
    format!("http://{host}")
}

fn endpoint<'a>(state: &'a AppState, collection: &str) -> Result<&'a dyn Endpoint, ApiError> {
    Ok(Neutron::endpoint(state, collection)?)
}

/// What differs between the two APIs the generic handlers serve.
pub(crate) trait Flavor: Send + Sync + 'static {
    /// Its error answer.
    type Error: From<Error> + IntoResponse + Send + 'static;
    /// Whether `{"<plural>": [...]}` creates many (Neutron's bulk create).
    const BULK: bool;
    /// Whether `If-Match: revision_number=N` is honoured.
    const CONDITIONAL: bool;
    /// The kind serving `collection`.
    fn endpoint<'a>(state: &'a AppState, collection: &str) -> Result<&'a dyn Endpoint, Error>;
}

/// The Neutron API.
pub(crate) struct Neutron;

impl Flavor for Neutron {
    type Error = ApiError;
    const BULK: bool = true;
    const CONDITIONAL: bool = true;
    fn endpoint<'a>(state: &'a AppState, collection: &str) -> Result<&'a dyn Endpoint, Error> {
        state.registry.find(collection).ok_or(Error::PathNotFound)
    }
}

/// Decodes `a=b&c=d` with percent-encoding and `+` for space.
pub fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                    match u8::from_str_radix(hex, 16) {
                        Ok(b) => {
                            out.push(b);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    raw.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

/// Parses `If-Match: revision_number=N` where the API honours it.
fn if_match_of<F: Flavor>(headers: &HeaderMap) -> Result<Option<u64>, Error> {
    if !F::CONDITIONAL {
        return Ok(None);
    }
    if_match(headers).map_err(|ApiError(e)| e)
}

/// Parses `If-Match: revision_number=N`.
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(raw) = headers.get("if-match").and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    for part in raw.split(',') {
        if let Some(n) = part.trim().strip_prefix("revision_number=") {
            return n.parse().map(Some).map_err(|_| {
                ApiError(Error::BadRequest(format!("Invalid If-Match value '{raw}'")))
            });
        }
    }
    Ok(None)
}

async fn versions(headers: HeaderMap) -> Json<Value> {
    let base = base_url(&headers);
    Json(json!({"versions": [{
        "id": "v2.0",
        "status": "CURRENT",
        "links": [{"href": format!("{base}/v2.0/"), "rel": "self"}],
    }]}))
}

async fn resources(State(state): Shared, headers: HeaderMap) -> Json<Value> {
    let base = base_url(&headers);
    let list: Vec<Value> = state
        .registry
        .iter()
        .map(|k| {
            json!({
                "name": k.singular(),
                "collection": k.plural(),
                "links": [{"href": format!("{base}/v2.0/{}", k.collection()), "rel": "self"}],
            })
        })
        .collect();
    Json(json!({ "resources": list }))
}

fn extension(alias: &str, name: &str, description: &str) -> Value {
    json!({"alias": alias, "name": name, "description": description,
           "updated": "2026-11-23T00:00:00-00:00", "links": []})
}

async fn list_extensions() -> Json<Value> {
    let list: Vec<Value> = EXTENSIONS
        .iter()
        .map(|(a, n, d)| extension(a, n, d))
        .collect();
    Json(json!({ "extensions": list }))
}

async fn show_extension(Path(alias): Path<String>) -> ApiResult {
    EXTENSIONS
        .iter()
        .find(|(a, _, _)| *a == alias)
        .map(|(a, n, d)| Json(json!({ "extension": extension(a, n, d) })).into_response())
        .ok_or(ApiError(Error::NotFound {
            kind: "Extension",
            id: alias,
        }))
}

async fn healthz(State(state): Shared) -> Response {
    match state.service.store().revision().await {
        Ok(rev) => (StatusCode::OK, format!("ok revision={rev}\n")).into_response(),
        Err(e) => {
            tracing::warn!("health check: store unavailable: {e}");
            (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n").into_response()
        }
    }
}

async fn metrics(State(state): Shared) -> Response {
    let revision = state.service.store().revision().await.unwrap_or(0);
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(revision),
    )
        .into_response()
}

async fn list(
    Extension(caller): Extension<Caller>,
    State(state): Shared,
    Path(collection): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> ApiResult {
    let kind = endpoint(&state, &collection)?;
    let base = format!("{}/v2.0/{}", base_url(&headers), kind.collection());
    Ok(list_response(
        &state.service,
        &caller,
        kind,
        &query_pairs(raw.as_deref()),
        &base,
    )
    .await?)
}

/// A list of `kind` as `caller` sees it, filtered, sorted and paged by the query `pairs`
/// (`base` is the collection's URL, for page links).
pub(crate) async fn list_response(
    service: &Service,
    caller: &Caller,
    kind: &dyn Endpoint,
    pairs: &[(String, String)],
    base: &str,
) -> Result<Response, Error> {
    let query = ListQuery::parse(pairs, kind.schema())?;
    let items = kind.list(service, caller).await?;
    let page = query.apply(items, base)?;
    let body = ListBody {
        kind,
        items: &page.items,
        fields: &query.fields,
        links: &page.links,
    };
    // Sized for ~1 KiB per object so a large page is written without regrowing the buffer.
    let mut bytes = Vec::with_capacity(1024 + page.items.len() * 1024);
    serde_json::to_writer(&mut bytes, &body)
        .map_err(|e| Error::Internal(format!("encoding failed: {e}")))?;
    Ok(([("content-type", "application/json")], bytes).into_response())
}

/// A list response, serialised straight from the items (no intermediate JSON values).
struct ListBody<'a> {
    kind: &'a dyn Endpoint,
    items: &'a [Listed],
    fields: &'a [String],
    links: &'a [Value],
}

impl Serialize for ListBody<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Items<'a>(&'a [Listed], &'a [String]);
        impl Serialize for Items<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
                for item in self.0 {
                    seq.serialize_element(&WireSer {
                        item: &**item,
                        fields: self.1,
                    })?;
                }
                seq.end()
            }
        }
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry(self.kind.plural(), &Items(self.items, self.fields))?;
        if !self.links.is_empty() {
            map.serialize_entry(&format!("{}_links", self.kind.plural()), self.links)?;
        }
        map.end()
    }
}

/// `{singular: object}` with the `fields` the query asks for (Neutron's and Octavia's show).
async fn show_one(
    service: &Service,
    caller: &Caller,
    kind: &dyn Endpoint,
    id: &str,
    raw_query: Option<&str>,
) -> Result<Response, Error> {
    let query = ListQuery::parse(&query_pairs(raw_query), kind.schema())?;
    let object = kind.show(service, caller, id).await?;
    Ok(one(kind, query.project_one(object)))
}

/// `{singular: object}`.
fn one(kind: &dyn Endpoint, object: impl Serialize) -> Response {
    Json(json!({ kind.singular(): object })).into_response()
}

/// 201 `{singular: object}`.
fn created_one(kind: &dyn Endpoint, object: impl Serialize) -> Response {
    (StatusCode::CREATED, one(kind, object)).into_response()
}

pub(crate) async fn show<F: Flavor>(
    Extension(caller): Extension<Caller>,
    State(state): Shared,
    Path((collection, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Response, F::Error> {
    let kind = F::endpoint(&state, &collection)?;
    Ok(show_one(&state.service, &caller, kind, &id, raw.as_deref()).await?)
}

pub(crate) async fn create<F: Flavor>(
    Extension(caller): Extension<Caller>,
    State(state): Shared,
    Path(collection): Path<String>,
    body: Bytes,
) -> Result<Response, F::Error> {
    let kind = F::endpoint(&state, &collection)?;
    let mut value = parse_json(&body)?;
    // Bulk create: `{"ports": [...]}`, all or nothing.
    if let Some(items) = F::BULK
        .then(|| value.get_mut(kind.plural()).map(Value::take))
        .flatten()
    {
        let Value::Array(items) = items else {
            return Err(Error::BadRequest(format!("'{}' must be a list", kind.plural())).into());
        };
        let created = bulk_create(&state.service, kind, &caller, items).await?;
        return Ok((StatusCode::CREATED, Json(json!({ kind.plural(): created }))).into_response());
    }
    let object = kind.create(&state.service, &caller, value).await?;
    Ok(created_one(kind, object))
}

/// A bulk create: every item or none, in one store transaction.
async fn bulk_create(
    service: &Service,
    kind: &dyn Endpoint,
    caller: &Caller,
    items: Vec<Value>,
) -> Result<Vec<Value>, Error> {
    // Items come bare (`{"ports": [{...}]}`) or wrapped (`{"ports": [{"port": {...}}]}`),
    // both as Neutron accepts them.
    let items: Vec<Value> = items
        .into_iter()
        .map(|item| match item {
            Value::Object(mut wrapped)
                if wrapped.len() == 1 && wrapped.contains_key(kind.singular()) =>
            {
                wrapped.remove(kind.singular()).unwrap_or_default()
            }
            bare => bare,
        })
        .collect();
    let items = &items;
    service
        .atomically(|| async move {
            let mut created = Vec::with_capacity(items.len());
            for item in items {
                let body = json!({ kind.singular(): item.clone() });
                created.push(Value::Object(kind.create(service, caller, body).await?));
            }
            Ok(created)
        })
        .await
}

pub(crate) async fn update<F: Flavor>(
    Extension(caller): Extension<Caller>,
    State(state): Shared,
    Path((collection, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, F::Error> {
    let kind = F::endpoint(&state, &collection)?;
    let value = parse_json(&body)?;
    let object = kind
        .update(
            &state.service,
            &caller,
            &id,
            value,
            if_match_of::<F>(&headers)?,
        )
        .await?;
    Ok(one(kind, object))
}

async fn remove(
    Extension(caller): Extension<Caller>,
    State(state): Shared,
    Path((collection, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let kind = endpoint(&state, &collection)?;
    kind.delete(&state.service, &caller, &id, if_match(&headers)?)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `PUT /v2.0/{collection}/{id}/{action}`: a kind's member action
/// (`add_router_interface`, `add_prefixes`, `add_addresses`, ...).
async fn member_action(
    Extension(caller): Extension<Caller>,
    State(state): Shared,
    Path((collection, id, action)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult {
    let answer = endpoint(&state, &collection)?
        .action(&state.service, &caller, &id, &action, parse_json(&body)?)
        .await?;
    Ok(Json(answer).into_response())
}

/// `GET /v2.0/{collection}/{id}/{action}`: a kind's member read (`get_subports`).
async fn member_read(
    Extension(caller): Extension<Caller>,
    State(state): Shared,
    Path((collection, id, action)): Path<(String, String, String)>,
) -> ApiResult {
    let answer = endpoint(&state, &collection)?
        .read_action(&state.service, &caller, &id, &action)
        .await?;
    Ok(Json(answer).into_response())
}

async fn show_tags(
    Extension(caller): Extension<Caller>,
    State(state): Shared,
    Path((collection, id)): Path<(String, String)>,
) -> ApiResult {
    let tags = endpoint(&state, &collection)?
        .tags(&state.service, &caller, &id)
        .await?;
    Ok(Json(json!({ "tags": tags })).into_response())
}

async fn replace_tags(
    Extension(caller): Extension<Caller>,
    State(state): Shared,
    Path((collection, id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let value = parse_json(&body)?;
    let tags = match value.get("tags") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|t| isthmus_model::input::as_string("tags", t, isthmus_model::meta::TAG_MAX))
            .collect::<Result<Vec<_>, _>>()?,
        _ => {
            return Err(ApiError(Error::BadRequest(
                "Invalid tags body: expected {\"tags\": [...]}".to_owned(),
            )))
        }
    };
    let tags = endpoint(&state, &collection)?
        .update_tags(&state.service, &caller, &id, TagOp::Replace(tags))
        .await?;
    Ok(Json(json!({ "tags": tags })).into_response())
}

async fn clear_tags(
    Extension(caller): Extension<Caller>,
    State(state): Shared,
    Path((collection, id)): Path<(String, String)>,
) -> ApiResult {
    endpoint(&state, &collection)?
        .update_tags(&state.service, &caller, &id, TagOp::Clear)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn check_tag(
    Extension(caller): Extension<Caller>,
    State(state): Shared,
    Path((collection, id, tag)): Path<(String, String, String)>,
) -> ApiResult {
    let tags = endpoint(&state, &collection)?
        .tags(&state.service, &caller, &id)
        .await?;
    if tags.contains(&tag) {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError(Error::NotFound {
            kind: "Tag",
            id: format!("{tag} on {id}"),
        }))
    }
}

async fn add_tag(
    Extension(caller): Extension<Caller>,
    State(state): Shared,
    Path((collection, id, tag)): Path<(String, String, String)>,
) -> ApiResult {
    endpoint(&state, &collection)?
        .update_tags(&state.service, &caller, &id, TagOp::Add(tag))
        .await?;
    Ok(StatusCode::CREATED.into_response())
}

async fn remove_tag(
    Extension(caller): Extension<Caller>,
    State(state): Shared,
    Path((collection, id, tag)): Path<(String, String, String)>,
) -> ApiResult {
    endpoint(&state, &collection)?
        .update_tags(&state.service, &caller, &id, TagOp::Remove(tag))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Native handlers: the caller, then the path's id and the JSON body when named, handed to
/// one service method; its value answered by `$answer` ([`under`], [`whole`],
/// [`no_content`], [`created_under`]).
macro_rules! native {
    ($name:ident() => $method:ident($($extra:expr),*), $answer:expr) => {
        async fn $name(Extension(caller): Extension<Caller>, State(state): Shared) -> ApiResult {
            let value = state.service.$method(&caller $(, $extra)*).await?;
            Ok(($answer)(value))
        }
    };
    ($name:ident(body) => $method:ident, $answer:expr) => {
        async fn $name(
            Extension(caller): Extension<Caller>,
            State(state): Shared,
            body: Bytes,
        ) -> ApiResult {
            let value = state.service.$method(&caller, parse_json(&body)?).await?;
            Ok(($answer)(value))
        }
    };
    ($name:ident(path) => $method:ident, $answer:expr) => {
        async fn $name(
            Extension(caller): Extension<Caller>,
            State(state): Shared,
            Path(id): Path<String>,
        ) -> ApiResult {
            let value = state.service.$method(&caller, &id).await?;
            Ok(($answer)(value))
        }
    };
    ($name:ident(path, body) => $method:ident, $answer:expr) => {
        async fn $name(
            Extension(caller): Extension<Caller>,
            State(state): Shared,
            Path(id): Path<String>,
            body: Bytes,
        ) -> ApiResult {
            let value = state
                .service
                .$method(&caller, &id, parse_json(&body)?)
                .await?;
            Ok(($answer)(value))
        }
    };
}

/// `{key: value}`.
fn under<V: Serialize>(key: &'static str) -> impl Fn(V) -> Response {
    move |value| Json(json!({ key: value })).into_response()
}

/// The value as it is.
fn whole(value: Value) -> Response {
    Json(value).into_response()
}

/// 204.
fn no_content((): ()) -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// `{key: value}`, 201 when the call created it, else 200.
fn created_under<V: Serialize>(key: &'static str) -> impl Fn((bool, V)) -> Response {
    move |(created, value)| {
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        (status, Json(json!({ key: value }))).into_response()
    }
}

native!(list_ip_availabilities() => list_ip_availabilities(), under("network_ip_availabilities"));
native!(show_ip_availability(path) => show_ip_availability, under("network_ip_availability"));
native!(list_quotas() => list_quotas(), whole);
native!(quota_details(path) => quota_details, whole);
native!(update_quota(path, body) => update_quota, whole);
native!(delete_quota(path) => delete_quota, no_content);
native!(list_floating_ip_pools() => floating_ip_pools(), under("floatingip_pools"));
native!(list_agents() => list_nodes(true), under("agents"));
native!(show_agent(path) => show_agent, under("agent"));
native!(list_nodes() => list_nodes(false), under("nodes"));
native!(register_node(body) => register_node, created_under("node"));
native!(show_node(path) => show_node, under("node"));
native!(delete_node(path) => delete_node, no_content);
native!(heartbeat(path) => heartbeat, no_content);
native!(port_status(path, body) => set_port_status, under("port"));
native!(applied(path, body) => set_applied, no_content);
native!(lb_stats(path, body) => set_lb_stats, no_content);
native!(nested_subport(path, body) => nested_subport, created_under("subport"));

/// `DELETE /isthmus/v1/ports/{parent}/subports/{container_id}/{ifname}`: the nested CNI's DEL.
async fn release_nested_subport(
    Extension(caller): Extension<Caller>,
    State(state): Shared,
    Path((parent, container_id, ifname)): Path<(String, String, String)>,
) -> ApiResult {
    state
        .service
        .release_nested_subport(&caller, &parent, &container_id, &ifname)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
native!(member_status(path, body) => set_member_status, under("member"));
native!(floating_ip_status(path, body) => set_floating_ip_status, under("floatingip"));
native!(list_namespace_bindings() => list_namespace_bindings(), under("namespace_bindings"));
native!(show_namespace_binding(path) => show_namespace_binding, under("namespace_binding"));
native!(put_namespace_binding(path, body) => put_namespace_binding, created_under("namespace_binding"));
native!(delete_namespace_binding(path) => delete_namespace_binding, no_content);

async fn show_quota(
    Extension(caller): Extension<Caller>,
    State(state): Shared,
    Path(project): Path<String>,
) -> ApiResult {
    let project = project.strip_suffix(".json").unwrap_or(&project);
    let quota = state.service.show_quota(&caller, project).await?;
    Ok(Json(quota).into_response())
}

async fn default_quota(State(state): Shared, Path(project): Path<String>) -> ApiResult {
    Ok(Json(state.service.default_quota(&project).await?).into_response())
}

/// The one zone every network and router is in.
async fn list_availability_zones() -> Json<Value> {
    Json(json!({"availability_zones": [
        {"name": "nova", "resource": "network", "state": "available"},
        {"name": "nova", "resource": "router", "state": "available"},
    ]}))
}

/// Largest body of a resumed watch: what an agent holds, ~50 bytes per object.
const RESUME_LIMIT: usize = 64 << 20;

/// `GET /isthmus/v1/watch?node=NAME[&from=REV]`: a node's view from a snapshot.
async fn watch(
    Extension(caller): Extension<Caller>,
    State(state): Shared,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    isthmus_model::policy::authorize_caller("watch_node", &caller)?;
    let pairs = query_pairs(raw.as_deref());
    let from = pairs
        .iter()
        .find(|(k, _)| k == "from")
        .map(|(_, f)| {
            f.parse::<u64>()
                .map(crate::watch::Resume::From)
                .map_err(|_| {
                    ApiError(Error::BadRequest(format!(
                        "'from' must be a revision, not '{f}'"
                    )))
                })
        })
        .transpose()?;
    stream_view(&state, &pairs, from.unwrap_or(crate::watch::Resume::Fresh)).await
}

/// `POST /isthmus/v1/watch?node=NAME` with `{"held": {kind: {id: revision}}}`: a node's view
/// for an agent that holds part of it already (it reconnects): only what differs is sent.
async fn resume_watch(
    Extension(caller): Extension<Caller>,
    State(state): Shared,
    RawQuery(raw): RawQuery,
    request: Request,
) -> ApiResult {
    // The caller is checked before its (possibly large) body is read.
    isthmus_model::policy::authorize_caller("watch_node", &caller)?;
    let pairs = query_pairs(raw.as_deref());
    let body = axum::body::to_bytes(request.into_body(), RESUME_LIMIT)
        .await
        .map_err(|_| {
            ApiError(Error::BadRequest(
                "the held objects are unreadable or too large".into(),
            ))
        })?;
    let body: Value = serde_json::from_slice(&body)
        .map_err(|_| ApiError(Error::BadRequest("the body must be JSON".into())))?;
    stream_view(&state, &pairs, crate::watch::Resume::holding(&body)?).await
}

async fn stream_view(
    state: &AppState,
    pairs: &[(String, String)],
    from: crate::watch::Resume,
) -> ApiResult {
    let node = pairs
        .iter()
        .find(|(k, _)| k == "node")
        .map(|(_, v)| v.clone())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError(Error::BadRequest(
                "the 'node' query parameter is required".into(),
            ))
        })?;
    let lines = crate::watch::start(
        state.service.clone(),
        state.informer.clone(),
        node,
        from,
        state.closing.clone(),
    )
    .await?;
    let stream = futures_util::stream::unfold(lines, |mut lines| async move {
        lines
            .recv()
            .await
            .map(|line| (Ok::<_, std::convert::Infallible>(line), lines))
    });
    Ok((
        [("content-type", "application/x-ndjson")],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}
