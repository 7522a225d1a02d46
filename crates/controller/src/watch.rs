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
//! Every stream starts with a consistent snapshot of the node's view, taken from the
//! controller's shared [`Informer`]. With `from=REV` the controller first checks that history
//! since REV still exists and answers RELIST when it does not; otherwise the snapshot follows
//! (the agent reconciles it by diff, so its kernel state is untouched by a reconnect). After
//! that, each change of the mirror makes the stream recompute the node's view and send the
//! difference from what it sent before, so a slow client never needs a relist: it gets the
//! net change when it catches up.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use std::collections::BTreeMap;

use isthmus_model::view::{diff, Change, Mirror, ObjectKey};
use isthmus_model::Error;
use isthmus_store::StoreError;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::informer::Informer;
use crate::service::Service;

/// Idle time after which a bookmark is sent (keeps proxies and clients informed).
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(5);
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
    informer: Arc<Informer>,
    node: String,
    from: Option<u64>,
) -> Result<mpsc::Receiver<Bytes>, Error> {
    service.must_load_node(&node).await?;
    let (tx, rx) = mpsc::channel::<Bytes>(1024);
    tokio::spawn(async move {
        if let Err(e) = stream(&service, &informer, &node, from, &tx).await {
            let _ = tx
                .send(line(json!({"type": "ERROR", "message": e.to_string()})))
                .await;
        }
    });
    Ok(rx)
}

async fn stream(
    service: &Service,
    informer: &Arc<Informer>,
    node: &str,
    from: Option<u64>,
    tx: &mpsc::Sender<Bytes>,
) -> Result<(), Error> {
    let store = service.store();
    if let Some(from) = from.filter(|f| *f > 0) {
        // Backends report a compacted start either at once (memory, embedded) or as the
        // stream's first message (etcd).
        let compacted = match store.watch("/isthmus/", from).await {
            Err(StoreError::Compacted {
                compact_revision, ..
            }) => Some(compact_revision),
            Err(e) => return Err(Error::Internal(e.to_string())),
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
    informer.ready().await?;
    let mut changes = informer.subscribe();
    let mut sent = BTreeMap::new();
    let mut synced = false;
    loop {
        let revision = *changes.borrow_and_update();
        let lines: Vec<Bytes> = {
            let mirror = informer.mirror();
            let view = mirror.node_view(node);
            let lines = diff(&sent, &view)
                .iter()
                .map(|change| {
                    let rev = match change {
                        Change::Added(k) if !synced => view.get(k).copied().unwrap_or(revision),
                        _ => revision,
                    };
                    change_line(&mirror, change, rev)
                })
                .collect();
            sent = view;
            lines
        };
        for l in lines {
            if tx.send(l).await.is_err() {
                return Ok(());
            }
        }
        if !synced {
            synced = true;
            if tx
                .send(line(
                    json!({"type": "BOOKMARK", "revision": revision, "synced": true}),
                ))
                .await
                .is_err()
            {
                return Ok(());
            }
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return Ok(()) },
            _ = tokio::time::sleep(BOOKMARK_INTERVAL) => {
                let revision = *changes.borrow();
                if tx.send(line(json!({"type": "BOOKMARK", "revision": revision}))).await.is_err() {
                    return Ok(());
                }
            }
            _ = tx.closed() => return Ok(()),
        }
    }
}
