//! The Octavia v2 API (`/v2/lbaas/` and `/v2.0/lbaas/`, where python-octaviaclient looks when
//! the load-balancer endpoint is the Neutron one): the same listener, store, auth and generic
//! resource code as the Neutron API, with Octavia's paths (members under their pool, the
//! status tree, cascade delete, providers) and Octavia's error bodies
//! (`{"faultcode", "faultstring", "debuginfo"}`).

use std::sync::Arc;

use axum::body::{to_bytes, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use isthmus_model::input::parse_json;
use isthmus_model::lbaas::{PROVIDER, PROVIDER_DESCRIPTION};
use isthmus_model::{Caller, Error};
use serde_json::{json, Value};

use super::{create, list_response, query_pairs, show, update, AppState, Flavor};
use crate::service::Endpoint;

type Shared = State<Arc<AppState>>;

/// An error in Octavia's format.
pub struct OctaviaError(pub Error);

impl From<Error> for OctaviaError {
    fn from(e: Error) -> Self {
        OctaviaError(e)
    }
}

/// Octavia's wording of an error.
fn message(e: &Error) -> String {
    match e {
        Error::NotFound { kind, id } => format!("{kind} {id} not found."),
        Error::PolicyNotAuthorized(_) => {
            "Policy does not allow this request to be performed.".to_owned()
        }
        Error::Internal(_) => "Internal Server Error".to_owned(),
        other => other.to_string(),
    }
}

fn body(status: StatusCode, faultstring: &str) -> Response {
    let faultcode = if status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED {
        "Server"
    } else {
        "Client"
    };
    let body = json!({"faultcode": faultcode, "faultstring": faultstring, "debuginfo": null});
    (status, Json(body)).into_response()
}

impl IntoResponse for OctaviaError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = body(status, &message(&self.0));
        if matches!(self.0, Error::Internal(_)) || status == StatusCode::INTERNAL_SERVER_ERROR {
            crate::api::log_detail(&mut response, self.0.to_string());
        }
        response
    }
}

type OctaviaResult = Result<Response, OctaviaError>;

/// Whether `path` is served by this API.
pub fn is_octavia(path: &str) -> bool {
    path.starts_with("/v2/lbaas") || path.starts_with("/v2.0/lbaas")
}

/// Rewrites an error answered outside the handlers (authentication, unknown paths, methods,
/// bodies the framework refused) into Octavia's format.
pub async fn format(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (parts, raw) = response.into_parts();
    let raw = to_bytes(raw, 64 * 1024).await.unwrap_or_default();
    let parsed: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    if parsed.get("faultstring").is_some() {
        return Response::from_parts(parts, axum::body::Body::from(raw));
    }
    let text = parsed["NeutronError"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("Error").to_owned());
    let mut rewritten = body(status, &text);
    for name in ["www-authenticate", "allow", "x-openstack-request-id"] {
        if let Some(v) = parts.headers.get(name) {
            rewritten.headers_mut().insert(name, v.clone());
        }
    }
    *rewritten.extensions_mut() = parts.extensions;
    rewritten
}

/// The Octavia routes, under both prefixes.
pub fn routes() -> Router<Arc<AppState>> {
    let lbaas = Router::new()
        .route("/providers", get(providers))
        .route("/loadbalancers/{id}/status", get(status))
        .route("/{collection}/{id}/stats", get(stats))
        .route(
            "/pools/{pool_id}/members",
            get(list_members).post(create_member),
        )
        .route(
            "/pools/{pool_id}/members/{id}",
            get(show_member).put(update_member).delete(delete_member),
        )
        .route("/{collection}", get(list).post(create::<Octavia>))
        .route(
            "/{collection}/{id}",
            get(show::<Octavia>).put(update::<Octavia>).delete(remove),
        );
    Router::new()
        .nest("/v2/lbaas", lbaas.clone())
        .nest("/v2.0/lbaas", lbaas)
}

/// The Octavia API: no bulk create, no `If-Match`.
struct Octavia;

impl Flavor for Octavia {
    type Error = OctaviaError;
    const BULK: bool = false;
    const CONDITIONAL: bool = false;
    /// A top-level collection (members live under their pool).
    fn endpoint<'a>(state: &'a AppState, collection: &str) -> Result<&'a dyn Endpoint, Error> {
        state
            .octavia
            .find(collection)
            .filter(|k| k.collection() != "members")
            .ok_or(Error::PathNotFound)
    }
}

fn endpoint<'a>(state: &'a AppState, collection: &str) -> Result<&'a dyn Endpoint, Error> {
    Octavia::endpoint(state, collection)
}

fn members(state: &AppState) -> Result<&dyn Endpoint, Error> {
    state.octavia.find("members").ok_or(Error::PathNotFound)
}

fn base_url(headers: &HeaderMap, rest: &str) -> String {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost:9696");
    format!("http://{host}/v2/lbaas/{rest}")
}

async fn providers() -> Json<Value> {
    Json(json!({"providers": [{"name": PROVIDER, "description": PROVIDER_DESCRIPTION}]}))
}

async fn list(
    Extension(caller): Extension<Caller>,
    State(state): Shared,
    Path(collection): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> OctaviaResult {
    let kind = endpoint(&state, &collection)?;
    let base = base_url(&headers, kind.collection());
    Ok(list_response(
        &state.service,
        &caller,
        kind,
        &query_pairs(raw.as_deref()),
        &base,
    )
    .await?)
}

async fn remove(
    Extension(caller): Extension<Caller>,
    State(state): Shared,
    Path((collection, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> OctaviaResult {
    let kind = endpoint(&state, &collection)?;
    let cascade = query_pairs(raw.as_deref())
        .iter()
        .any(|(k, v)| k == "cascade" && v.eq_ignore_ascii_case("true"));
    if cascade && kind.collection() == "loadbalancers" {
        // The delete rule is checked by the cascade itself, on the object.
        state
            .service
            .delete_load_balancer_cascade(&caller, &id)
            .await?;
    } else {
        kind.delete(&state.service, &caller, &id, None).await?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn status(
    Extension(caller): Extension<Caller>,
    State(state): Shared,
    Path(id): Path<String>,
) -> OctaviaResult {
    Ok(Json(state.service.load_balancer_status(&caller, &id).await?).into_response())
}

/// `GET /{loadbalancers,listeners}/{id}/stats`: what the nodes' load balancing counted, as
/// their agents last reported it (each node counts its own clients' connections), summed; a
/// load balancer's are its listeners'.
async fn stats(
    Extension(caller): Extension<Caller>,
    State(state): Shared,
    Path((collection, id)): Path<(String, String)>,
) -> OctaviaResult {
    if !matches!(collection.as_str(), "loadbalancers" | "listeners") {
        return Err(Error::PathNotFound.into());
    }
    let object = endpoint(&state, &collection)?
        .show(&state.service, &caller, &id)
        .await?;
    let listeners: Vec<String> = if collection == "listeners" {
        vec![id]
    } else {
        object
            .get("listeners")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|l| l["id"].as_str().map(str::to_owned))
            .collect()
    };
    let stats = state.service.listener_stats(&listeners).await?;
    Ok(Json(json!({ "stats": stats })).into_response())
}

/// 404 unless `caller` may see pool `pool_id` (members are reached through it).
async fn pool_visible(state: &AppState, caller: &Caller, pool_id: &str) -> Result<(), Error> {
    endpoint(state, "pools")?
        .show(&state.service, caller, pool_id)
        .await
        .map(drop)
}

/// Reads a member of `pool_id` (404 when the member is another pool's).
async fn member_of(
    state: &AppState,
    caller: &Caller,
    pool_id: &str,
    id: &str,
) -> Result<serde_json::Map<String, Value>, Error> {
    pool_visible(state, caller, pool_id).await?;
    let member = members(state)?.show(&state.service, caller, id).await?;
    let listed = state
        .service
        .member_pool(id)
        .await?
        .is_some_and(|p| p == pool_id);
    if !listed {
        return Err(Error::not_found("Member", id));
    }
    Ok(member)
}

async fn list_members(
    Extension(caller): Extension<Caller>,
    State(state): Shared,
    Path(pool_id): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> OctaviaResult {
    pool_visible(&state, &caller, &pool_id).await?;
    let mut pairs = query_pairs(raw.as_deref());
    pairs.retain(|(k, _)| k != "pool_id");
    pairs.push(("pool_id".to_owned(), pool_id.clone()));
    let base = base_url(&headers, &format!("pools/{pool_id}/members"));
    Ok(list_response(&state.service, &caller, members(&state)?, &pairs, &base).await?)
}

async fn create_member(
    Extension(caller): Extension<Caller>,
    State(state): Shared,
    Path(pool_id): Path<String>,
    body: Bytes,
) -> OctaviaResult {
    let mut value = parse_json(&body)?;
    match value.get_mut("member").and_then(Value::as_object_mut) {
        Some(member) => {
            member.insert("pool_id".to_owned(), json!(pool_id));
        }
        None => {
            return Err(Error::BadRequest(
                "Invalid input: the body must be {\"member\": {...}}".to_owned(),
            )
            .into())
        }
    }
    let object = members(&state)?
        .create(&state.service, &caller, value)
        .await?;
    Ok((StatusCode::CREATED, Json(json!({ "member": object }))).into_response())
}

async fn show_member(
    Extension(caller): Extension<Caller>,
    State(state): Shared,
    Path((pool_id, id)): Path<(String, String)>,
) -> OctaviaResult {
    let member = member_of(&state, &caller, &pool_id, &id).await?;
    Ok(Json(json!({ "member": member })).into_response())
}

async fn update_member(
    Extension(caller): Extension<Caller>,
    State(state): Shared,
    Path((pool_id, id)): Path<(String, String)>,
    body: Bytes,
) -> OctaviaResult {
    member_of(&state, &caller, &pool_id, &id).await?;
    let object = members(&state)?
        .update(&state.service, &caller, &id, parse_json(&body)?, None)
        .await?;
    Ok(Json(json!({ "member": object })).into_response())
}

async fn delete_member(
    Extension(caller): Extension<Caller>,
    State(state): Shared,
    Path((pool_id, id)): Path<(String, String)>,
) -> OctaviaResult {
    member_of(&state, &caller, &pool_id, &id).await?;
    members(&state)?
        .delete(&state.service, &caller, &id, None)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
