//! `GET /isthmus/v1/watch?node=NAME[&from=REV]`: a node's view of the desired state as a
//! long-lived NDJSON stream, like the Kubernetes watch.
//!
//! Lines (one JSON object each):
//! - `{"type":"ADDED"|"MODIFIED","kind":"port","revision":R,"object":{...}}`
//! - `{"type":"DELETED","kind":"port","revision":R,"id":"..."}`
//! - `{"type":"BOOKMARK","revision":R,"synced":true}` after the initial view (then the
//!   agent's cache is complete at R), and `{"type":"BOOKMARK","revision":R}` when idle;
//! - `{"type":"RELIST","revision":R,"reason":"..."}` when the stream cannot continue from
//!   where the client is (history compacted): drop the cache and watch again without `from`.
//!
//! Every stream starts with a consistent snapshot of the node's view. With `from=REV` the
//! controller first checks that history since REV still exists and answers RELIST when it does
//! not; otherwise the snapshot follows (the agent reconciles it by diff, so its kernel state is
//! untouched by a reconnect).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use isthmus_model::view::{diff, Change, Mirror, Object, ObjectKey, ObjectKind};
use isthmus_model::Error;
use isthmus_store::{Event, StoreError};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::keys;
use crate::service::Service;

/// Idle time after which a bookmark is sent (keeps proxies and clients informed).
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(5);
/// Prefixes holding objects a node view is made of.
const SOURCES: &[(&str, ObjectKind)] = &[
    (keys::NETWORKS, ObjectKind::Network),
    (keys::SUBNETS, ObjectKind::Subnet),
    (keys::PORTS, ObjectKind::Port),
    (keys::SECURITY_GROUPS, ObjectKind::SecurityGroup),
    (keys::SECURITY_GROUP_RULES, ObjectKind::SecurityGroupRule),
    (keys::NODES, ObjectKind::Node),
];

fn source_of(key: &str) -> Option<(ObjectKind, &str)> {
    SOURCES
        .iter()
        .find_map(|(prefix, kind)| key.strip_prefix(prefix).map(|id| (*kind, id)))
}

fn decode(kind: ObjectKind, key: &str, raw: &[u8]) -> Result<Object, Error> {
    let bad = |e: serde_json::Error| Error::Internal(format!("corrupt record {key}: {e}"));
    Ok(match kind {
        ObjectKind::Network => Object::Network(serde_json::from_slice(raw).map_err(bad)?),
        ObjectKind::Subnet => Object::Subnet(serde_json::from_slice(raw).map_err(bad)?),
        ObjectKind::Port => Object::Port(serde_json::from_slice(raw).map_err(bad)?),
        ObjectKind::SecurityGroup => {
            Object::SecurityGroup(serde_json::from_slice(raw).map_err(bad)?)
        }
        ObjectKind::SecurityGroupRule => {
            Object::SecurityGroupRule(serde_json::from_slice(raw).map_err(bad)?)
        }
        ObjectKind::Node => Object::Node(serde_json::from_slice(raw).map_err(bad)?),
    })
}

fn line(value: Value) -> Bytes {
    let mut out = value.to_string().into_bytes();
    out.push(b'\n');
    Bytes::from(out)
}

fn change_line(mirror: &Mirror, change: &Change, revision: u64) -> Bytes {
    let (kind, key): (&str, &ObjectKey) = match change {
        Change::Added(k) => ("ADDED", k),
        Change::Modified(k) => ("MODIFIED", k),
        Change::Deleted(k) => ("DELETED", k),
    };
    match (change, mirror.render(key)) {
        (Change::Deleted(_), _) | (_, None) => line(json!({
            "type": "DELETED", "kind": key.0.as_str(), "revision": revision, "id": key.1,
        })),
        (_, Some(object)) => line(json!({
            "type": kind, "kind": key.0.as_str(), "revision": revision, "object": object,
        })),
    }
}

fn relist(revision: u64, reason: &str) -> Bytes {
    line(json!({"type": "RELIST", "revision": revision, "reason": reason}))
}

/// Starts streaming `node`'s view; the receiver yields NDJSON lines until the client goes away
/// or the stream must be re-listed.
pub async fn start(
    service: Arc<Service>,
    node: String,
    from: Option<u64>,
) -> Result<mpsc::Receiver<Bytes>, Error> {
    service.must_load_node(&node).await?;
    let (tx, rx) = mpsc::channel::<Bytes>(1024);
    tokio::spawn(async move {
        if let Err(e) = stream(&service, &node, from, &tx).await {
            let _ = tx
                .send(line(json!({"type": "ERROR", "message": e.to_string()})))
                .await;
        }
    });
    Ok(rx)
}

async fn stream(
    service: &Service,
    node: &str,
    from: Option<u64>,
    tx: &mpsc::Sender<Bytes>,
) -> Result<(), Error> {
    let store = service.store();
    let internal = |e: StoreError| Error::Internal(e.to_string());
    if let Some(from) = from.filter(|f| *f > 0) {
        // Backends report a compacted start either at once (memory, embedded) or as the
        // stream's first message (etcd).
        let compacted = match store.watch("/isthmus/", from).await {
            Err(StoreError::Compacted {
                compact_revision, ..
            }) => Some(compact_revision),
            Err(e) => return Err(internal(e)),
            Ok(mut probe) => {
                match tokio::time::timeout(Duration::from_millis(200), probe.recv()).await {
                    Ok(Some(Err(StoreError::Compacted {
                        compact_revision, ..
                    }))) => Some(compact_revision),
                    _ => None,
                }
            }
        };
        if let Some(compact_revision) = compacted {
            let _ = tx
                .send(relist(
                    compact_revision,
                    "history before this revision is compacted",
                ))
                .await;
            return Ok(());
        }
    }
    // Watch from before the snapshot so nothing falls between them; replays of what the
    // snapshot already holds are ignored by revision.
    let start = store.revision().await.map_err(internal)?;
    let mut events = match store.watch("/isthmus/", start).await {
        Ok(w) => w,
        Err(StoreError::Compacted {
            compact_revision, ..
        }) => {
            let _ = tx
                .send(relist(compact_revision, "history compacted during start"))
                .await;
            return Ok(());
        }
        Err(e) => return Err(internal(e)),
    };
    let mut mirror = Mirror::new();
    let mut revision = start;
    for (prefix, kind) in SOURCES {
        let range = store.range(prefix).await.map_err(internal)?;
        revision = revision.max(range.revision);
        for kv in &range.kvs {
            mirror.put(decode(*kind, &kv.key, &kv.value)?, kv.mod_revision);
        }
    }
    let mut sent = mirror.node_view(node);
    for (key, rev) in &sent {
        if tx
            .send(change_line(&mirror, &Change::Added(key.clone()), *rev))
            .await
            .is_err()
        {
            return Ok(());
        }
    }
    if tx
        .send(line(
            json!({"type": "BOOKMARK", "revision": revision, "synced": true}),
        ))
        .await
        .is_err()
    {
        return Ok(());
    }
    loop {
        let batch = tokio::select! {
            b = events.recv() => b,
            _ = tokio::time::sleep(BOOKMARK_INTERVAL) => {
                if tx.send(line(json!({"type": "BOOKMARK", "revision": revision}))).await.is_err() {
                    return Ok(());
                }
                continue;
            }
            _ = tx.closed() => return Ok(()),
        };
        let batch = match batch {
            None => return Err(Error::Internal("store watch ended".into())),
            Some(Err(StoreError::Compacted {
                compact_revision, ..
            })) => {
                let _ = tx
                    .send(relist(
                        compact_revision,
                        "this watch fell behind compaction",
                    ))
                    .await;
                return Ok(());
            }
            Some(Err(e)) => return Err(internal(e)),
            Some(Ok(batch)) => batch,
        };
        revision = revision.max(batch.revision);
        let mut relevant = false;
        for event in &batch.events {
            let Some((kind, id)) = source_of(event.key()) else {
                continue;
            };
            relevant = true;
            match event {
                Event::Put(kv) => {
                    mirror.put(decode(kind, &kv.key, &kv.value)?, kv.mod_revision);
                }
                Event::Delete { mod_revision, .. } => {
                    mirror.delete(&(kind, id.to_owned()), *mod_revision);
                }
            }
        }
        if !relevant {
            continue;
        }
        let view = mirror.node_view(node);
        for change in diff(&sent, &view) {
            if tx
                .send(change_line(&mirror, &change, batch.revision))
                .await
                .is_err()
            {
                return Ok(());
            }
        }
        sent = view;
    }
}
