//! The memory backend: the engine with no persistence, for unit tests.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;

use crate::engine::Engine;
use crate::{
    KeyValue, LeaseId, LeaseTtl, RangeResult, Store, StoreError, Txn, TxnResult, WatchStream,
};

/// How often the store looks for leases whose time is up.
pub(crate) const LEASE_CHECK: Duration = Duration::from_millis(100);

/// Default number of revisions kept for watchers.
pub(crate) const DEFAULT_HISTORY: usize = 10_000;

/// A volatile store with the same semantics as the durable ones.
#[derive(Debug)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    engine: Arc<Engine>,
    writer: Mutex<()>,
}

impl Inner {
    fn txn(&self, txn: &Txn) -> Result<TxnResult, StoreError> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut plan = self.engine.plan([txn]);
        self.engine.apply(&plan);
        plan.results
            .pop()
            .unwrap_or_else(|| Err(StoreError::Backend("empty plan".into())))
    }

    /// Ends a lease and deletes its keys, as the writer.
    fn end_lease(&self, id: LeaseId) {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(txn) = self.engine.lease_keys(id) {
            let plan = self.engine.plan([&txn]);
            self.engine.drop_lease(id);
            self.engine.apply(&plan);
        }
    }
}

/// Ends leases whose time is up until the store is dropped.
fn expire_leases(inner: Weak<Inner>) {
    loop {
        std::thread::sleep(LEASE_CHECK);
        let Some(inner) = inner.upgrade() else { return };
        for id in inner.engine.expired_leases() {
            inner.end_lease(id);
        }
    }
}

impl MemoryStore {
    /// An empty store at revision 0.
    pub fn new() -> Self {
        Self::with_history(DEFAULT_HISTORY)
    }

    /// An empty store keeping `history` revisions for watchers.
    pub fn with_history(history: usize) -> Self {
        let inner = Arc::new(Inner {
            engine: Arc::new(Engine::new(BTreeMap::new(), &HashMap::new(), 0, history)),
            writer: Mutex::new(()),
        });
        let weak = Arc::downgrade(&inner);
        // Without a thread the store still works; only leases would not end on their own.
        if let Err(e) = std::thread::Builder::new()
            .name("store-leases".into())
            .spawn(move || expire_leases(weak))
        {
            tracing::warn!("cannot start the lease expiry thread: {e}");
        }
        MemoryStore { inner }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.inner.engine.get(key))
    }

    async fn range(&self, prefix: &str) -> Result<RangeResult, StoreError> {
        Ok(self.inner.engine.range(prefix))
    }

    async fn range_from(
        &self,
        prefix: &str,
        from_key: &str,
        limit: usize,
    ) -> Result<RangeResult, StoreError> {
        Ok(self.inner.engine.range_from(prefix, from_key, limit))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        self.inner.txn(&txn)
    }

    async fn watch(&self, prefix: &str, after_revision: u64) -> Result<WatchStream, StoreError> {
        self.inner.engine.watch(prefix, after_revision)
    }

    async fn compact(&self, revision: u64) -> Result<(), StoreError> {
        self.inner.engine.compact(revision);
        Ok(())
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        Ok(self.inner.engine.revision())
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        Ok(self.inner.engine.grant_lease(ttl))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<bool, StoreError> {
        Ok(self.inner.engine.keep_alive(lease))
    }

    async fn lease_ttl(&self, lease: LeaseId) -> Result<Option<LeaseTtl>, StoreError> {
        Ok(self.inner.engine.lease_ttl(lease))
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.end_lease(lease);
        Ok(())
    }
}
