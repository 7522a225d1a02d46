//! One conformance suite, run against every backend: memory, embedded (redb file) and a real
//! etcd server started by the test.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use isthmus_store::etcd_server::EtcdServer;
use isthmus_store::{
    Compare, EmbeddedStore, EtcdStore, Event, MemoryStore, Op, Store, StoreError, Txn,
};

async fn expect_batch(stream: &mut isthmus_store::WatchStream) -> isthmus_store::WatchBatch {
    tokio::time::timeout(Duration::from_secs(10), stream.recv())
        .await
        .expect("watch delivered nothing within 10 s")
        .expect("watch stream ended")
        .expect("watch returned an error")
}

async fn basic_get_put_range(store: Arc<dyn Store>) {
    let r0 = store.revision().await.unwrap();
    assert!(store.get("/t/a").await.unwrap().is_none());
    let put = store
        .txn(
            Txn::new()
                .when(Compare::absent("/t/a"))
                .then(Op::put("/t/a", "1")),
        )
        .await
        .unwrap();
    assert!(put.succeeded);
    assert_eq!(put.revision, r0 + 1, "one revision per transaction");
    let kv = store.get("/t/a").await.unwrap().unwrap();
    assert_eq!(&kv.value[..], b"1");
    assert_eq!(kv.create_revision, r0 + 1);
    assert_eq!(kv.mod_revision, r0 + 1);

    // A second create of the same key must fail and not change the revision.
    let again = store
        .txn(
            Txn::new()
                .when(Compare::absent("/t/a"))
                .then(Op::put("/t/a", "2")),
        )
        .await
        .unwrap();
    assert!(!again.succeeded);
    assert_eq!(store.get("/t/a").await.unwrap().unwrap().value, "1");

    // Compare-and-swap on mod_revision.
    let cas = store
        .txn(
            Txn::new()
                .when(Compare::mod_revision("/t/a", kv.mod_revision))
                .then(Op::put("/t/a", "3"))
                .then(Op::put("/t/b", "x"))
                .then(Op::put("/t/c", "y")),
        )
        .await
        .unwrap();
    assert!(cas.succeeded);
    let a = store.get("/t/a").await.unwrap().unwrap();
    assert_eq!(
        a.create_revision,
        r0 + 1,
        "create_revision survives updates"
    );
    assert_eq!(a.mod_revision, cas.revision);
    let stale = store
        .txn(
            Txn::new()
                .when(Compare::mod_revision("/t/a", kv.mod_revision))
                .then(Op::put("/t/a", "4")),
        )
        .await
        .unwrap();
    assert!(!stale.succeeded, "stale revision must not win");

    // Range by prefix, key order, does not leak neighbours.
    store
        .txn(Txn::new().then(Op::put("/t2/z", "other")))
        .await
        .unwrap();
    let range = store.range("/t/").await.unwrap();
    let keys: Vec<_> = range.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/t/a", "/t/b", "/t/c"]);
    assert_eq!(range.revision, store.revision().await.unwrap());

    // Pages of a range.
    let page = store.range_from("/t/", "/t/b", 1).await.unwrap();
    assert_eq!(
        page.kvs
            .iter()
            .map(|kv| kv.key.as_str())
            .collect::<Vec<_>>(),
        ["/t/b"]
    );
    let page = store.range_from("/t/", "/t/bb", 10).await.unwrap();
    assert_eq!(
        page.kvs
            .iter()
            .map(|kv| kv.key.as_str())
            .collect::<Vec<_>>(),
        ["/t/c"]
    );
    let page = store.range_from("/t/", "", 2).await.unwrap();
    assert_eq!(page.kvs.len(), 2);

    // Prefix-empty compare.
    let not_empty = store
        .txn(
            Txn::new()
                .when(Compare::prefix_empty("/t/"))
                .then(Op::put("/x", "1")),
        )
        .await
        .unwrap();
    assert!(!not_empty.succeeded);
    let empty = store
        .txn(
            Txn::new()
                .when(Compare::prefix_empty("/nothing-here/"))
                .then(Op::put("/x", "1")),
        )
        .await
        .unwrap();
    assert!(empty.succeeded);
    // Keys excepted from the check: all three → empty; two of them → not; a put under the
    // prefix in the same transaction does not make it pass either way.
    for (except, holds) in [
        (vec!["/t/c", "/t/a", "/t/b"], true),
        (vec!["/t/a", "/t/c"], false),
        (vec!["/t/b"], false),
        (vec!["/t/a", "/t/b", "/t/c", "/t/zz"], true),
    ] {
        let except = except.into_iter().map(str::to_owned).collect();
        let result = store
            .txn(
                Txn::new()
                    .when(Compare::prefix_empty_except("/t/", except))
                    .then(Op::put("/x", "1")),
            )
            .await
            .unwrap();
        assert_eq!(result.succeeded, holds);
    }

    // Atomic delete; all or nothing when one compare fails.
    let partial = store
        .txn(
            Txn::new()
                .when(Compare::absent("/t/b"))
                .then(Op::delete("/t/a"))
                .then(Op::delete("/t/c")),
        )
        .await
        .unwrap();
    assert!(!partial.succeeded);
    assert!(store.get("/t/a").await.unwrap().is_some());
    let del = store
        .txn(Txn::new().then(Op::delete("/t/a")).then(Op::delete("/t/c")))
        .await
        .unwrap();
    assert!(del.succeeded);
    assert_eq!(store.range("/t/").await.unwrap().kvs.len(), 1);
    // The key is gone: "absent" holds again.
    let recreate = store
        .txn(
            Txn::new()
                .when(Compare::absent("/t/a"))
                .then(Op::put("/t/a", "new")),
        )
        .await
        .unwrap();
    assert!(recreate.succeeded);
    let a = store.get("/t/a").await.unwrap().unwrap();
    assert_eq!(a.create_revision, recreate.revision);
}

async fn watch_delivers_every_event_in_order(store: Arc<dyn Store>) {
    let start = store.revision().await.unwrap();
    let mut watch = store.watch("/w/", start).await.unwrap();
    let first = store
        .txn(
            Txn::new()
                .then(Op::put("/w/1", "a"))
                .then(Op::put("/w/2", "b")),
        )
        .await
        .unwrap();
    store
        .txn(Txn::new().then(Op::put("/elsewhere", "x")))
        .await
        .unwrap();
    let del = store
        .txn(Txn::new().then(Op::delete("/w/1")))
        .await
        .unwrap();

    let b1 = expect_batch(&mut watch).await;
    assert_eq!(b1.revision, first.revision);
    assert_eq!(b1.events.len(), 2, "one batch per transaction: {b1:?}");
    assert!(matches!(&b1.events[0], Event::Put(kv) if kv.key == "/w/1" && kv.value == "a"));
    assert!(matches!(&b1.events[1], Event::Put(kv) if kv.key == "/w/2"));
    let b2 = expect_batch(&mut watch).await;
    assert_eq!(
        b2.revision, del.revision,
        "events outside the prefix are not delivered"
    );
    assert_eq!(
        b2.events,
        vec![Event::Delete {
            key: "/w/1".into(),
            mod_revision: del.revision
        }]
    );

    // A watch from an old revision replays history.
    let mut replay = store.watch("/w/", start).await.unwrap();
    assert_eq!(expect_batch(&mut replay).await.revision, first.revision);
    assert_eq!(expect_batch(&mut replay).await.revision, del.revision);

    // Many writes, one watcher: nothing lost, strictly increasing.
    let base = store.revision().await.unwrap();
    let mut all = store.watch("/w/many/", base).await.unwrap();
    for i in 0..200 {
        store
            .txn(Txn::new().then(Op::put(format!("/w/many/{i:04}"), "v")))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    while seen.len() < 200 {
        let batch = expect_batch(&mut all).await;
        for e in batch.events {
            seen.push((e.revision(), e.key().to_owned()));
        }
    }
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0));
    let expected: Vec<String> = (0..200).map(|i| format!("/w/many/{i:04}")).collect();
    assert_eq!(seen.into_iter().map(|s| s.1).collect::<Vec<_>>(), expected);
}

async fn compaction_tells_watcher_to_relist(store: Arc<dyn Store>) {
    let start = store.revision().await.unwrap();
    for i in 0..5 {
        store
            .txn(Txn::new().then(Op::put(format!("/c/{i}"), "v")))
            .await
            .unwrap();
    }
    let now = store.revision().await.unwrap();
    store.compact(now - 1).await.unwrap();
    let outcome = match store.watch("/c/", start).await {
        Err(e) => Err(e),
        Ok(mut stream) => tokio::time::timeout(Duration::from_secs(10), stream.recv())
            .await
            .expect("no answer from a compacted watch")
            .expect("stream ended without a signal"),
    };
    match outcome {
        Err(StoreError::Compacted { .. }) => {}
        other => panic!("expected a Compacted signal, got {other:?}"),
    }
    // Watching from the compaction point still works.
    let mut ok = store.watch("/c/", now - 1).await.unwrap();
    let batch = expect_batch(&mut ok).await;
    assert_eq!(batch.revision, now);
}

async fn concurrent_cas_never_double_allocates(store: Arc<dyn Store>) {
    // 16 tasks race to claim 8 slots with compare-absent; each slot is won exactly once.
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            for slot in 0..8 {
                let key = format!("/slots/{slot}");
                let r = store
                    .txn(
                        Txn::new()
                            .when(Compare::absent(&key))
                            .then(Op::put(&key, format!("{worker}"))),
                    )
                    .await
                    .unwrap();
                if r.succeeded {
                    won.push(slot);
                }
            }
            won
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        winners.extend(t.await.unwrap());
    }
    winners.sort();
    assert_eq!(winners, (0..8).collect::<Vec<_>>());
    let revisions: HashSet<u64> = store
        .range("/slots/")
        .await
        .unwrap()
        .kvs
        .iter()
        .map(|kv| kv.mod_revision)
        .collect();
    assert_eq!(
        revisions.len(),
        8,
        "every successful write has its own revision"
    );
}

async fn leases_end_their_keys_and_renewals_cost_no_revision(store: Arc<dyn Store>) {
    let lease = store.grant_lease(Duration::from_secs(1)).await.unwrap();
    let ttl = store
        .lease_ttl(lease)
        .await
        .unwrap()
        .expect("a granted lease");
    assert!(ttl.granted >= Duration::from_secs(1), "{ttl:?}");
    let start = store.revision().await.unwrap();
    let mut events = store.watch("/lease/", start).await.unwrap();
    store
        .txn(Txn::new().then(Op::put_leased("/lease/beat", "n1", lease)))
        .await
        .unwrap();
    expect_batch(&mut events).await;
    let written = store.revision().await.unwrap();
    // Renewed for three times its time to live: the key stays, and no renewal is a write.
    let until = tokio::time::Instant::now() + ttl.granted * 3;
    while tokio::time::Instant::now() < until {
        assert!(store.keep_alive(lease).await.unwrap());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(store.get("/lease/beat").await.unwrap().is_some());
    assert_eq!(store.revision().await.unwrap(), written);
    // Left alone, it ends: the key goes with a delete event.
    let ended = tokio::time::timeout(ttl.granted + Duration::from_secs(8), events.recv())
        .await
        .expect("the key outlived its lease")
        .unwrap()
        .unwrap();
    assert!(matches!(&ended.events[..], [Event::Delete { key, .. }] if key == "/lease/beat"));
    assert!(!store.keep_alive(lease).await.unwrap());
    assert!(store.lease_ttl(lease).await.unwrap().is_none());
    let late = store
        .txn(Txn::new().then(Op::put_leased("/lease/late", "x", lease)))
        .await;
    assert!(
        matches!(late, Err(StoreError::LeaseNotFound(l)) if l == lease),
        "{late:?}"
    );
    assert!(store.get("/lease/late").await.unwrap().is_none());

    // Revoked, a lease's keys go at once, in one revision; a plain put detaches a key.
    let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
    store
        .txn(
            Txn::new()
                .then(Op::put_leased("/lease/a", "1", lease))
                .then(Op::put_leased("/lease/b", "2", lease))
                .then(Op::put_leased("/lease/c", "3", lease)),
        )
        .await
        .unwrap();
    store
        .txn(Txn::new().then(Op::put("/lease/c", "kept")))
        .await
        .unwrap();
    let before = store.revision().await.unwrap();
    store.revoke_lease(lease).await.unwrap();
    assert!(store.get("/lease/a").await.unwrap().is_none());
    assert!(store.get("/lease/b").await.unwrap().is_none());
    assert_eq!(store.get("/lease/c").await.unwrap().unwrap().value, "kept");
    assert_eq!(store.revision().await.unwrap(), before + 1);
    assert!(store.lease_ttl(lease).await.unwrap().is_none());
    // Revoking twice is no error.
    store.revoke_lease(lease).await.unwrap();
}

async fn run_suite(make: impl Fn() -> Arc<dyn Store>) {
    leases_end_their_keys_and_renewals_cost_no_revision(make()).await;
    basic_get_put_range(make()).await;
    watch_delivers_every_event_in_order(make()).await;
    compaction_tells_watcher_to_relist(make()).await;
    concurrent_cas_never_double_allocates(make()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_backend_conforms() {
    run_suite(|| Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_backend_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let counter = std::sync::atomic::AtomicUsize::new(0);
    run_suite(|| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Arc::new(EmbeddedStore::open(&dir.path().join(format!("s{n}.redb"))).unwrap())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_backend_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let (revision, kv) = {
        let store = EmbeddedStore::open(&path).unwrap();
        let lease = store.grant_lease(Duration::from_secs(2)).await.unwrap();
        store
            .txn(Txn::new().then(Op::put_leased("/beat/n1", "x", lease)))
            .await
            .unwrap();
        for i in 0..10 {
            store
                .txn(Txn::new().then(Op::put(format!("/k/{i}"), format!("v{i}"))))
                .await
                .unwrap();
        }
        store
            .txn(Txn::new().then(Op::delete("/k/3")))
            .await
            .unwrap();
        (
            store.revision().await.unwrap(),
            store.get("/k/5").await.unwrap().unwrap(),
        )
    };
    let store = EmbeddedStore::open(&path).unwrap();
    assert_eq!(store.revision().await.unwrap(), revision);
    assert_eq!(store.get("/k/5").await.unwrap().unwrap(), kv);
    // A leased key lives on for its lease's whole time to live after the reopen, then goes.
    assert!(store.get("/beat/n1").await.unwrap().is_some());
    let mut gone = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if store.get("/beat/n1").await.unwrap().is_none() {
            gone = true;
            break;
        }
    }
    assert!(gone, "a leased key outlived its lease after a reopen");
    let revision = store.revision().await.unwrap();
    assert!(store.get("/k/3").await.unwrap().is_none());
    assert_eq!(store.range("/k/").await.unwrap().kvs.len(), 9);
    // History before the reopen is gone: such a watcher must re-list.
    assert!(matches!(
        store.watch("/k/", 1).await,
        Err(StoreError::Compacted { .. })
    ));
    let next = store
        .txn(Txn::new().then(Op::put("/k/new", "x")))
        .await
        .unwrap();
    assert_eq!(
        next.revision,
        revision + 1,
        "revisions continue after reopen"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_backend_conforms() {
    let Some(server) = EtcdServer::start_or_skip() else {
        return;
    };
    let endpoints = vec![server.endpoint.clone()];
    let mut stores = Vec::new();
    for i in 0..5 {
        stores.push(Arc::new(
            EtcdStore::connect(&endpoints, &format!("/suite{i}"))
                .await
                .unwrap(),
        ) as Arc<dyn Store>);
    }
    let stores = std::sync::Mutex::new(stores);
    run_suite(|| stores.lock().unwrap().remove(0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_takes_only_clients_with_a_certificate_of_its_ca() {
    use isthmus_store::etcd_server::TestPki;
    use isthmus_store::EtcdTls;
    let pki = TestPki::generate().unwrap();
    let Some(server) = EtcdServer::start_tls_or_skip(&pki) else {
        return;
    };
    assert!(server.endpoint.starts_with("https://"));
    let endpoints = vec![server.endpoint.clone()];
    let read = |name: &str| std::fs::read(pki.path(name)).unwrap();
    let tls = EtcdTls {
        ca: read("ca.pem"),
        identity: Some((read("client.pem"), read("client.key"))),
    };
    let store: Arc<dyn Store> = Arc::new(
        EtcdStore::connect_with(&endpoints, "/tls", Some(&tls))
            .await
            .unwrap(),
    );
    basic_get_put_range(store).await;

    // Without a client certificate, or without TLS, etcd takes nothing.
    let anonymous = EtcdTls {
        ca: read("ca.pem"),
        identity: None,
    };
    assert!(
        EtcdStore::connect_with(&endpoints, "/tls", Some(&anonymous))
            .await
            .is_err()
    );
    let plain = vec![server.endpoint.replace("https://", "http://")];
    assert!(EtcdStore::connect(&plain, "/tls").await.is_err());
}
