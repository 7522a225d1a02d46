//! `GET /isthmus/v1/watch?node=NAME[&from=REV]`: a node's view of the desired state as a
//! long-lived NDJSON stream, like the Kubernetes watch.
//!
//! Lines (one JSON object each):
//! - `{"type":"ADDED"|"MODIFIED","kind":"port","revision":R,"object":{...}}`
//! - `{"type":"DELETED","kind":"port","revision":R,"id":"..."}`
//! - `{"type":"BOOKMARK","revision":R,"synced":true}` after the initial view (then the
//!   agent's cache is complete at R), `{"type":"BOOKMARK","revision":R}` after every later
//!   batch of changes (the view is complete at R: a client acts on bookmarks, never on half a
//!   batch) and every 5 s when idle;
//! - `{"type":"RELIST","revision":R,"reason":"..."}` when the stream cannot continue from
//!   where the client is (history compacted): drop the cache and watch again without `from`.
//!
//! Every stream starts with a consistent snapshot of the node's view, taken from the
//! controller's shared [`Informer`]. With `from=REV` the controller first checks that history
//! since REV still exists and answers RELIST when it does not; otherwise the snapshot follows
//! (the agent reconciles it by diff, so its kernel state is untouched by a reconnect). After
//! that, the informer routes each change to the streams whose views it touches, and a stream
//! sends only what changed in its view; a slow client never needs a relist: it gets the net
//! change when it catches up.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use isthmus_model::view::{Change, Mirror, ObjectKey};
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
    let watch = informer.open_watch(node);
    let mut synced = false;
    let mut idle = false;
    loop {
        let (lines, revision) = watch.take(|mirror, changes, revision| {
            let lines: Vec<Bytes> = changes
                .iter()
                .map(|(change, rev)| {
                    change_line(mirror, change, if synced { revision } else { *rev })
                })
                .collect();
            (lines, revision)
        });
        let changed = !lines.is_empty();
        for l in lines {
            if tx.send(l).await.is_err() {
                return Ok(());
            }
        }
        // A bookmark closes every batch (the client's view is complete at `revision`) and
        // marks an idle stream as alive; an idle one is drained first, so it never runs
        // ahead of changes not yet sent.
        if changed || !synced || idle {
            let mut mark = json!({"type": "BOOKMARK", "revision": revision});
            if !synced {
                mark["synced"] = json!(true);
                synced = true;
            }
            if tx.send(line(mark)).await.is_err() {
                return Ok(());
            }
        }
        idle = false;
        tokio::select! {
            _ = watch.changed() => {}
            _ = tokio::time::sleep(BOOKMARK_INTERVAL) => idle = true,
            _ = tx.closed() => return Ok(()),
        }
    }
}
