//! The memory backend: the engine with no persistence, for unit tests.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::engine::Engine;
use crate::{KeyValue, RangeResult, Store, StoreError, Txn, TxnResult, WatchStream};

/// Default number of revisions kept for watchers.
pub(crate) const DEFAULT_HISTORY: usize = 10_000;

/// A volatile store with the same semantics as the durable ones.
#[derive(Debug)]
pub struct MemoryStore {
    engine: Arc<Engine>,
    writer: Mutex<()>,
}

impl MemoryStore {
    /// An empty store at revision 0.
    pub fn new() -> Self {
        Self::with_history(DEFAULT_HISTORY)
    }

    /// An empty store keeping `history` revisions for watchers.
    pub fn with_history(history: usize) -> Self {
        MemoryStore {
            engine: Arc::new(Engine::new(BTreeMap::new(), 0, history)),
            writer: Mutex::new(()),
        }
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
        Ok(self.engine.get(key))
    }

    async fn range(&self, prefix: &str) -> Result<RangeResult, StoreError> {
        Ok(self.engine.range(prefix))
    }

    async fn range_from(
        &self,
        prefix: &str,
        from_key: &str,
        limit: usize,
    ) -> Result<RangeResult, StoreError> {
        Ok(self.engine.range_from(prefix, from_key, limit))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let plan = self.engine.plan([&txn]);
        self.engine.apply(&plan);
        plan.results
            .first()
            .copied()
            .ok_or_else(|| StoreError::Backend("empty plan".into()))
    }

    async fn watch(&self, prefix: &str, after_revision: u64) -> Result<WatchStream, StoreError> {
        self.engine.watch(prefix, after_revision)
    }

    async fn compact(&self, revision: u64) -> Result<(), StoreError> {
        self.engine.compact(revision);
        Ok(())
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        Ok(self.engine.revision())
    }
}
