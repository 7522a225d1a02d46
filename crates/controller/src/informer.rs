//! One mirror of the desired state per controller, fed by one store watch, shared by every
//! node watch. Each batch of changes is routed to the node watches it concerns (the model's
//! [`Fanout`]), which then send what changed in their views; a watcher that falls behind
//! catches up with the net change on its next turn.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};

use bytes::Bytes;

use isthmus_model::view::{Change, Fanout, Mirror, Object, ObjectKey, ObjectKind, WatcherId};
use isthmus_model::Error;
use isthmus_store::{Event, SharedStore, StoreError};
use tokio::sync::{watch, Notify, OnceCell};

use crate::keys;

/// Prefixes holding objects a node view is made of.
const SOURCES: &[(&str, ObjectKind)] = &[
    (keys::NETWORKS, ObjectKind::Network),
    (keys::SUBNETS, ObjectKind::Subnet),
    (keys::PORTS, ObjectKind::Port),
    (keys::SECURITY_GROUPS, ObjectKind::SecurityGroup),
    (keys::SECURITY_GROUP_RULES, ObjectKind::SecurityGroupRule),
    (keys::NODES, ObjectKind::Node),
    (keys::NAMESPACE_BINDINGS, ObjectKind::NamespaceBinding),
    (keys::DNS_RECORDS, ObjectKind::DnsRecord),
    (keys::ROUTERS, ObjectKind::Router),
    (keys::FLOATING_IPS, ObjectKind::FloatingIp),
    (keys::ADDRESS_GROUPS, ObjectKind::AddressGroup),
    (keys::LOAD_BALANCERS, ObjectKind::LoadBalancer),
    (keys::LISTENERS, ObjectKind::Listener),
    (keys::POOLS, ObjectKind::Pool),
    (keys::MEMBERS, ObjectKind::Member),
    (keys::HEALTH_MONITORS, ObjectKind::HealthMonitor),
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
        ObjectKind::NamespaceBinding => {
            Object::NamespaceBinding(serde_json::from_slice(raw).map_err(bad)?)
        }
        ObjectKind::DnsRecord => Object::DnsRecord(serde_json::from_slice(raw).map_err(bad)?),
        ObjectKind::Router => Object::Router(serde_json::from_slice(raw).map_err(bad)?),
        ObjectKind::FloatingIp => Object::FloatingIp(serde_json::from_slice(raw).map_err(bad)?),
        ObjectKind::AddressGroup => Object::AddressGroup(serde_json::from_slice(raw).map_err(bad)?),
        ObjectKind::LoadBalancer => Object::LoadBalancer(serde_json::from_slice(raw).map_err(bad)?),
        ObjectKind::Listener => Object::Listener(serde_json::from_slice(raw).map_err(bad)?),
        ObjectKind::Pool => Object::Pool(serde_json::from_slice(raw).map_err(bad)?),
        ObjectKind::Member => Object::Member(serde_json::from_slice(raw).map_err(bad)?),
        ObjectKind::HealthMonitor => {
            Object::HealthMonitor(serde_json::from_slice(raw).map_err(bad)?)
        }
    })
}

/// What a feed keeps up to date from the store's objects.
pub trait Sink: Default + Send + Sync + 'static {
    /// An object of `kind` written at `revision`; false when it was not applied (stale).
    fn put(
        &mut self,
        kind: ObjectKind,
        key: &str,
        raw: &Bytes,
        revision: u64,
    ) -> Result<bool, Error>;
    /// The object `(kind, id)` deleted at `revision`.
    fn delete(&mut self, kind: ObjectKind, id: &str, revision: u64);
    /// Called (under the write lock) after each batch, with the store revision it reached.
    fn commit(&mut self, _revision: u64) {}
    /// Takes `fresh`, rebuilt from a snapshot at `revision`, in place of what it held.
    fn replace(&mut self, fresh: Self, _revision: u64) {
        *self = fresh;
    }
}

/// The desired state node watches read, with the open watches changes are routed to.
#[derive(Default)]
pub struct Desired {
    mirror: Mirror,
    watches: Mutex<Watches>,
}

#[derive(Default)]
struct Watches {
    fanout: Fanout,
    wakers: HashMap<WatcherId, Arc<Notify>>,
}

impl Watches {
    fn wake(&self, ids: impl IntoIterator<Item = WatcherId>) {
        for id in ids {
            if let Some(waker) = self.wakers.get(&id) {
                waker.notify_one();
            }
        }
    }
}

impl Desired {
    fn watches(&self) -> MutexGuard<'_, Watches> {
        self.watches.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::ops::Deref for Desired {
    type Target = Mirror;

    fn deref(&self) -> &Mirror {
        &self.mirror
    }
}

impl Sink for Desired {
    fn put(
        &mut self,
        kind: ObjectKind,
        key: &str,
        raw: &Bytes,
        revision: u64,
    ) -> Result<bool, Error> {
        Ok(self
            .mirror
            .put_stored(decode(kind, key, raw)?, raw.clone(), revision))
    }

    fn delete(&mut self, kind: ObjectKind, id: &str, revision: u64) {
        self.mirror
            .delete(&isthmus_model::view::object_key(kind, id), revision);
    }

    fn commit(&mut self, revision: u64) {
        let changes = self.mirror.take_changes();
        let watches = self.watches.get_mut().unwrap_or_else(|e| e.into_inner());
        let woken = watches.fanout.apply(&self.mirror, changes, revision);
        watches.wake(woken);
    }

    fn replace(&mut self, mut fresh: Self, revision: u64) {
        fresh.mirror.take_changes();
        self.mirror = fresh.mirror;
        let watches = self.watches.get_mut().unwrap_or_else(|e| e.into_inner());
        let woken = watches.fanout.reset(revision);
        watches.wake(woken);
    }
}

/// The shared mirror node watches read.
pub type Informer = Feed<Desired>;

/// One node's open watch on the [`Informer`]; closed when dropped.
pub struct NodeWatch {
    informer: Arc<Informer>,
    id: WatcherId,
    wake: Arc<Notify>,
}

impl Informer {
    /// Opens a watch of `node`'s view (the feed must be ready) for a client holding `held`
    /// (key → view revision; empty for a new client); its first [`NodeWatch::take`] yields
    /// what differs: the whole view for a new client.
    pub fn open_watch(self: &Arc<Self>, node: &str, held: HashMap<ObjectKey, u64>) -> NodeWatch {
        let wake = Arc::new(Notify::new());
        let id = {
            let desired = self.mirror();
            let mut watches = desired.watches();
            let id = watches.fanout.resume(node, held);
            watches.wakers.insert(id, wake.clone());
            id
        };
        NodeWatch {
            informer: Arc::clone(self),
            id,
            wake,
        }
    }
}

impl NodeWatch {
    /// What changed in the view since the last call, handed to `render` with the mirror (read
    /// locked, so the changes and the revision are of one state) and the revision it reflects.
    pub fn take<T>(&self, render: impl FnOnce(&Mirror, Vec<(Change, u64)>, u64) -> T) -> T {
        let desired = self.informer.mirror();
        let (changes, revision) = {
            let mut watches = desired.watches();
            let changes = watches.fanout.drain(&desired.mirror, self.id);
            (changes, watches.fanout.revision())
        };
        render(&desired.mirror, changes, revision)
    }

    /// Resolves when the view may have changed.
    pub async fn changed(&self) {
        self.wake.notified().await
    }
}

impl Drop for NodeWatch {
    fn drop(&mut self) {
        let desired = self.informer.mirror();
        let mut watches = desired.watches();
        watches.fanout.unregister(self.id);
        watches.wakers.remove(&self.id);
    }
}

/// One view of the store's objects (`S`), fed by one store watch, and the revision it reflects.
pub struct Feed<S> {
    store: SharedStore,
    mirror: RwLock<S>,
    /// Revision the mirror reflects, bumped after every applied change (0 until synced).
    revision: watch::Sender<u64>,
    /// Revision of the store the mirror has caught up with, relevant changes or not.
    applied: watch::Sender<u64>,
    started: OnceCell<()>,
}

impl<S: Sink> Feed<S> {
    /// A feed over `store`; it starts on first use.
    pub fn new(store: SharedStore) -> Arc<Self> {
        Arc::new(Feed {
            store,
            mirror: RwLock::new(S::default()),
            revision: watch::channel(0).0,
            applied: watch::channel(0).0,
            started: OnceCell::new(),
        })
    }

    /// Starts the feed (once) and waits for the first complete snapshot.
    pub async fn ready(self: &Arc<Self>) -> Result<(), Error> {
        self.started
            .get_or_try_init(|| async {
                let start = self.resync().await?;
                let me = Arc::clone(self);
                tokio::spawn(async move { me.follow(start).await });
                Ok::<(), Error>(())
            })
            .await?;
        Ok(())
    }

    /// Reads what the feed keeps.
    pub fn mirror(&self) -> RwLockReadGuard<'_, S> {
        self.mirror.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits (at most `limit`) until the feed has applied the store's revision `target` (a
    /// write of this controller's, so that it is counted).
    pub async fn catch_up(
        self: &Arc<Self>,
        target: u64,
        limit: std::time::Duration,
    ) -> Result<(), Error> {
        self.ready().await?;
        let mut applied = self.applied.subscribe();
        // A mirror that lags longer than `limit` is read as it is: a quota check then counts
        // what it has, as Neutron's no-lock quota driver does.
        let _ = tokio::time::timeout(limit, applied.wait_for(|r| *r >= target)).await;
        Ok(())
    }

    /// Whether the feed has started (its first snapshot is taken).
    pub fn is_started(&self) -> bool {
        self.started.initialized()
    }

    /// The store revision the feed has applied.
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Notifications of the revision the mirror reflects.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// Rebuilds the mirror from a snapshot; returns the revision to watch from. The snapshot is
    /// read after that revision, and replays of what it holds are ignored by revision.
    async fn resync(&self) -> Result<u64, Error> {
        let internal = |e: StoreError| Error::Internal(e.to_string());
        let start = self.store.revision().await.map_err(internal)?;
        let mut mirror = S::default();
        let mut revision = start;
        for (prefix, kind) in SOURCES {
            let range = self.store.range(prefix).await.map_err(internal)?;
            revision = revision.max(range.revision);
            for kv in &range.kvs {
                mirror.put(*kind, &kv.key, &kv.value, kv.mod_revision)?;
            }
        }
        self.mirror
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .replace(mirror, revision);
        self.revision.send_replace(revision.max(1));
        self.applied.send_replace(revision);
        Ok(start)
    }

    /// Applies every change after `from`, re-syncing when the store says history is gone or
    /// the watch breaks.
    async fn follow(&self, mut from: u64) {
        loop {
            let mut events = match self.store.watch("/isthmus/", from).await {
                Ok(events) => events,
                Err(_) => {
                    from = self.resync_until_ok().await;
                    continue;
                }
            };
            let compacted = loop {
                let batch = match events.recv().await {
                    Some(Ok(batch)) => batch,
                    Some(Err(StoreError::Compacted { .. })) => break true,
                    // The watch broke (backend restart, network): resume where we are.
                    Some(Err(_)) | None => break false,
                };
                let mut relevant = false;
                {
                    let mut mirror = self.mirror.write().unwrap_or_else(|e| e.into_inner());
                    for event in &batch.events {
                        let Some((kind, id)) = source_of(event.key()) else {
                            continue;
                        };
                        relevant = true;
                        match event {
                            Event::Put(kv) => {
                                if let Err(e) =
                                    mirror.put(kind, &kv.key, &kv.value, kv.mod_revision)
                                {
                                    tracing::warn!("skipping {e}");
                                }
                            }
                            Event::Delete { mod_revision, .. } => {
                                mirror.delete(kind, id, *mod_revision);
                            }
                        }
                    }
                    mirror.commit(batch.revision);
                }
                from = batch.revision;
                if relevant {
                    self.revision.send_replace(batch.revision);
                }
                self.applied.send_replace(batch.revision);
            };
            if compacted {
                // History we have not seen is gone: rebuild from a fresh snapshot.
                from = self.resync_until_ok().await;
            } else {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    }

    async fn resync_until_ok(&self) -> u64 {
        loop {
            match self.resync().await {
                Ok(from) => return from,
                Err(e) => {
                    tracing::warn!("resync failed, retrying: {e}");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    }
}
