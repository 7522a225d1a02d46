//! The in-memory revisioned key space shared by the memory and embedded backends.
//!
//! Writers are serialised by the backend (one writer at a time); they first `plan` a batch of
//! transactions against the current state without changing it, may persist the plan, then
//! `apply` it. Readers never observe a plan that was not applied, so an embedded store never
//! shows data that is not yet durable.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::num::NonZeroI64;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::{
    Compare, Event, KeyValue, LeaseId, LeaseTtl, Op, RangeResult, StoreError, Txn, TxnResult,
    WatchBatch, WatchStream,
};

/// How many batches a watch stream buffers before its task waits for the reader.
const WATCH_CHANNEL_DEPTH: usize = 256;

/// A key's stored state.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub value: bytes::Bytes,
    pub create_revision: u64,
    pub mod_revision: u64,
    /// The lease the key lives under (8 bytes, not `Option<LeaseId>`'s 16: there is one
    /// entry per key, hundreds of thousands of them; lease ids start at 1, as etcd's).
    lease: Option<NonZeroI64>,
}

impl Entry {
    /// A key's state, under `lease` if any.
    pub fn new(
        value: bytes::Bytes,
        create_revision: u64,
        mod_revision: u64,
        lease: Option<LeaseId>,
    ) -> Self {
        Entry {
            value,
            create_revision,
            mod_revision,
            lease: lease.and_then(NonZeroI64::new),
        }
    }

    /// The lease the key lives under.
    pub fn lease(&self) -> Option<LeaseId> {
        self.lease.map(NonZeroI64::get)
    }

    /// Puts the key under `lease`.
    pub fn set_lease(&mut self, lease: LeaseId) {
        self.lease = NonZeroI64::new(lease);
    }
}

/// Every key's state, by key (boxed: 16 bytes a key in the tree's nodes, not a `String`'s 24).
pub(crate) type Map = BTreeMap<Box<str>, Entry>;

/// A live lease.
#[derive(Debug)]
struct Lease {
    ttl: Duration,
    deadline: Instant,
    /// Keys that live under it.
    keys: BTreeSet<String>,
}

/// Every live lease.
#[derive(Debug, Default)]
struct Leases {
    next: LeaseId,
    live: HashMap<LeaseId, Lease>,
}

#[derive(Debug, Default)]
struct State {
    map: Map,
    revision: u64,
    /// Every revision <= this one has left the history.
    compact_revision: u64,
    /// Contiguous batches `compact_revision + 1 ..= revision`.
    history: VecDeque<Arc<WatchBatch>>,
    /// Events in `history`.
    history_events: usize,
}

/// Most events the watch history keeps, whatever the number of revisions: a revision may
/// hold one key or a bulk create's thousands (10,000 single-port creates hold about this
/// many).
const HISTORY_EVENTS: usize = 60_000;

/// A batch of transactions evaluated against the state, not yet applied.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// One result per planned transaction, in order.
    pub results: Vec<Result<TxnResult, StoreError>>,
    /// One batch per successful transaction that wrote something.
    pub batches: Vec<Arc<WatchBatch>>,
    /// The lease (or none) of every key the plan puts, as its last put left it.
    pub leases: HashMap<String, Option<LeaseId>>,
}

impl Plan {
    /// The store revision once the plan is applied, if it writes anything.
    pub fn final_revision(&self) -> Option<u64> {
        self.batches.last().map(|b| b.revision)
    }
}

/// The shared in-memory engine.
#[derive(Debug)]
pub(crate) struct Engine {
    state: RwLock<State>,
    revision_tx: watch::Sender<u64>,
    history_limit: usize,
    leases: Mutex<Leases>,
}

impl Engine {
    /// An engine holding `entries` at `revision`, keeping at most `history_limit` revisions of
    /// watch history.
    /// Leases of the keys in `entries` are live again for their whole time to live (`ttls`),
    /// as etcd renews them when its leader changes.
    pub fn new(
        entries: Map,
        ttls: &HashMap<LeaseId, Duration>,
        revision: u64,
        history_limit: usize,
    ) -> Self {
        let (revision_tx, _) = watch::channel(revision);
        let now = Instant::now();
        let mut leases = Leases {
            next: ttls.keys().copied().max().unwrap_or(0) + 1,
            live: HashMap::new(),
        };
        for (key, entry) in &entries {
            let Some(id) = entry.lease() else { continue };
            let ttl = ttls.get(&id).copied().unwrap_or(Duration::from_secs(1));
            leases
                .live
                .entry(id)
                .or_insert_with(|| Lease {
                    ttl,
                    deadline: now + ttl,
                    keys: BTreeSet::new(),
                })
                .keys
                .insert(key.to_string());
        }
        Engine {
            leases: Mutex::new(leases),
            state: RwLock::new(State {
                map: entries,
                revision,
                compact_revision: revision,
                history: VecDeque::new(),
                history_events: 0,
            }),
            revision_tx,
            history_limit: history_limit.max(1),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // A panic while holding the lock cannot leave the map half-written (apply is
        // infallible), so a poisoned lock is still consistent.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn leases(&self) -> MutexGuard<'_, Leases> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Grants a lease of `ttl` (whole seconds, at least one).
    pub fn grant_lease(&self, ttl: Duration) -> LeaseId {
        let ttl = Duration::from_secs(ttl.as_secs_f64().ceil().max(1.0) as u64);
        let mut leases = self.leases();
        let id = leases.next;
        leases.next += 1;
        leases.live.insert(
            id,
            Lease {
                ttl,
                deadline: Instant::now() + ttl,
                keys: BTreeSet::new(),
            },
        );
        id
    }

    /// Renews a lease; `false` when it has ended.
    pub fn keep_alive(&self, id: LeaseId) -> bool {
        let mut leases = self.leases();
        match leases.live.get_mut(&id) {
            Some(lease) => {
                lease.deadline = Instant::now() + lease.ttl;
                true
            }
            None => false,
        }
    }

    /// What is left of a lease.
    pub fn lease_ttl(&self, id: LeaseId) -> Option<LeaseTtl> {
        let leases = self.leases();
        let lease = leases.live.get(&id)?;
        Some(LeaseTtl {
            granted: lease.ttl,
            remaining: lease.deadline.saturating_duration_since(Instant::now()),
        })
    }

    /// The time to live of a lease (for persisting the keys under it).
    pub fn granted_ttl(&self, id: LeaseId) -> Option<Duration> {
        self.leases().live.get(&id).map(|l| l.ttl)
    }

    /// Leases whose time is up.
    pub fn expired_leases(&self) -> Vec<LeaseId> {
        let now = Instant::now();
        self.leases()
            .live
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The transaction deleting a lease's keys. Only the single writer ends leases (this,
    /// then [`Engine::drop_lease`] once the deletion is durable, then `apply`), so no put is
    /// ever planned on a lease that ends before the put applies.
    pub fn lease_keys(&self, id: LeaseId) -> Option<Txn> {
        let leases = self.leases();
        let lease = leases.live.get(&id)?;
        Some(Txn {
            compares: Vec::new(),
            ops: lease.keys.iter().map(Op::delete).collect(),
        })
    }

    /// Forgets a lease whose keys' deletion is planned (and durable).
    pub fn drop_lease(&self, id: LeaseId) {
        self.leases().live.remove(&id);
    }

    pub fn get(&self, key: &str) -> Option<KeyValue> {
        self.read().map.get(key).map(|e| to_kv(key, e))
    }

    pub fn range(&self, prefix: &str) -> RangeResult {
        let state = self.read();
        let kvs = state
            .map
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, e)| to_kv(k, e))
            .collect();
        RangeResult {
            kvs,
            revision: state.revision,
        }
    }

    pub fn range_from(&self, prefix: &str, from_key: &str, limit: usize) -> RangeResult {
        let state = self.read();
        let start = if from_key > prefix { from_key } else { prefix };
        let kvs = state
            .map
            .range::<str, _>((Bound::Included(start), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, e)| to_kv(k, e))
            .collect();
        RangeResult {
            kvs,
            revision: state.revision,
        }
    }

    pub fn revision(&self) -> u64 {
        self.read().revision
    }

    /// Evaluates `txns` in order against the state as it would be after each earlier one.
    /// Must only be called by the single writer, which then applies (or drops) the plan.
    pub fn plan<'a>(&self, txns: impl IntoIterator<Item = &'a Txn>) -> Plan {
        let state = self.read();
        // Keys written by earlier transactions of this plan: Some = present, None = deleted.
        let mut overlay: HashMap<String, Option<Entry>> = HashMap::new();
        let mut revision = state.revision;
        let mut plan = Plan::default();
        let leases = self.leases();
        for txn in txns {
            let missing = txn.ops.iter().find_map(|op| match op {
                Op::Put {
                    lease: Some(id), ..
                } if !leases.live.contains_key(id) => Some(*id),
                _ => None,
            });
            if let Some(id) = missing {
                plan.results.push(Err(StoreError::LeaseNotFound(id)));
                continue;
            }
            let holds = txn
                .compares
                .iter()
                .all(|c| compare_holds(&state.map, &overlay, c));
            if !holds {
                plan.results.push(Ok(TxnResult {
                    succeeded: false,
                    revision,
                }));
                continue;
            }
            let next = revision + 1;
            let mut events = Vec::with_capacity(txn.ops.len());
            for op in &txn.ops {
                let current = lookup(&state.map, &overlay, op_key(op)).cloned();
                match op {
                    Op::Put { key, value, lease } => {
                        let entry = Entry::new(
                            // A copy made here, by the one writer thread, which allocates
                            // little besides what the store keeps: the caller's buffer was
                            // allocated among its request's short-lived ones, and keeping it
                            // pinned their allocator pages (35 MB more RSS at 100,000 ports).
                            // The store, its history and watchers share this copy.
                            bytes::Bytes::copy_from_slice(value),
                            current.map_or(next, |e| e.create_revision),
                            next,
                            *lease,
                        );
                        events.push(Event::Put(to_kv(key, &entry)));
                        plan.leases.insert(key.clone(), *lease);
                        overlay.insert(key.clone(), Some(entry));
                    }
                    Op::Delete { key } => {
                        if current.is_some() {
                            events.push(Event::Delete {
                                key: key.clone(),
                                mod_revision: next,
                            });
                            overlay.insert(key.clone(), None);
                        }
                    }
                }
            }
            if !events.is_empty() {
                revision = next;
                plan.batches.push(Arc::new(WatchBatch {
                    revision: next,
                    events,
                }));
            }
            plan.results.push(Ok(TxnResult {
                succeeded: true,
                revision,
            }));
        }
        plan
    }

    /// Applies a plan produced by `plan` (with no write in between) and wakes watchers.
    pub fn apply(&self, plan: &Plan) {
        let Some(final_revision) = plan.final_revision() else {
            return;
        };
        {
            let mut state = self.write();
            let mut leases = self.leases();
            for batch in &plan.batches {
                for event in &batch.events {
                    let (old, lease) = match event {
                        Event::Put(kv) => {
                            let lease = plan.leases.get(&kv.key).copied().flatten();
                            let entry = Entry::new(
                                kv.value.clone(),
                                kv.create_revision,
                                kv.mod_revision,
                                lease,
                            );
                            (state.map.insert(kv.key.as_str().into(), entry), lease)
                        }
                        Event::Delete { key, .. } => (state.map.remove(key.as_str()), None),
                    };
                    let key = event.key();
                    if let Some(old) = old.and_then(|e| e.lease()).filter(|l| Some(*l) != lease) {
                        if let Some(l) = leases.live.get_mut(&old) {
                            l.keys.remove(key);
                        }
                    }
                    if let Some(l) = lease.and_then(|l| leases.live.get_mut(&l)) {
                        l.keys.insert(key.to_owned());
                    }
                }
                state.history_events += batch.events.len();
                state.history.push_back(batch.clone());
            }
            state.revision = final_revision;
            // The newest revision always stays, however big.
            while state.history.len() > 1
                && (state.history.len() > self.history_limit
                    || state.history_events > HISTORY_EVENTS)
            {
                if let Some(old) = state.history.pop_front() {
                    state.compact_revision = old.revision;
                    state.history_events -= old.events.len();
                }
            }
        }
        self.revision_tx.send_replace(final_revision);
    }

    /// Drops history up to `revision` (bounded by the current revision).
    pub fn compact(&self, revision: u64) {
        let mut state = self.write();
        let revision = revision.min(state.revision);
        while state
            .history
            .front()
            .is_some_and(|b| b.revision <= revision)
        {
            if let Some(old) = state.history.pop_front() {
                state.history_events -= old.events.len();
            }
        }
        state.compact_revision = state.compact_revision.max(revision);
    }

    /// Starts a watch task delivering every batch after `after_revision` under `prefix`.
    pub fn watch(
        self: &Arc<Self>,
        prefix: &str,
        after_revision: u64,
    ) -> Result<WatchStream, StoreError> {
        {
            let state = self.read();
            if after_revision < state.compact_revision {
                return Err(StoreError::Compacted {
                    requested: after_revision,
                    compact_revision: state.compact_revision,
                });
            }
        }
        let (tx, rx) = mpsc::channel(WATCH_CHANNEL_DEPTH);
        let engine = Arc::clone(self);
        let prefix = prefix.to_owned();
        let mut revisions = self.revision_tx.subscribe();
        tokio::spawn(async move {
            let mut next = after_revision;
            loop {
                revisions.borrow_and_update();
                let pending = engine.batches_after(next);
                match pending {
                    Err(compacted) => {
                        let _ = tx.send(Err(compacted)).await;
                        return;
                    }
                    Ok(batches) => {
                        for batch in batches {
                            next = batch.revision;
                            let events: Vec<Event> = batch
                                .events
                                .iter()
                                .filter(|e| e.key().starts_with(&prefix))
                                .cloned()
                                .collect();
                            if events.is_empty() {
                                continue;
                            }
                            let out = WatchBatch {
                                revision: batch.revision,
                                events,
                            };
                            if tx.send(Ok(out)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                tokio::select! {
                    changed = revisions.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(rx)
    }

    /// History batches after `after`, or the compaction error if some of them are gone.
    fn batches_after(&self, after: u64) -> Result<Vec<Arc<WatchBatch>>, StoreError> {
        let state = self.read();
        if after < state.compact_revision {
            return Err(StoreError::Compacted {
                requested: after,
                compact_revision: state.compact_revision,
            });
        }
        let first = state.compact_revision + 1;
        let skip = (after + 1).saturating_sub(first) as usize;
        // Bound the copy so one lagging watcher never holds the lock for long.
        Ok(state
            .history
            .iter()
            .skip(skip)
            .take(1024)
            .cloned()
            .collect())
    }
}

fn op_key(op: &Op) -> &str {
    match op {
        Op::Put { key, .. } | Op::Delete { key } => key,
    }
}

fn lookup<'a>(
    map: &'a Map,
    overlay: &'a HashMap<String, Option<Entry>>,
    key: &str,
) -> Option<&'a Entry> {
    match overlay.get(key) {
        Some(pending) => pending.as_ref(),
        None => map.get(key),
    }
}

fn compare_holds(map: &Map, overlay: &HashMap<String, Option<Entry>>, compare: &Compare) -> bool {
    match compare {
        Compare::ModRevision { key, revision } => {
            lookup(map, overlay, key).map_or(0, |e| e.mod_revision) == *revision
        }
        Compare::PrefixEmpty { prefix, .. } => {
            let pending_put = overlay
                .iter()
                .any(|(k, v)| v.is_some() && compare.covers(k));
            if pending_put {
                return false;
            }
            map.range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(prefix.as_str()))
                .filter(|(k, _)| compare.covers(k))
                .all(|(k, _)| matches!(overlay.get(&**k), Some(None)))
        }
    }
}

pub(crate) fn to_kv(key: &str, entry: &Entry) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: entry.value.clone(),
        create_revision: entry.create_revision,
        mod_revision: entry.mod_revision,
    }
}
