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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use isthmus_model::view::{Change, Mirror, ObjectKey, ObjectKind};
use isthmus_model::Error;
use isthmus_store::StoreError;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use crate::informer::Informer;
use crate::service::Service;

/// Idle time after which a bookmark is sent (keeps proxies and clients informed).
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(5);
fn line(value: Value) -> Bytes {
    let mut out = value.to_string().into_bytes();
    out.push(b'\n');
    Bytes::from(out)
}

/// A change as a line: additions and modifications carry the object and its view revision
/// (what a client keeps to resume), deletions the revision of the batch.
fn change_line(mirror: &Mirror, change: &Change, revision: u64, batch: u64) -> Bytes {
    let (kind, key): (&str, &ObjectKey) = match change {
        Change::Added(k) => ("ADDED", k),
        Change::Modified(k) => ("MODIFIED", k),
        Change::Deleted(k) => ("DELETED", k),
    };
    match (change, mirror.render(key)) {
        (Change::Deleted(_), _) | (_, None) => line(json!({
            "type": "DELETED", "kind": key.0.as_str(), "revision": batch, "id": &*key.1,
        })),
        (_, Some(object)) => line(json!({
            "type": kind, "kind": key.0.as_str(), "revision": revision, "id": &*key.1,
            "object": object,
        })),
    }
}

fn relist(revision: u64, reason: &str) -> Bytes {
    line(json!({"type": "RELIST", "revision": revision, "reason": reason}))
}

/// Where a watch starts.
pub enum Resume {
    /// From nothing: the whole view.
    Fresh,
    /// `from=REV`: the whole view, or RELIST when history since REV is compacted.
    From(u64),
    /// From what the client holds (key → view revision, as its lines carried them): only
    /// what differs, whatever controller it watched before and however long ago.
    Holding(HashMap<ObjectKey, u64>),
}

impl Resume {
    /// The held objects of a resume request's body,
    /// `{"held": {"<kind>": {"<id>": <revision>, ...}, ...}}`; kinds this controller does not
    /// know are left out (it never sent them, so the client drops them on its own).
    pub fn holding(body: &Value) -> Result<Resume, Error> {
        let bad = || Error::BadRequest("'held' must map kinds to {id: revision}".into());
        let kinds = body
            .get("held")
            .and_then(Value::as_object)
            .ok_or_else(bad)?;
        let mut held = HashMap::new();
        for (kind, ids) in kinds {
            let ids = ids.as_object().ok_or_else(bad)?;
            let Some(kind) = ObjectKind::parse(kind) else {
                continue;
            };
            for (id, revision) in ids {
                held.insert(
                    (kind, id.as_str().into()),
                    revision.as_u64().ok_or_else(bad)?,
                );
            }
        }
        Ok(Resume::Holding(held))
    }
}

/// Starts streaming `node`'s view; the receiver yields NDJSON lines until the client goes
/// away, the stream must be re-listed, or `closing` turns true (the controller stops).
pub async fn start(
    service: Arc<Service>,
    informer: Arc<Informer>,
    node: String,
    from: Resume,
    closing: watch::Receiver<bool>,
) -> Result<mpsc::Receiver<Bytes>, Error> {
    service.must_load_node(&node).await?;
    let (tx, rx) = mpsc::channel::<Bytes>(1024);
    tokio::spawn(async move {
        if let Err(e) = stream(&service, &informer, &node, from, &tx, closing).await {
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
    from: Resume,
    tx: &mpsc::Sender<Bytes>,
    mut closing: watch::Receiver<bool>,
) -> Result<(), Error> {
    let store = service.store();
    let (from, held) = match from {
        Resume::Fresh => (None, HashMap::new()),
        Resume::From(revision) => (Some(revision), HashMap::new()),
        Resume::Holding(held) => (None, held),
    };
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
    let watch = informer.open_watch(node, held);
    let mut synced = false;
    let mut idle = false;
    loop {
        let (lines, revision) = watch.take(|mirror, changes, revision| {
            let lines: Vec<Bytes> = changes
                .iter()
                .map(|(change, rev)| change_line(mirror, change, *rev, revision))
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
            // The controller stops: the stream ends (a dropped sender means it never does).
            Ok(_) = closing.wait_for(|c| *c) => return Ok(()),
        }
    }
}
