//! The Isthmus store: a revisioned key-value space with etcd v3 semantics.
//!
//! Every write is a transaction guarded by revision comparisons (compare-and-swap), the whole
//! store has one monotonic revision, and a watch delivers every event after a given revision in
//! order, or tells the watcher it fell behind compaction so it can re-list.

mod embedded;
mod engine;
mod etcd;
#[cfg(feature = "test-util")]
pub mod etcd_server;
mod memory;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

pub use embedded::EmbeddedStore;
pub use etcd::{EtcdStore, EtcdTls};
pub use memory::MemoryStore;

/// A key with its value and the revisions that created and last modified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// Full key, e.g. `/isthmus/ports/<id>`.
    pub key: String,
    /// Opaque value (JSON in practice).
    pub value: Bytes,
    /// Revision of the transaction that created the key.
    pub create_revision: u64,
    /// Revision of the transaction that last wrote the key.
    pub mod_revision: u64,
}

/// A condition a transaction requires to hold before it applies its operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's `mod_revision` equals `revision`; `revision == 0` means the key must not exist.
    ModRevision {
        /// Key to check.
        key: String,
        /// Expected modification revision (0 = absent).
        revision: u64,
    },
    /// No key exists under `prefix` but those in `except` (which may or may not exist).
    PrefixEmpty {
        /// Prefix to check.
        prefix: String,
        /// Keys under the prefix the check ignores, sorted.
        except: Vec<String>,
    },
}

impl Compare {
    /// The key must be exactly at `revision` (0: must not exist).
    pub fn mod_revision(key: impl Into<String>, revision: u64) -> Self {
        Compare::ModRevision {
            key: key.into(),
            revision,
        }
    }
    /// The key must not exist.
    pub fn absent(key: impl Into<String>) -> Self {
        Self::mod_revision(key, 0)
    }
    /// No key may exist under `prefix`.
    pub fn prefix_empty(prefix: impl Into<String>) -> Self {
        Self::prefix_empty_except(prefix, Vec::new())
    }
    /// No key may exist under `prefix` but those in `except` (a resource's own service
    /// entries, deleted in the same transaction).
    pub fn prefix_empty_except(prefix: impl Into<String>, mut except: Vec<String>) -> Self {
        except.sort();
        except.dedup();
        Compare::PrefixEmpty {
            prefix: prefix.into(),
            except,
        }
    }
    /// Whether `key` is one the check covers.
    pub fn covers(&self, key: &str) -> bool {
        match self {
            Compare::ModRevision { key: k, .. } => k == key,
            Compare::PrefixEmpty { prefix, except } => {
                key.starts_with(prefix.as_str())
                    && except.binary_search_by(|e| e.as_str().cmp(key)).is_err()
            }
        }
    }
}

/// A write inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create or overwrite a key.
    Put {
        /// Key to write.
        key: String,
        /// New value.
        value: Bytes,
        /// The lease the key lives under (deleted when the lease ends); `None` detaches it
        /// from any lease, as etcd does.
        lease: Option<LeaseId>,
    },
    /// Delete a key (no-op if absent).
    Delete {
        /// Key to delete.
        key: String,
    },
}

impl Op {
    /// A put.
    pub fn put(key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        }
    }
    /// A put of a key that lives as long as `lease` (a transaction naming a lease that is
    /// gone fails with [`StoreError::LeaseNotFound`]).
    pub fn put_leased(key: impl Into<String>, value: impl Into<Bytes>, lease: LeaseId) -> Self {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: Some(lease),
        }
    }
    /// A delete.
    pub fn delete(key: impl Into<String>) -> Self {
        Op::Delete { key: key.into() }
    }
}

/// A compare-and-swap transaction: all `compares` hold, then all `ops` apply atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// Conditions; all must hold.
    pub compares: Vec<Compare>,
    /// Writes applied atomically when the conditions hold.
    pub ops: Vec<Op>,
}

impl Txn {
    /// An empty transaction.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a condition.
    pub fn when(mut self, compare: Compare) -> Self {
        self.compares.push(compare);
        self
    }
    /// Adds a write.
    pub fn then(mut self, op: Op) -> Self {
        self.ops.push(op);
        self
    }
    /// Adds every condition and write of `other`.
    pub fn and(mut self, other: Txn) -> Self {
        self.compares.extend(other.compares);
        self.ops.extend(other.ops);
        self
    }
}

/// Outcome of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether the compares held and the ops were applied.
    pub succeeded: bool,
    /// The store revision after the transaction (new revision when it wrote).
    pub revision: u64,
}

/// Result of a range read: the keys and the revision they were read at.
#[derive(Debug, Clone, Default)]
pub struct RangeResult {
    /// Matching keys in ascending key order.
    pub kvs: Vec<KeyValue>,
    /// Store revision the read reflects.
    pub revision: u64,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A key was created or modified.
    Put(KeyValue),
    /// A key was deleted at `mod_revision`.
    Delete {
        /// Deleted key.
        key: String,
        /// Revision of the deleting transaction.
        mod_revision: u64,
    },
}

impl Event {
    /// The key the event is about.
    pub fn key(&self) -> &str {
        match self {
            Event::Put(kv) => &kv.key,
            Event::Delete { key, .. } => key,
        }
    }
    /// The revision at which the event happened.
    pub fn revision(&self) -> u64 {
        match self {
            Event::Put(kv) => kv.mod_revision,
            Event::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

/// Events of one revision (one transaction) under the watched prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchBatch {
    /// Revision of the transaction.
    pub revision: u64,
    /// Its events under the watched prefix, in operation order.
    pub events: Vec<Event>,
}

/// A live watch: batches in revision order; an `Err(StoreError::Compacted)` ends it.
pub type WatchStream = mpsc::Receiver<Result<WatchBatch, StoreError>>;

/// A lease: keys written under it are deleted (with a delete event, at a new revision) when
/// nobody keeps it alive for its time to live. Keeping it alive writes nothing, so a node's
/// liveness costs no history.
pub type LeaseId = i64;

/// What is left of a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTtl {
    /// Its time to live as granted (and renewed by every keep-alive).
    pub granted: std::time::Duration,
    /// Time left before it ends unless kept alive.
    pub remaining: std::time::Duration,
}

impl LeaseTtl {
    /// How long ago it was last granted or kept alive.
    pub fn since_renewed(&self) -> std::time::Duration {
        self.granted.saturating_sub(self.remaining)
    }
}

/// Errors at the store boundary.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The requested start revision was compacted away: re-list and watch again.
    #[error("revision {requested} has been compacted (oldest available: {compact_revision})")]
    Compacted {
        /// Revision the caller asked for.
        requested: u64,
        /// Revision up to which history is gone.
        compact_revision: u64,
    },
    /// The backend failed (I/O, network, corrupt data).
    #[error("store backend error: {0}")]
    Backend(String),
    /// The backend cannot answer now (etcd without quorum or out of reach); worth retrying.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A put named a lease that has ended (or never was).
    #[error("lease {0} not found")]
    LeaseNotFound(LeaseId),
    /// The store is closed.
    #[error("store is closed")]
    Closed,
}

/// The store interface every backend implements with the same semantics.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads one key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;
    /// Reads every key under `prefix`, in key order, with the revision of the read.
    async fn range(&self, prefix: &str) -> Result<RangeResult, StoreError>;
    /// Reads at most `limit` keys under `prefix` that are >= `from_key`, in key order (a page
    /// of a large range).
    async fn range_from(
        &self,
        prefix: &str,
        from_key: &str,
        limit: usize,
    ) -> Result<RangeResult, StoreError>;
    /// Applies a compare-and-swap transaction.
    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError>;
    /// Streams every event under `prefix` with revision > `after_revision`.
    async fn watch(&self, prefix: &str, after_revision: u64) -> Result<WatchStream, StoreError>;
    /// Discards history up to and including `revision`; watches starting before it are told to
    /// re-list.
    async fn compact(&self, revision: u64) -> Result<(), StoreError>;
    /// Current revision of the store.
    async fn revision(&self) -> Result<u64, StoreError>;
    /// Grants a lease living `ttl` (rounded up to whole seconds; etcd may raise it to its
    /// minimum) unless kept alive.
    async fn grant_lease(&self, ttl: std::time::Duration) -> Result<LeaseId, StoreError>;
    /// Renews a lease for its whole time to live; `false` when it has already ended.
    async fn keep_alive(&self, lease: LeaseId) -> Result<bool, StoreError>;
    /// What is left of a lease, `None` when it has ended.
    async fn lease_ttl(&self, lease: LeaseId) -> Result<Option<LeaseTtl>, StoreError>;
    /// Ends a lease now, deleting its keys (no-op when it has already ended).
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError>;
}

/// A shared store handle.
pub type SharedStore = Arc<dyn Store>;

/// Smallest key greater than every key starting with `prefix` (etcd's `range_end`).
pub(crate) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
