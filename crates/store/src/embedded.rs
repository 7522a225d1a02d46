//! The embedded backend: the engine backed by one redb file, fsync'd on every commit.
//!
//! One committer thread owns all writes. It drains every transaction waiting at that moment,
//! evaluates them in order, writes their effects in a single redb transaction (one fsync for
//! the whole group) and only then applies them in memory and answers the callers. Under load
//! this amortises the fsync; at rest a lone transaction is committed at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{mpsc as std_mpsc, Arc};
use std::thread;

use async_trait::async_trait;
use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use crate::engine::{Engine, Entry, Plan};
use crate::memory::DEFAULT_HISTORY;
use crate::{Event, KeyValue, RangeResult, Store, StoreError, Txn, TxnResult, WatchStream};

/// key → 8 bytes create_revision ‖ 8 bytes mod_revision ‖ value.
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// "revision" → the store revision.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION_KEY: &str = "revision";
/// Most transactions folded into one commit.
const MAX_GROUP: usize = 512;

struct Request {
    txn: Txn,
    reply: oneshot::Sender<Result<TxnResult, StoreError>>,
}

/// A durable single-file store.
pub struct EmbeddedStore {
    engine: Arc<Engine>,
    requests: Option<std_mpsc::Sender<Request>>,
    committer: Option<thread::JoinHandle<()>>,
    path: PathBuf,
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // Closing the queue ends the committer once it has answered what it holds; joining it
        // releases the file so the store can be reopened at once.
        self.requests.take();
        if let Some(committer) = self.committer.take() {
            let _ = committer.join();
        }
    }
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish()
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl EmbeddedStore {
    /// Opens (or creates) the store file at `path` and loads it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(backend)?;
        }
        let db = Database::builder()
            // Everything is also held in memory by the engine; redb's cache only helps writes.
            .set_cache_size(16 << 20)
            .create(path)
            .map_err(backend)?;
        let (entries, revision) = load(&db)?;
        let engine = Arc::new(Engine::new(entries, revision, DEFAULT_HISTORY));
        let (requests, inbox) = std_mpsc::channel::<Request>();
        let committer_engine = Arc::clone(&engine);
        let committer = thread::Builder::new()
            .name("store-commit".into())
            .spawn(move || commit_loop(db, committer_engine, inbox))
            .map_err(backend)?;
        Ok(EmbeddedStore {
            engine,
            requests: Some(requests),
            committer: Some(committer),
            path: path.to_owned(),
        })
    }
}

fn load(db: &Database) -> Result<(BTreeMap<String, Entry>, u64), StoreError> {
    let write = db.begin_write().map_err(backend)?;
    // Create the tables on first open so reads below never fail on a fresh file.
    write.open_table(KV).map_err(backend)?;
    write.open_table(META).map_err(backend)?;
    write.commit().map_err(backend)?;

    let read = db.begin_read().map_err(backend)?;
    let meta = read.open_table(META).map_err(backend)?;
    let revision = meta
        .get(REVISION_KEY)
        .map_err(backend)?
        .map_or(0, |v| v.value());
    let table = read.open_table(KV).map_err(backend)?;
    let mut entries = BTreeMap::new();
    for row in table.iter().map_err(backend)? {
        let (key, value) = row.map_err(backend)?;
        let raw = value.value();
        if raw.len() < 16 {
            return Err(StoreError::Backend(format!(
                "corrupt record for key {}",
                key.value()
            )));
        }
        let (revs, data) = raw.split_at(16);
        let create_revision = u64::from_be_bytes(revs[..8].try_into().map_err(backend)?);
        let mod_revision = u64::from_be_bytes(revs[8..].try_into().map_err(backend)?);
        entries.insert(
            key.value().to_owned(),
            Entry {
                value: Bytes::copy_from_slice(data),
                create_revision,
                mod_revision,
            },
        );
    }
    Ok((entries, revision))
}

fn persist(db: &Database, plan: &Plan) -> Result<(), StoreError> {
    let Some(revision) = plan.final_revision() else {
        return Ok(());
    };
    let write = db.begin_write().map_err(backend)?;
    {
        let mut table = write.open_table(KV).map_err(backend)?;
        let mut record = Vec::new();
        for batch in &plan.batches {
            for event in &batch.events {
                match event {
                    Event::Put(kv) => {
                        record.clear();
                        record.extend_from_slice(&kv.create_revision.to_be_bytes());
                        record.extend_from_slice(&kv.mod_revision.to_be_bytes());
                        record.extend_from_slice(&kv.value);
                        table
                            .insert(kv.key.as_str(), record.as_slice())
                            .map_err(backend)?;
                    }
                    Event::Delete { key, .. } => {
                        table.remove(key.as_str()).map_err(backend)?;
                    }
                }
            }
        }
        let mut meta = write.open_table(META).map_err(backend)?;
        meta.insert(REVISION_KEY, revision).map_err(backend)?;
    }
    write.commit().map_err(backend)
}

fn commit_loop(db: Database, engine: Arc<Engine>, inbox: std_mpsc::Receiver<Request>) {
    while let Ok(first) = inbox.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match inbox.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let plan = engine.plan(group.iter().map(|r| &r.txn));
        match persist(&db, &plan) {
            Ok(()) => {
                engine.apply(&plan);
                for (request, result) in group.into_iter().zip(plan.results) {
                    let _ = request.reply.send(Ok(result));
                }
            }
            Err(error) => {
                for request in group {
                    let _ = request.reply.send(Err(error.clone()));
                }
            }
        }
    }
}

#[async_trait]
impl Store for EmbeddedStore {
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
        let (reply, answer) = oneshot::channel();
        self.requests
            .as_ref()
            .ok_or(StoreError::Closed)?
            .send(Request { txn, reply })
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
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
