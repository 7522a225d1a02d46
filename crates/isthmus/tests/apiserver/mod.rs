//! A double of the Kubernetes API server's HTTP contract, for the controller's watcher: list
//! and `watch=true` streams on collections (cluster-wide and per namespace) with
//! `resourceVersion`, `allowWatchBookmarks`, metadata-only answers when the client asks for
//! `PartialObjectMetadata`, 410 Gone (as a watch ERROR event) for a resource version older
//! than the last compaction; get, create, replace with resourceVersion conflicts (409), merge
//! PATCH and delete of objects; `Status` bodies for errors. Objects are whatever JSON the test
//! puts (taken from the API reference); the double fills in uid, resourceVersion and
//! creationTimestamp as the API server does. No kube-apiserver can run on these machines (no
//! package, no Go toolchain).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use tokio::sync::broadcast;

/// A resource collection: its API path prefix, plural, kind and scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Collection {
    /// `v1` or `group/version`.
    api_version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
}

const COLLECTIONS: &[Collection] = &[
    Collection {
        api_version: "v1",
        plural: "namespaces",
        kind: "Namespace",
        namespaced: false,
    },
    Collection {
        api_version: "v1",
        plural: "pods",
        kind: "Pod",
        namespaced: true,
    },
    Collection {
        api_version: "v1",
        plural: "services",
        kind: "Service",
        namespaced: true,
    },
    Collection {
        api_version: "discovery.k8s.io/v1",
        plural: "endpointslices",
        kind: "EndpointSlice",
        namespaced: true,
    },
    Collection {
        api_version: "networking.k8s.io/v1",
        plural: "networkpolicies",
        kind: "NetworkPolicy",
        namespaced: true,
    },
    Collection {
        api_version: "coordination.k8s.io/v1",
        plural: "leases",
        kind: "Lease",
        namespaced: true,
    },
];

fn collection(kind: &str) -> Collection {
    *COLLECTIONS
        .iter()
        .find(|c| c.kind == kind)
        .unwrap_or_else(|| panic!("the double serves no {kind}"))
}

/// (plural, namespace, name).
type Key = (&'static str, String, String);

/// One change, as watch streams send it.
#[derive(Debug, Clone)]
struct Change {
    revision: u64,
    plural: &'static str,
    namespace: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Data {
    revision: u64,
    objects: BTreeMap<Key, Value>,
    log: Vec<Change>,
    /// Watches from a resource version below this one get 410 Gone.
    compacted: u64,
    uids: u64,
    /// Requests served, by method and path (without the query).
    requests: Vec<String>,
}

struct Shared {
    data: Mutex<Data>,
    changes: broadcast::Sender<Change>,
    /// Ends every open watch stream when sent.
    cut: broadcast::Sender<()>,
}

impl Shared {
    fn data(&self) -> MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a change of `key` (object `object` after it, a `DELETED` one when `deleted`).
    fn record(&self, data: &mut Data, kind: &'static str, key: &Key, object: Value) -> Value {
        let change = Change {
            revision: data.revision,
            plural: key.0,
            namespace: key.1.clone(),
            kind,
            object: object.clone(),
        };
        data.log.push(change.clone());
        let _ = self.changes.send(change);
        object
    }

    fn create(&self, c: Collection, namespace: &str, mut object: Value) -> Result<Value, Failure> {
        let mut data = self.data();
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if name.is_empty() {
            return Err(status(422, "Invalid", "metadata.name: Required value"));
        }
        let key = (c.plural, namespace.to_owned(), name.clone());
        if data.objects.contains_key(&key) {
            return Err(status(
                409,
                "AlreadyExists",
                &format!("{}s \"{name}\" already exists", c.kind.to_lowercase()),
            ));
        }
        data.revision += 1;
        data.uids += 1;
        let revision = data.revision;
        let uid = format!(
            "{:08x}-0000-4000-8000-{:012x}",
            std::process::id(),
            data.uids
        );
        object["apiVersion"] = json!(c.api_version);
        object["kind"] = json!(c.kind);
        let meta = &mut object["metadata"];
        meta["uid"] = json!(uid);
        meta["resourceVersion"] = json!(revision.to_string());
        meta["creationTimestamp"] = json!("2026-12-05T00:00:00Z");
        if c.namespaced {
            meta["namespace"] = json!(namespace);
        }
        data.objects.insert(key.clone(), object.clone());
        let recorded = self.record(&mut data, "ADDED", &key, object);
        Ok(recorded)
    }

    fn replace(&self, c: Collection, key: Key, mut object: Value) -> Result<Value, Failure> {
        let mut data = self.data();
        let Some(current) = data.objects.get(&key).cloned() else {
            return Err(not_found(c, &key.2));
        };
        let asked = object["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default();
        if !asked.is_empty() && asked != current["metadata"]["resourceVersion"] {
            return Err(status(
                409,
                "Conflict",
                &format!(
                    "Operation cannot be fulfilled on {}.{} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                    c.plural,
                    c.api_version.split('/').next().unwrap_or_default(),
                    key.2
                ),
            ));
        }
        data.revision += 1;
        let revision = data.revision;
        object["apiVersion"] = json!(c.api_version);
        object["kind"] = json!(c.kind);
        for kept in ["uid", "creationTimestamp", "namespace", "name"] {
            object["metadata"][kept] = current["metadata"][kept].clone();
        }
        object["metadata"]["resourceVersion"] = json!(revision.to_string());
        data.objects.insert(key.clone(), object.clone());
        Ok(self.record(&mut data, "MODIFIED", &key, object))
    }

    fn patch(&self, c: Collection, key: Key, patch: &Value) -> Result<Value, Failure> {
        let current = self
            .data()
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| not_found(c, &key.2))?;
        let mut object = current;
        merge_patch(&mut object, patch);
        // A merge patch never conflicts unless it names a resourceVersion.
        if patch["metadata"]["resourceVersion"].is_null() {
            object["metadata"]["resourceVersion"] = json!("");
        }
        self.replace(c, key, object)
    }

    fn delete(&self, c: Collection, key: Key) -> Result<Value, Failure> {
        let mut data = self.data();
        let Some(mut object) = data.objects.remove(&key) else {
            return Err(not_found(c, &key.2));
        };
        data.revision += 1;
        object["metadata"]["resourceVersion"] = json!(data.revision.to_string());
        Ok(self.record(&mut data, "DELETED", &key, object))
    }
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(map) = target else { return };
    for (k, v) in patch {
        if v.is_null() {
            map.remove(k);
        } else {
            merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// An error, answered as a `Status`.
struct Failure(u16, Value);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (
            StatusCode::from_u16(self.0).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            [(header::CONTENT_TYPE, "application/json")],
            self.1.to_string(),
        )
            .into_response()
    }
}

fn status(code: u16, reason: &str, message: &str) -> Failure {
    Failure(
        code,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code,
        }),
    )
}

fn not_found(c: Collection, name: &str) -> Failure {
    status(
        404,
        "NotFound",
        &format!("{} \"{name}\" not found", c.plural),
    )
}

/// The object as a `PartialObjectMetadata` (what a metadata-only client asked for).
fn metadata_only(object: &Value) -> Value {
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": object["metadata"]})
}

/// A parsed request path.
struct Target {
    collection: Collection,
    namespace: Option<String>,
    name: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let rest = path
        .strip_prefix("/api/v1/")
        .map(|r| ("v1".to_owned(), r))
        .or_else(|| {
            let r = path.strip_prefix("/apis/")?;
            let mut parts = r.splitn(3, '/');
            let (group, version, rest) = (parts.next()?, parts.next()?, parts.next()?);
            Some((format!("{group}/{version}"), rest))
        })?;
    let (api_version, rest) = rest;
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let find = |plural: &str| {
        COLLECTIONS
            .iter()
            .find(|c| c.plural == plural && c.api_version == api_version)
            .copied()
    };
    match segments.as_slice() {
        [plural] => Some(Target {
            collection: find(plural)?,
            namespace: None,
            name: None,
        }),
        ["namespaces", ns, plural] => Some(Target {
            collection: find(plural)?,
            namespace: Some((*ns).to_owned()),
            name: None,
        }),
        // The status subresource: the double keeps it in the object, like the main resource.
        ["namespaces", ns, plural, name] | ["namespaces", ns, plural, name, "status"] => {
            Some(Target {
                collection: find(plural)?,
                namespace: Some((*ns).to_owned()),
                name: Some((*name).to_owned()),
            })
        }
        [plural, name] => {
            let c = find(plural).filter(|c| !c.namespaced)?;
            Some(Target {
                collection: c,
                namespace: None,
                name: Some((*name).to_owned()),
            })
        }
        _ => None,
    }
}

fn query(uri: &axum::http::Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (!k.is_empty()).then(|| (k.to_owned(), v.replace("%2F", "/").replace("%3D", "=")))
        })
        .collect()
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    shared
        .data()
        .requests
        .push(format!("{} {}", parts.method, parts.uri.path()));
    let Some(target) = parse_path(parts.uri.path()) else {
        return status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .into_response();
    };
    let c = target.collection;
    let q = query(&parts.uri);
    let accept = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let metadata = accept.contains("as=PartialObjectMetadata");
    let body = match axum::body::to_bytes(body, 1 << 20).await {
        Ok(b) => b,
        Err(_) => return status(413, "RequestEntityTooLarge", "body too large").into_response(),
    };
    let parsed = || -> Result<Value, Failure> {
        serde_json::from_slice(&body).map_err(|e| status(400, "BadRequest", &e.to_string()))
    };
    let namespace = target.namespace.clone().unwrap_or_default();
    let result = match (&parts.method, target.name) {
        (&Method::GET, None)
            if matches!(q.get("watch").map(String::as_str), Some("true" | "1")) =>
        {
            return watch(shared, target.collection, target.namespace, &q, metadata)
        }
        (&Method::GET, None) => {
            let data = shared.data();
            let items: Vec<Value> = data
                .objects
                .iter()
                .filter(|((p, ns, _), _)| {
                    *p == c.plural && target.namespace.as_ref().is_none_or(|n| n == ns)
                })
                .map(|(_, o)| {
                    if metadata {
                        metadata_only(o)
                    } else {
                        o.clone()
                    }
                })
                .collect();
            let (api_version, kind) = if metadata {
                (
                    "meta.k8s.io/v1".to_owned(),
                    "PartialObjectMetadataList".to_owned(),
                )
            } else {
                (c.api_version.to_owned(), format!("{}List", c.kind))
            };
            Ok(json!({
                "apiVersion": api_version, "kind": kind,
                "metadata": {"resourceVersion": data.revision.to_string()},
                "items": items,
            }))
            .map(|v| (StatusCode::OK, v))
        }
        (&Method::GET, Some(name)) => shared
            .data()
            .objects
            .get(&(c.plural, namespace, name.clone()))
            .cloned()
            .map(|v| (StatusCode::OK, v))
            .ok_or_else(|| not_found(c, &name)),
        (&Method::POST, None) => parsed()
            .and_then(|o| shared.create(c, &namespace, o))
            .map(|o| (StatusCode::CREATED, o)),
        (&Method::PUT, Some(name)) => parsed()
            .and_then(|o| shared.replace(c, (c.plural, namespace, name), o))
            .map(|v| (StatusCode::OK, v)),
        (&Method::PATCH, Some(name)) => {
            let kind = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if kind != "application/merge-patch+json" {
                Err(status(
                    415,
                    "UnsupportedMediaType",
                    &format!("the double takes merge patches, not {kind}"),
                ))
            } else {
                parsed()
                    .and_then(|p| shared.patch(c, (c.plural, namespace, name), &p))
                    .map(|v| (StatusCode::OK, v))
            }
        }
        (&Method::DELETE, Some(name)) => shared
            .delete(c, (c.plural, namespace, name))
            .map(|v| (StatusCode::OK, v)),
        _ => Err(status(
            405,
            "MethodNotAllowed",
            "the server does not allow this method",
        )),
    };
    match result {
        Ok((code, v)) => (
            code,
            [(header::CONTENT_TYPE, "application/json")],
            v.to_string(),
        )
            .into_response(),
        Err(r) => r.into_response(),
    }
}

/// A `watch=true` stream: changes after `resourceVersion` (all current objects as ADDED when
/// it is absent or 0), then live ones, bookmarks each second when allowed, until
/// `timeoutSeconds` or a cut.
fn watch(
    shared: Arc<Shared>,
    c: Collection,
    namespace: Option<String>,
    q: &BTreeMap<String, String>,
    metadata: bool,
) -> Response {
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(300), Duration::from_secs);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1024);
    let line = move |kind: &str, object: &Value| {
        let object = if metadata && kind != "ERROR" {
            metadata_only(object)
        } else {
            object.clone()
        };
        Bytes::from(format!("{}\n", json!({"type": kind, "object": object})))
    };
    let mine = move |plural: &str, ns: &str| {
        plural == c.plural && namespace.as_ref().is_none_or(|n| n == ns)
    };
    // Backlog and subscription under one lock: nothing falls between them.
    let (backlog, mut live, mut cut, mut last) = {
        let data = shared.data();
        let mut backlog = Vec::new();
        if from != 0 && from < data.compacted {
            backlog.push(line(
                "ERROR",
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "message": format!("too old resource version: {from} ({})", data.compacted),
                        "reason": "Expired", "code": 410}),
            ));
            let stream = futures_util::stream::iter(backlog.into_iter().map(Ok::<_, Infallible>));
            return Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from_stream(stream))
                .unwrap_or_default();
        }
        if from == 0 {
            for ((p, ns, _), o) in &data.objects {
                if mine(p, ns) {
                    backlog.push(line("ADDED", o));
                }
            }
        } else {
            for change in data.log.iter().filter(|ch| ch.revision > from) {
                if mine(change.plural, &change.namespace) {
                    backlog.push(line(change.kind, &change.object));
                }
            }
        }
        (
            backlog,
            shared.changes.subscribe(),
            shared.cut.subscribe(),
            data.revision,
        )
    };
    let shared_for_task = shared.clone();
    tokio::spawn(async move {
        for l in backlog {
            if tx.send(l).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                change = live.recv() => match change {
                    Ok(change) => {
                        last = change.revision;
                        if mine(change.plural, &change.namespace)
                            && tx.send(line(change.kind, &change.object)).await.is_err()
                        {
                            return;
                        }
                    }
                    // Fell behind or closed: end the stream; the client resumes.
                    Err(_) => return,
                },
                _ = tick.tick(), if bookmarks => {
                    let rv = shared_for_task.data().revision.max(last);
                    let mark = json!({"apiVersion": c.api_version, "kind": c.kind,
                                      "metadata": {"resourceVersion": rv.to_string()}});
                    if tx.send(line("BOOKMARK", &mark)).await.is_err() {
                        return;
                    }
                }
                _ = cut.recv() => return,
                () = tokio::time::sleep_until(deadline) => return,
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_default()
}

/// A running double; stops with the test process.
pub struct ApiServer {
    shared: Arc<Shared>,
    /// Where it listens (`http://ADDR`).
    pub url: String,
}

impl ApiServer {
    /// Serves on `listener` (from a thread of its own).
    pub fn start(listener: std::net::TcpListener) -> ApiServer {
        let url = format!("http://{}", listener.local_addr().unwrap());
        listener.set_nonblocking(true).unwrap();
        let (changes, _) = broadcast::channel(4096);
        let (cut, _) = broadcast::channel(4);
        let shared = Arc::new(Shared {
            data: Mutex::default(),
            changes,
            cut,
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        ApiServer { shared, url }
    }

    /// A kubeconfig for it (written to `path`).
    pub fn kubeconfig(&self, path: &std::path::Path) {
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster:\n    server: {}\n\
             users:\n- name: tester\n  user:\n    token: not-checked\n\
             contexts:\n- name: double\n  context:\n    cluster: double\n    user: tester\n\
             current-context: double\n",
            self.url
        );
        std::fs::write(path, config).unwrap();
    }

    /// Creates `object` (its `kind` names the collection); returns it as stored.
    pub fn create(&self, object: Value) -> Value {
        let c = collection(object["kind"].as_str().unwrap_or_default());
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        self.shared
            .create(c, &ns, object)
            .unwrap_or_else(|_| panic!("create failed"))
    }

    /// Merge-patches an object.
    pub fn patch(&self, kind: &str, namespace: &str, name: &str, patch: Value) -> Value {
        let c = collection(kind);
        self.shared
            .patch(c, (c.plural, namespace.to_owned(), name.to_owned()), &patch)
            .unwrap_or_else(|_| panic!("patch of {kind} {namespace}/{name} failed"))
    }

    /// Deletes an object.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let c = collection(kind);
        self.shared
            .delete(c, (c.plural, namespace.to_owned(), name.to_owned()))
            .unwrap_or_else(|_| panic!("delete of {kind} {namespace}/{name} failed"));
    }

    /// An object, if present.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let c = collection(kind);
        self.shared
            .data()
            .objects
            .get(&(c.plural, namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Forgets the history so far and ends every watch stream: clients resuming from an
    /// earlier resourceVersion get 410 Gone and must list again.
    pub fn compact(&self) {
        {
            let mut data = self.shared.data();
            data.compacted = data.revision + 1;
            data.log.clear();
        }
        let _ = self.shared.cut.send(());
    }

    /// Requests served so far (`METHOD /path`).
    pub fn requests(&self) -> Vec<String> {
        self.shared.data().requests.clone()
    }
}
