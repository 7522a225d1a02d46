//! The service layer: the only writer of desired state. Every operation validates with the
//! pure model, allocates (IPAM, MAC, VNI) and commits in one compare-and-swap transaction,
//! retrying from a fresh read when another writer got there first.

mod dhcp;
mod dns_record;
mod floating_ip;
mod ip_availability;
mod kind;
mod lbaas;
mod lookup;
mod namespace_binding;
mod network;
mod node;
mod policy;
mod port;
mod quota;
mod rbac;
mod router;
mod security_group;
mod subnet;
mod subnet_pool;
mod trunk;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use isthmus_model::{Error, Meta, NetworkLimits, Result};
use isthmus_store::{SharedStore, StoreError, Txn};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

pub use kind::{key_of, prefix_of, Endpoint, Kind, Registry, TagOp};

/// Most attempts of one operation against concurrent writers before giving up with 409.
const MAX_ATTEMPTS: usize = 64;

/// Attempts of a whole bulk request (or another all-or-nothing change, as an interface added
/// to a router) before it answers 409; they pause a growing, jittered while between tries, so
/// that requests changing one router at once all land.
const BULK_ATTEMPTS: usize = 16;

/// Controller settings the service needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// MTU of the underlay; VXLAN networks get 50 less.
    pub underlay_mtu: u32,
    /// Domain of `dns_assignment` when the network has none (ends with a dot).
    pub dns_domain: String,
    /// VNIs handed out automatically (inclusive).
    pub vni_range: (u32, u32),
    /// Seconds without a heartbeat after which a node's gateways move to another node.
    pub gateway_down_seconds: u64,
    /// How often the store's history is compacted.
    pub compact_every: std::time::Duration,
    /// Revisions of history kept by compaction: a watcher further behind re-lists.
    pub history_kept: u64,
    /// Time to live of the leader's lease: a leader that dies is replaced after about this.
    pub leader_lease: std::time::Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            underlay_mtu: 1500,
            dns_domain: "openstack.local.".to_owned(),
            vni_range: (1, isthmus_model::network::MAX_VNI),
            gateway_down_seconds: 30,
            compact_every: std::time::Duration::from_secs(300),
            history_kept: 100_000,
            leader_lease: std::time::Duration::from_secs(5),
        }
    }
}

/// A rendered Neutron object.
pub type Object = Map<String, Value>;

/// One item of a list, rendered on demand for its viewer.
pub type Listed = Box<dyn isthmus_model::wire::Wire + Send>;

/// The service: store access plus in-process reservations that keep concurrent requests of
/// this controller from racing for the same address or VNI (the store's compare-and-swap
/// still arbitrates between controllers).
pub struct Service {
    store: SharedStore,
    config: Config,
    /// The mirror of the store that node watches read.
    informer: Arc<crate::informer::Informer>,
    /// Who holds what, for quotas.
    usage: Arc<crate::informer::Feed<quota::Usage>>,
    reserved_ips: Mutex<HashMap<String, BTreeSet<u128>>>,
    reserved_vnis: Mutex<BTreeSet<u32>>,
    /// Per subnet: every address below this one is claimed in the store (as far as this
    /// controller knows; releases by another controller are not seen, which can only make
    /// allocation skip a freed low address, never hand out a taken one).
    low_water: Mutex<HashMap<String, u128>>,
    /// Revision of this controller's latest write: quota checks wait for their usage feed to
    /// have it (no store round trip).
    last_write: AtomicU64,
    /// Revisions of this controller's writes the usage feed may not have applied yet.
    unapplied: Mutex<std::collections::VecDeque<u64>>,
    /// The revision this controller last compacted the store's history to.
    compacted: AtomicU64,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("config", &self.config)
            .finish()
    }
}

/// Maps a store failure to Neutron's 500.
pub(crate) fn store_error(e: StoreError) -> Error {
    match e {
        // Logged by the API layer under the request id, like any internal error.
        StoreError::Unavailable(_) => Error::Fault {
            kind: "HTTPServiceUnavailable",
            status: 503,
            message: "The service's store cannot be reached; try again later.".to_owned(),
        },
        e => Error::Internal(e.to_string()),
    }
}

/// Current time in Neutron's format.
pub(crate) fn now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    isthmus_model::time::rfc3339(secs)
}

/// A new resource id.
pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Serialises a stored object.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Bytes> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| Error::Internal(format!("encoding failed: {e}")))
}

fn decode<T: DeserializeOwned>(key: &str, raw: &[u8]) -> Result<T> {
    serde_json::from_slice(raw).map_err(|e| Error::Internal(format!("corrupt record {key}: {e}")))
}

/// What one attempt of a write concluded.
pub(crate) enum Attempt<T> {
    /// Committed, with the answer.
    Done(T),
    /// Another writer interfered: read again and retry.
    Retry,
}

/// Checks an `If-Match: revision_number=N` constraint.
pub(crate) fn check_revision(meta: &Meta, if_match: Option<u64>) -> Result<()> {
    match if_match {
        Some(expected) if expected != meta.revision_number => {
            Err(Error::RevisionNumberConstraintFailed {
                expected,
                current: meta.revision_number,
            })
        }
        _ => Ok(()),
    }
}

/// Releases in-process address reservations when an attempt ends, however it ends.
pub(crate) struct IpReservation<'a> {
    service: &'a Service,
    held: Vec<(String, u128)>,
}

impl Drop for IpReservation<'_> {
    fn drop(&mut self) {
        // Staged claims are not in the store yet: their addresses stay reserved until the
        // whole request commits (or fails).
        if crate::staged::Staged::hold_ips(&mut self.held) {
            return;
        }
        self.service.release_ips(self.held.drain(..));
    }
}

impl Service {
    /// Releases in-process address reservations.
    fn release_ips(&self, held: impl IntoIterator<Item = (String, u128)>) {
        let mut reserved = self.reserved_ips.lock().unwrap_or_else(|e| e.into_inner());
        for (subnet, ip) in held {
            if let Some(set) = reserved.get_mut(&subnet) {
                set.remove(&ip);
                if set.is_empty() {
                    reserved.remove(&subnet);
                }
            }
        }
    }
}

impl Service {
    /// A service over `store`.
    pub fn new(store: SharedStore, config: Config) -> Self {
        let store: SharedStore = Arc::new(crate::staged::Staged::new(store));
        Service {
            informer: crate::informer::Informer::new(store.clone()),
            usage: crate::informer::Feed::new(store.clone()),
            store,
            config,
            reserved_ips: Mutex::new(HashMap::new()),
            reserved_vnis: Mutex::new(BTreeSet::new()),
            low_water: Mutex::new(HashMap::new()),
            last_write: AtomicU64::new(0),
            unapplied: Mutex::new(std::collections::VecDeque::new()),
            compacted: AtomicU64::new(0),
        }
    }

    /// The store.
    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// The shared mirror of the store.
    pub fn informer(&self) -> &Arc<crate::informer::Informer> {
        &self.informer
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn limits(&self) -> NetworkLimits {
        NetworkLimits {
            underlay_mtu: self.config.underlay_mtu,
        }
    }

    /// Reads every object of a kind.
    pub(crate) async fn load_all<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Vec<(T, u64)>> {
        self.load_where(prefix, |_| true).await
    }

    /// The objects under `prefix` that `keep` selects, decoded one at a time: a scan that
    /// keeps few of many (100,000 ports) does not hold them all decoded at once.
    pub(crate) async fn load_where<T: DeserializeOwned>(
        &self,
        prefix: &str,
        keep: impl Fn(&T) -> bool,
    ) -> Result<Vec<(T, u64)>> {
        let range = self.store.range(prefix).await.map_err(store_error)?;
        let mut kept = Vec::new();
        for kv in &range.kvs {
            let object = decode(&kv.key, &kv.value)?;
            if keep(&object) {
                kept.push((object, kv.mod_revision));
            }
        }
        Ok(kept)
    }

    /// Ids stored under an index prefix.
    pub(crate) async fn index(&self, prefix: &str) -> Result<Vec<String>> {
        let range = self.store.range(prefix).await.map_err(store_error)?;
        Ok(range
            .kvs
            .iter()
            .map(|kv| crate::keys::last_segment(&kv.key).to_owned())
            .collect())
    }

    /// Runs a transaction, reporting whether it applied.
    pub(crate) async fn commit(&self, txn: Txn) -> Result<bool> {
        let result = self.store.txn(txn).await.map_err(store_error)?;
        // Until the usage feed starts (the first quota check), its snapshot will hold every
        // earlier write: nothing to remember (and nothing pruned from a list that would only grow).
        // Staged writes have no store revision yet (the final commit records its own).
        if result.succeeded && self.usage.is_started() && !crate::staged::Staged::staged() {
            self.last_write
                .fetch_max(result.revision, Ordering::Relaxed);
            let applied = self.usage.applied();
            let mut unapplied = self.unapplied.lock().unwrap_or_else(|e| e.into_inner());
            while unapplied.front().is_some_and(|r| *r <= applied) {
                unapplied.pop_front();
            }
            unapplied.push_back(result.revision);
        }
        Ok(result.succeeded)
    }

    /// Runs `work` (a bulk create) all or nothing: its writes are staged (its own reads see
    /// them) and committed as one transaction at the end, so nothing of a failed bulk is left
    /// and watchers see all of it or none. Retried from the start when the store changed
    /// under it meanwhile.
    pub async fn atomically<T, F, Fut>(&self, mut work: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        for attempt in 0..BULK_ATTEMPTS {
            if attempt > 0 {
                let jitter = uuid::Uuid::new_v4().as_bytes()[0] as u64 % 8;
                tokio::time::sleep(Duration::from_millis(attempt as u64 * 2 + jitter)).await;
            }
            let (result, stage) = crate::staged::Staged::scope(work()).await;
            let (txn, held) = stage.into_txn();
            let committed = match result {
                // Nothing to write: what was read is the answer.
                Ok(value) if txn.ops.is_empty() => Ok(Some(value)),
                Ok(value) => self.commit(txn).await.map(|ok| ok.then_some(value)),
                Err(e) => Err(e),
            };
            self.release_ips(held.ips);
            for vni in held.vnis {
                self.release_vni(vni);
            }
            let committed = match committed {
                Ok(committed) => committed,
                Err(e) => {
                    self.forget_low_water();
                    return Err(e);
                }
            };
            match committed {
                Some(value) => return Ok(value),
                // The staged allocations raised low-water marks over addresses that stay free.
                None => self.forget_low_water(),
            }
        }
        Err(Error::Conflict(
            "The resources changed while the bulk request was applied; try again".to_owned(),
        ))
    }

    fn forget_low_water(&self) {
        self.low_water
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Drops the store's history older than the last `keep` revisions (once per revision:
    /// compacting again what is already compacted is not asked for). Returns the revision
    /// compacted to, if any.
    pub async fn compact_history(&self, keep: u64) -> Result<Option<u64>> {
        let revision = self.store.revision().await.map_err(store_error)?;
        let target = revision.saturating_sub(keep);
        if target == 0 || self.compacted.fetch_max(target, Ordering::Relaxed) >= target {
            return Ok(None);
        }
        self.store.compact(target).await.map_err(store_error)?;
        Ok(Some(target))
    }

    /// Revision of this controller's latest write.
    pub(crate) fn last_write(&self) -> u64 {
        self.last_write.load(Ordering::Relaxed)
    }

    /// How many of this controller's writes the usage feed has not applied yet.
    pub(crate) fn unapplied_writes(&self) -> usize {
        let applied = self.usage.applied();
        let mut unapplied = self.unapplied.lock().unwrap_or_else(|e| e.into_inner());
        while unapplied.front().is_some_and(|r| *r <= applied) {
            unapplied.pop_front();
        }
        unapplied.len()
    }

    /// Repeats `attempt` until it commits or fails, with a short growing pause between tries.
    pub(crate) async fn retry<T, F, Fut>(&self, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Attempt<T>>>,
    {
        for n in 0..MAX_ATTEMPTS {
            match attempt().await? {
                Attempt::Done(v) => return Ok(v),
                Attempt::Retry => {
                    if n > 2 {
                        let jitter = uuid::Uuid::new_v4().as_bytes()[0] as u64 % 4;
                        tokio::time::sleep(Duration::from_millis((n as u64).min(20) + jitter))
                            .await;
                    } else {
                        tokio::task::yield_now().await;
                    }
                }
            }
        }
        Err(Error::Conflict(
            "Too many concurrent changes to the same resources; try again".to_owned(),
        ))
    }

    /// Reserves addresses in-process; `pick` chooses given what is claimed in the store and
    /// what other requests of this controller hold.
    pub(crate) fn reserve_ip(
        &self,
        reservation: &mut IpReservation<'_>,
        subnet_id: &str,
        pick: impl FnOnce(&BTreeSet<u128>) -> Option<u128>,
    ) -> Option<u128> {
        let mut reserved = self.reserved_ips.lock().unwrap_or_else(|e| e.into_inner());
        let set = reserved.entry(subnet_id.to_owned()).or_default();
        let chosen = pick(set);
        if let Some(ip) = chosen {
            set.insert(ip);
            reservation.held.push((subnet_id.to_owned(), ip));
        } else if set.is_empty() {
            reserved.remove(subnet_id);
        }
        chosen
    }

    pub(crate) fn low_water(&self, subnet_id: &str) -> u128 {
        let marks = self.low_water.lock().unwrap_or_else(|e| e.into_inner());
        marks.get(subnet_id).copied().unwrap_or(0)
    }

    pub(crate) fn raise_low_water(&self, subnet_id: &str, to: u128) {
        let mut marks = self.low_water.lock().unwrap_or_else(|e| e.into_inner());
        let mark = marks.entry(subnet_id.to_owned()).or_insert(0);
        *mark = (*mark).max(to);
    }

    pub(crate) fn lower_low_water(&self, subnet_id: &str, to: u128) {
        let mut marks = self.low_water.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mark) = marks.get_mut(subnet_id) {
            *mark = (*mark).min(to);
        }
    }

    /// Forgets a subnet's low-water mark (its pools changed or it is gone).
    pub(crate) fn reset_low_water(&self, subnet_id: &str) {
        self.low_water
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(subnet_id);
    }

    pub(crate) fn reservation(&self) -> IpReservation<'_> {
        IpReservation {
            service: self,
            held: Vec::new(),
        }
    }

    /// Whether another request of this controller holds an address of `subnet_id`.
    pub(crate) fn has_reservations(&self, subnet_id: &str) -> bool {
        self.reserved_ips
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(subnet_id)
            .is_some_and(|s| !s.is_empty())
    }

    /// A shared handle.
    pub fn shared(self) -> Arc<Self> {
        Arc::new(self)
    }
}
