//! All-or-nothing requests (bulk creates): inside [`Staged::scope`], a task's transactions do not
//! reach the store. Each is checked against what the store holds and what the task staged
//! before, and staged; the task's own reads see what it staged (so a second port of a bulk
//! sees the first one's address claim, a second rule the first one's group bump). At the end
//! the staged writes go to the store as one transaction, guarded by every store revision the
//! task's transactions compared: watchers see the whole request or nothing of it.

use std::cell::RefCell;
use std::collections::BTreeMap;

use async_trait::async_trait;

use isthmus_store::{
    Compare, KeyValue, LeaseId, LeaseTtl, Op, RangeResult, SharedStore, Store, StoreError, Txn,
    TxnResult, WatchStream,
};

/// Revisions of staged writes start here: far above any store revision, so a compare that
/// names one is known to be about a staged value.
const STAGED_REVISION: u64 = 1 << 62;

tokio::task_local! {
    static STAGE: RefCell<Stage>;
}

/// What a task staged.
#[derive(Debug, Default)]
pub struct Stage {
    /// Key → staged value (`None`: deleted) with its staged revision and creation revision.
    pending: BTreeMap<String, Option<KeyValue>>,
    /// Compares on the store's own state, for the final transaction.
    compares: Vec<Compare>,
    next: u64,
    /// In-process reservations (addresses by subnet, VNIs) the staged writes claim: held
    /// until the final transaction settles, so that concurrent requests do not pick them.
    held: Held,
}

/// Reservations a staged task holds until it commits.
#[derive(Debug, Default)]
pub struct Held {
    /// Addresses: (subnet id, address).
    pub ips: Vec<(String, u128)>,
    /// VNIs.
    pub vnis: Vec<u32>,
}

impl Stage {
    /// The one transaction that applies everything staged, under every compare on the store,
    /// and the reservations to release once it settled.
    pub fn into_txn(self) -> (Txn, Held) {
        let mut compares: Vec<Compare> = Vec::with_capacity(self.compares.len());
        for c in self.compares {
            if !compares.contains(&c) {
                compares.push(c);
            }
        }
        let ops = self
            .pending
            .into_iter()
            .map(|(key, kv)| match kv {
                Some(kv) => Op::put(key, kv.value),
                None => Op::Delete { key },
            })
            .collect();
        (Txn { compares, ops }, self.held)
    }

    /// How many objects under `prefix` the task created (staged, not in the store before).
    pub fn created_under(&self, prefix: &str) -> usize {
        self.pending
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, kv)| {
                kv.as_ref()
                    .is_some_and(|kv| kv.create_revision >= STAGED_REVISION)
            })
            .count()
    }
}

/// A store whose writes a task can stage (see the module documentation); outside a staged
/// scope it is the store itself.
pub struct Staged {
    base: SharedStore,
}

impl Staged {
    /// Stages over `base`.
    pub fn new(base: SharedStore) -> Staged {
        Staged { base }
    }

    /// Runs `work` with its writes staged; returns its result and what it staged.
    pub async fn scope<T>(work: impl std::future::Future<Output = T>) -> (T, Stage) {
        STAGE
            .scope(RefCell::new(Stage::default()), async {
                let result = work.await;
                let stage = STAGE.with(|s| std::mem::take(&mut *s.borrow_mut()));
                (result, stage)
            })
            .await
    }

    /// Keeps address reservations until the current task's staged writes settle; false (and
    /// nothing taken) outside a scope.
    pub fn hold_ips(ips: &mut Vec<(String, u128)>) -> bool {
        STAGE
            .try_with(|s| s.borrow_mut().held.ips.append(ips))
            .is_ok()
    }

    /// Keeps a VNI reservation until the current task's staged writes settle; false outside
    /// a scope.
    pub fn hold_vni(vni: u32) -> bool {
        STAGE
            .try_with(|s| s.borrow_mut().held.vnis.push(vni))
            .is_ok()
    }

    /// How many objects under `prefix` the current task staged as new (0 outside a scope).
    pub fn staged_new(prefix: &str) -> usize {
        STAGE
            .try_with(|s| s.borrow().created_under(prefix))
            .unwrap_or(0)
    }

    /// Whether the current task is staging its writes.
    pub fn staged() -> bool {
        STAGE.try_with(|_| ()).is_ok()
    }

    /// The staged value of `key`: `Some(None)` staged as deleted, `None` not staged.
    fn pending(key: &str) -> Option<Option<KeyValue>> {
        STAGE
            .try_with(|s| s.borrow().pending.get(key).cloned())
            .ok()
            .flatten()
    }

    /// Whether a staged write lies under `prefix`: `(any put, any delete)`.
    fn pending_under(compare: &Compare, prefix: &str) -> (bool, bool) {
        STAGE
            .try_with(|s| {
                let s = s.borrow();
                let mut under = s
                    .pending
                    .range(prefix.to_owned()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .filter(|(k, _)| compare.covers(k));
                let (mut put, mut deleted) = (false, false);
                for (_, kv) in under.by_ref() {
                    if kv.is_some() {
                        put = true;
                    } else {
                        deleted = true;
                    }
                }
                (put, deleted)
            })
            .unwrap_or((false, false))
    }

    /// Checks one compare now; `Some(compare)` when the final transaction must check it again
    /// against the store.
    async fn check(&self, compare: Compare) -> Result<(bool, Option<Compare>), StoreError> {
        match &compare {
            Compare::ModRevision { key, revision } => match Self::pending(key) {
                Some(staged) => {
                    let current = staged.map(|kv| kv.mod_revision).unwrap_or(0);
                    Ok((current == *revision, None))
                }
                None if *revision >= STAGED_REVISION => Ok((false, None)),
                None => {
                    let current = self.base.get(key).await?.map(|kv| kv.mod_revision);
                    Ok((current.unwrap_or(0) == *revision, Some(compare)))
                }
            },
            Compare::PrefixEmpty { prefix, .. } => {
                let (put, deleted) = Self::pending_under(&compare, prefix);
                if put {
                    return Ok((false, None));
                }
                let empty = !self
                    .range(prefix)
                    .await?
                    .kvs
                    .iter()
                    .any(|kv| compare.covers(&kv.key));
                // Over staged deletes the store still holds the keys: checked here only.
                Ok((empty, (!deleted).then_some(compare)))
            }
        }
    }

    async fn stage(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        let mut kept = Vec::new();
        for compare in txn.compares {
            let (holds, again) = self.check(compare).await?;
            if !holds {
                return Ok(TxnResult {
                    succeeded: false,
                    revision: 0,
                });
            }
            kept.extend(again);
        }
        let mut existing = Vec::with_capacity(txn.ops.len());
        for op in &txn.ops {
            if let Op::Put { lease: Some(_), .. } = op {
                // Nothing all-or-nothing writes under a lease (liveness is not staged).
                return Err(StoreError::Backend(
                    "a leased write cannot be staged".into(),
                ));
            }
            if let Op::Put { key, .. } = op {
                let before = match Self::pending(key) {
                    Some(staged) => staged.map(|kv| kv.create_revision),
                    None => self.base.get(key).await?.map(|kv| kv.create_revision),
                };
                existing.push(before);
            }
        }
        let revision = STAGE
            .try_with(|s| {
                let mut s = s.borrow_mut();
                s.next += 1;
                let revision = STAGED_REVISION + s.next;
                s.compares.extend(kept);
                let mut existing = existing.into_iter();
                for op in txn.ops {
                    match op {
                        Op::Put { key, value, .. } => {
                            let create_revision = existing.next().flatten().unwrap_or(revision);
                            let kv = KeyValue {
                                key: key.clone(),
                                value,
                                create_revision,
                                mod_revision: revision,
                            };
                            s.pending.insert(key, Some(kv));
                        }
                        Op::Delete { key } => {
                            s.pending.insert(key, None);
                        }
                    }
                }
                revision
            })
            .map_err(|_| StoreError::Backend("staged outside a scope".to_owned()))?;
        Ok(TxnResult {
            succeeded: true,
            revision,
        })
    }

    /// `base` merged with what the task staged under `prefix`.
    fn merge(prefix: &str, mut base: RangeResult) -> RangeResult {
        let Ok(staged) = STAGE.try_with(|s| {
            s.borrow()
                .pending
                .range(prefix.to_owned()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Vec<_>>()
        }) else {
            return base;
        };
        if staged.is_empty() {
            return base;
        }
        let mut all: BTreeMap<String, KeyValue> =
            base.kvs.drain(..).map(|kv| (kv.key.clone(), kv)).collect();
        for (key, kv) in staged {
            match kv {
                Some(kv) => {
                    all.insert(key, kv);
                }
                None => {
                    all.remove(&key);
                }
            }
        }
        base.kvs = all.into_values().collect();
        base
    }
}

#[async_trait]
impl Store for Staged {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        match Self::pending(key) {
            Some(staged) => Ok(staged),
            None => self.base.get(key).await,
        }
    }

    async fn range(&self, prefix: &str) -> Result<RangeResult, StoreError> {
        let base = self.base.range(prefix).await?;
        Ok(Self::merge(prefix, base))
    }

    async fn range_from(
        &self,
        prefix: &str,
        from_key: &str,
        limit: usize,
    ) -> Result<RangeResult, StoreError> {
        if !Self::staged() {
            return self.base.range_from(prefix, from_key, limit).await;
        }
        // As many more from the store as staged deletes could hide, then the staged keys
        // merged in: a page, never the whole range (allocation reads pages of claims).
        let staged: Vec<(String, Option<KeyValue>)> = STAGE
            .try_with(|s| {
                s.borrow()
                    .pending
                    .range(from_key.to_owned()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let hidden = staged.iter().filter(|(_, v)| v.is_none()).count();
        let mut page = self
            .base
            .range_from(prefix, from_key, limit + hidden)
            .await?;
        let complete = page.kvs.len() < limit + hidden;
        let last = page.kvs.last().map(|kv| kv.key.clone());
        let mut all: BTreeMap<String, KeyValue> =
            page.kvs.drain(..).map(|kv| (kv.key.clone(), kv)).collect();
        for (key, kv) in staged {
            // Beyond the store's page, a staged key would skip over store keys not read.
            if !complete && last.as_ref().is_some_and(|l| &key > l) {
                continue;
            }
            match kv {
                Some(kv) => {
                    all.insert(key, kv);
                }
                None => {
                    all.remove(&key);
                }
            }
        }
        page.kvs = all.into_values().take(limit).collect();
        Ok(page)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        if Self::staged() {
            self.stage(txn).await
        } else {
            self.base.txn(txn).await
        }
    }

    async fn watch(&self, prefix: &str, after_revision: u64) -> Result<WatchStream, StoreError> {
        self.base.watch(prefix, after_revision).await
    }

    async fn compact(&self, revision: u64) -> Result<(), StoreError> {
        self.base.compact(revision).await
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        self.base.revision().await
    }

    async fn grant_lease(&self, ttl: std::time::Duration) -> Result<LeaseId, StoreError> {
        self.base.grant_lease(ttl).await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<bool, StoreError> {
        self.base.keep_alive(lease).await
    }

    async fn lease_ttl(&self, lease: LeaseId) -> Result<Option<LeaseTtl>, StoreError> {
        self.base.lease_ttl(lease).await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.base.revoke_lease(lease).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use isthmus_store::MemoryStore;

    use bytes::Bytes;

    use super::*;

    fn put(key: &str, value: &str) -> Op {
        Op::put(key, Bytes::from(value.to_owned()))
    }

    #[tokio::test]
    async fn staged_writes_are_read_back_and_land_together() {
        let base: SharedStore = Arc::new(MemoryStore::new());
        base.txn(Txn::new().then(put("/k/a", "0"))).await.unwrap();
        let staged = Staged::new(base.clone());
        let ((), stage) = Staged::scope(async {
            let a = staged.get("/k/a").await.unwrap().unwrap();
            let t = Txn::new()
                .when(Compare::mod_revision("/k/a", a.mod_revision))
                .when(Compare::absent("/k/b"))
                .then(put("/k/a", "1"))
                .then(put("/k/b", "1"));
            assert!(staged.txn(t).await.unwrap().succeeded);
            // The task sees its own writes; the store does not.
            assert_eq!(staged.range("/k/").await.unwrap().kvs.len(), 2);
            assert!(base.get("/k/b").await.unwrap().is_none());
            // A second claim of the same key fails like a committed one would.
            let again = Txn::new()
                .when(Compare::absent("/k/b"))
                .then(put("/k/b", "2"));
            assert!(!staged.txn(again).await.unwrap().succeeded);
            // A change over a staged value compares its staged revision.
            let b = staged.get("/k/b").await.unwrap().unwrap();
            let t = Txn::new()
                .when(Compare::mod_revision("/k/b", b.mod_revision))
                .then(put("/k/b", "3"));
            assert!(staged.txn(t).await.unwrap().succeeded);
            assert_eq!(Staged::staged_new("/k/"), 1);
        })
        .await;
        let (txn, _) = stage.into_txn();
        assert_eq!(txn.ops.len(), 2);
        assert!(base.txn(txn.clone()).await.unwrap().succeeded);
        assert_eq!(&base.get("/k/b").await.unwrap().unwrap().value[..], b"3");
        // Applied once, the same compares no longer hold: a concurrent change fails it whole.
        assert!(!base.txn(txn).await.unwrap().succeeded);
    }

    #[tokio::test]
    async fn pages_merge_what_the_task_staged() {
        let base: SharedStore = Arc::new(MemoryStore::new());
        let mut t = Txn::new();
        for k in ["a", "b", "c", "d", "e"] {
            t = t.then(put(&format!("/k/{k}"), k));
        }
        base.txn(t).await.unwrap();
        let staged = Staged::new(base.clone());
        let ((), _) = Staged::scope(async {
            let t = Txn::new()
                .then(put("/k/bb", "new"))
                .then(Op::delete("/k/c"));
            assert!(staged.txn(t).await.unwrap().succeeded);
            let keys = |page: RangeResult| -> Vec<String> {
                page.kvs.into_iter().map(|kv| kv.key).collect()
            };
            assert_eq!(
                keys(staged.range_from("/k/", "/k/b", 3).await.unwrap()),
                ["/k/b", "/k/bb", "/k/d"]
            );
            assert_eq!(
                keys(staged.range_from("/k/", "/k/d", 10).await.unwrap()),
                ["/k/d", "/k/e"]
            );
        })
        .await;
    }
}
