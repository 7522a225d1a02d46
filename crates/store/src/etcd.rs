//! The etcd v3 backend, for several controllers sharing one store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, EventType, GetOptions, PutOptions, Txn as EtcdTxn,
    TxnOp, WatchOptions,
};
use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};
use tokio::sync::mpsc;

use crate::{
    prefix_end, Compare, Event, KeyValue, LeaseId, LeaseTtl, Op, RangeResult, Store, StoreError,
    Txn, TxnResult, WatchBatch, WatchStream,
};

/// A store on an etcd v3 cluster. Every key is kept under `root` so several stores (tests,
/// deployments) can share one cluster.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    root: String,
    keepers: Arc<std::sync::Mutex<HashMap<LeaseId, Arc<Keeper>>>>,
}

/// A lease's keep-alive stream, kept open between renewals (opening one per renewal costs
/// more than the renewal).
struct Keeper {
    stream: tokio::sync::Mutex<Option<(LeaseKeeper, LeaseKeepAliveStream)>>,
    /// When it last renewed (streams of leases nobody renews any more are closed).
    used: std::sync::Mutex<Instant>,
}

/// A keep-alive stream unused this long is closed.
const KEEPER_IDLE: Duration = Duration::from_secs(300);

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("root", &self.root)
            .finish()
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// An etcd client error: `Unavailable` when etcd cannot answer now (no quorum, no member
/// reachable, the request timed out), so callers can say "try again" instead of "broken".
fn etcd_error(e: etcd_client::Error) -> StoreError {
    // gRPC codes CANCELLED (1), DEADLINE_EXCEEDED (4), ABORTED (10), UNAVAILABLE (14).
    const RETRYABLE: [i32; 4] = [1, 4, 10, 14];
    match &e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
            StoreError::Unavailable(e.to_string())
        }
        etcd_client::Error::GRpcStatus(status) if RETRYABLE.contains(&i32::from(status.code())) => {
            StoreError::Unavailable(e.to_string())
        }
        _ => backend(e),
    }
}

/// How long one etcd request may take before it is answered as unavailable (a cluster that
/// lost quorum does not fail requests: it holds them).
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1500);

fn revision_of(header: Option<&etcd_client::ResponseHeader>) -> u64 {
    header.map_or(0, |h| h.revision().max(0) as u64)
}

/// TLS to etcd: the CA that signed etcd's certificate and, for etcd's `--client-cert-auth`,
/// this client's certificate and key (all PEM).
#[derive(Clone, Default)]
pub struct EtcdTls {
    /// CA certificate(s) trusted for etcd's server certificate.
    pub ca: Vec<u8>,
    /// Client certificate and private key, when etcd asks for one.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("EtcdTls")
            .field("client_certificate", &self.identity.is_some())
            .finish()
    }
}

impl EtcdStore {
    /// Connects to `endpoints` (e.g. `http://127.0.0.1:2379`); every key is stored under `root`
    /// (use "" for none).
    pub async fn connect(endpoints: &[String], root: &str) -> Result<Self, StoreError> {
        Self::connect_with(endpoints, root, None).await
    }

    /// [`EtcdStore::connect`] over TLS when `tls` is given (`https://` endpoints).
    pub async fn connect_with(
        endpoints: &[String],
        root: &str,
        tls: Option<&EtcdTls>,
    ) -> Result<Self, StoreError> {
        let mut options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(
                std::time::Duration::from_secs(5),
                std::time::Duration::from_secs(3),
            );
        if let Some(tls) = tls {
            let mut config = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(&tls.ca));
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(etcd_client::Identity::from_pem(cert, key));
            }
            options = options.with_tls(config);
        }
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(etcd_error)?;
        let store = EtcdStore {
            client,
            root: root.to_owned(),
            keepers: Arc::default(),
        };
        // Fail at start-up, not on the first request, when nothing answers.
        store.revision().await?;
        Ok(store)
    }

    /// The keep-alive stream of `lease` (opened on first use), closing those left unused.
    fn keeper(&self, lease: LeaseId) -> Arc<Keeper> {
        let mut keepers = self.keepers.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some(keeper) = keepers.get(&lease) {
            *keeper.used.lock().unwrap_or_else(|e| e.into_inner()) = now;
            return keeper.clone();
        }
        // Only when a stream opens are the idle ones looked for: a renewal stays O(1).
        keepers.retain(|_, k| {
            now.duration_since(*k.used.lock().unwrap_or_else(|e| e.into_inner())) < KEEPER_IDLE
        });
        let keeper = Arc::new(Keeper {
            stream: tokio::sync::Mutex::new(None),
            used: std::sync::Mutex::new(now),
        });
        keepers.insert(lease, keeper.clone());
        keeper
    }

    fn forget_keeper(&self, lease: LeaseId) {
        self.keepers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&lease);
    }

    fn full(&self, key: &str) -> String {
        format!("{}{}", self.root, key)
    }

    fn local(&self, key: &[u8]) -> Result<String, StoreError> {
        let key = std::str::from_utf8(key).map_err(backend)?;
        Ok(key.strip_prefix(&self.root).unwrap_or(key).to_owned())
    }

    fn to_range(&self, response: &etcd_client::GetResponse) -> Result<RangeResult, StoreError> {
        let kvs = response
            .kvs()
            .iter()
            .map(|kv| self.to_kv(kv))
            .collect::<Result<_, _>>()?;
        Ok(RangeResult {
            kvs,
            revision: revision_of(response.header()),
        })
    }

    fn to_kv(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
        Ok(KeyValue {
            key: self.local(kv.key())?,
            value: Bytes::copy_from_slice(kv.value()),
            create_revision: kv.create_revision().max(0) as u64,
            mod_revision: kv.mod_revision().max(0) as u64,
        })
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let mut client = self.client.kv_client();
        let response = client.get(self.full(key), None).await.map_err(etcd_error)?;
        response.kvs().first().map(|kv| self.to_kv(kv)).transpose()
    }

    async fn range(&self, prefix: &str) -> Result<RangeResult, StoreError> {
        let mut client = self.client.kv_client();
        let full = self.full(prefix);
        let end = prefix_end(&full);
        let response = client
            .get(full, Some(GetOptions::new().with_range(end)))
            .await
            .map_err(etcd_error)?;
        self.to_range(&response)
    }

    async fn range_from(
        &self,
        prefix: &str,
        from_key: &str,
        limit: usize,
    ) -> Result<RangeResult, StoreError> {
        let mut client = self.client.kv_client();
        let start = self.full(if from_key > prefix { from_key } else { prefix });
        let end = prefix_end(&self.full(prefix));
        let response = client
            .get(
                start,
                Some(GetOptions::new().with_range(end).with_limit(limit as i64)),
            )
            .await
            .map_err(etcd_error)?;
        self.to_range(&response)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        let mut compares: Vec<EtcdCompare> = Vec::with_capacity(txn.compares.len());
        for c in &txn.compares {
            match c {
                Compare::ModRevision { key, revision } => compares.push(EtcdCompare::mod_revision(
                    self.full(key),
                    CompareOp::Equal,
                    *revision as i64,
                )),
                // Over a range, etcd compares every key, or a zero record when there is none:
                // "create_revision < 1 for all keys" holds exactly when the range is empty.
                // Keys excepted split the prefix into the ranges between them.
                Compare::PrefixEmpty { prefix, except } => {
                    let mut start = self.full(prefix).into_bytes();
                    for key in except {
                        let key = self.full(key).into_bytes();
                        if key > start {
                            compares.push(
                                EtcdCompare::create_revision(start, CompareOp::Less, 1)
                                    .with_range(key.clone()),
                            );
                        }
                        start = key;
                        start.push(0);
                    }
                    let end = prefix_end(&self.full(prefix));
                    compares.push(
                        EtcdCompare::create_revision(start, CompareOp::Less, 1).with_range(end),
                    );
                }
            }
        }
        let ops: Vec<TxnOp> = txn
            .ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value, lease } => TxnOp::put(
                    self.full(key),
                    value.to_vec(),
                    lease.map(|l| PutOptions::new().with_lease(l)),
                ),
                Op::Delete { key } => TxnOp::delete(self.full(key), None),
            })
            .collect();
        let mut client = self.client.kv_client();
        let lease = txn.ops.iter().find_map(|op| match op {
            Op::Put { lease, .. } => *lease,
            Op::Delete { .. } => None,
        });
        let response = client
            .txn(EtcdTxn::new().when(compares).and_then(ops))
            .await
            .map_err(|e| match (lease, &e) {
                (Some(lease), etcd_client::Error::GRpcStatus(status))
                    if status.message().contains("lease not found") =>
                {
                    StoreError::LeaseNotFound(lease)
                }
                _ => etcd_error(e),
            })?;
        Ok(TxnResult {
            succeeded: response.succeeded(),
            revision: revision_of(response.header()),
        })
    }

    async fn watch(&self, prefix: &str, after_revision: u64) -> Result<WatchStream, StoreError> {
        let mut client = self.client.watch_client();
        let full = self.full(prefix);
        let end = prefix_end(&full);
        let options = WatchOptions::new()
            .with_range(end)
            .with_start_revision(after_revision as i64 + 1);
        let mut stream = client
            .watch(full, Some(options))
            .await
            .map_err(etcd_error)?;
        let (tx, rx) = mpsc::channel(256);
        let store = self.clone();
        tokio::spawn(async move {
            // The sender half of the etcd watch must stay alive or etcd cancels the watch.
            loop {
                let message = tokio::select! {
                    m = stream.message() => m,
                    _ = tx.closed() => return,
                };
                let response = match message {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        let _ = tx.send(Err(StoreError::Closed)).await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(backend(e))).await;
                        return;
                    }
                };
                if response.compact_revision() > 0 {
                    let _ = tx
                        .send(Err(StoreError::Compacted {
                            requested: after_revision,
                            compact_revision: response.compact_revision() as u64,
                        }))
                        .await;
                    return;
                }
                if response.canceled() {
                    let reason = response.cancel_reason().to_owned();
                    let _ = tx.send(Err(StoreError::Backend(reason))).await;
                    return;
                }
                // One response may carry several revisions; split them into batches.
                let mut batches: Vec<WatchBatch> = Vec::new();
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    let converted = match event.event_type() {
                        EventType::Put => store.to_kv(kv).map(Event::Put),
                        EventType::Delete => store.local(kv.key()).map(|key| Event::Delete {
                            key,
                            mod_revision: kv.mod_revision().max(0) as u64,
                        }),
                    };
                    let converted = match converted {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    };
                    let revision = converted.revision();
                    match batches.last_mut() {
                        Some(b) if b.revision == revision => b.events.push(converted),
                        _ => batches.push(WatchBatch {
                            revision,
                            events: vec![converted],
                        }),
                    }
                }
                for batch in batches {
                    if tx.send(Ok(batch)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    async fn compact(&self, revision: u64) -> Result<(), StoreError> {
        let mut client = self.client.kv_client();
        client
            .compact(revision as i64, None)
            .await
            .map_err(etcd_error)?;
        Ok(())
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        let mut client = self.client.kv_client();
        // A range over a key that never exists returns the current revision cheaply.
        let response = client
            .get("\0isthmus-revision-probe", None)
            .await
            .map_err(etcd_error)?;
        Ok(revision_of(response.header()))
    }

    async fn grant_lease(&self, ttl: std::time::Duration) -> Result<LeaseId, StoreError> {
        let seconds = ttl.as_secs_f64().ceil().max(1.0) as i64;
        let mut client = self.client.lease_client();
        let response = client.grant(seconds, None).await.map_err(etcd_error)?;
        Ok(response.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<bool, StoreError> {
        let keeper = self.keeper(lease);
        let mut stream = keeper.stream.lock().await;
        // The client's timeout covers opening the stream, not its messages.
        let renewed = tokio::time::timeout(REQUEST_TIMEOUT, async {
            if stream.is_none() {
                let mut client = self.client.lease_client();
                *stream = Some(client.keep_alive(lease).await.map_err(etcd_error)?);
            }
            let Some((keeper, answers)) = stream.as_mut() else {
                return Err(StoreError::Closed);
            };
            keeper.keep_alive().await.map_err(etcd_error)?;
            match answers.message().await.map_err(etcd_error)? {
                // etcd answers a lease that has ended with TTL 0.
                Some(answer) => Ok(answer.ttl() > 0),
                None => Err(StoreError::Unavailable(
                    "etcd closed the lease keep-alive stream".into(),
                )),
            }
        })
        .await
        .unwrap_or_else(|_| Err(StoreError::Unavailable("lease keep-alive timed out".into())));
        let renewed = match renewed {
            // etcd 3.4 ends the stream with this error rather than answering TTL 0.
            Err(StoreError::Backend(why)) if why.contains("lease not found") => Ok(false),
            other => other,
        };
        if !matches!(renewed, Ok(true)) {
            // A broken stream is opened afresh next time; an ended lease needs none.
            *stream = None;
            drop(stream);
            self.forget_keeper(lease);
        }
        renewed
    }

    async fn lease_ttl(&self, lease: LeaseId) -> Result<Option<LeaseTtl>, StoreError> {
        let mut client = self.client.lease_client();
        let response = client.time_to_live(lease, None).await.map_err(etcd_error)?;
        // etcd answers -1 for a lease it does not know.
        if response.ttl() < 0 {
            return Ok(None);
        }
        Ok(Some(LeaseTtl {
            granted: std::time::Duration::from_secs(response.granted_ttl().max(0) as u64),
            remaining: std::time::Duration::from_secs(response.ttl() as u64),
        }))
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.forget_keeper(lease);
        let mut client = self.client.lease_client();
        match client.revoke(lease).await {
            Ok(_) => Ok(()),
            Err(etcd_client::Error::GRpcStatus(status))
                if status.message().contains("lease not found") =>
            {
                Ok(())
            }
            Err(e) => Err(etcd_error(e)),
        }
    }
}
