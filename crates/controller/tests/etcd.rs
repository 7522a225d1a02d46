//! Two controllers on one real etcd never hand out one address twice.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::{Api, As, Watch};
use isthmus_store::etcd_server::EtcdServer;
use isthmus_store::EtcdStore;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_controllers_one_etcd_no_duplicate_addresses() {
    let Some(etcd) = EtcdServer::start_or_skip() else {
        return;
    };
    let endpoints = vec![etcd.endpoint.clone()];
    let first = Api::on(Arc::new(
        EtcdStore::connect(&endpoints, "/dup").await.unwrap(),
    ));
    let second = Api::on(Arc::new(
        EtcdStore::connect(&endpoints, "/dup").await.unwrap(),
    ));
    let (net, _) = first
        .network_with_subnet(As::Anonymous, "10.50.0.0/20")
        .await;
    // More ports than Neutron's default quota of 500: the operator raises it.
    let (s, _) = first
        .call(
            As::Anonymous,
            "PUT",
            "/v2.0/quotas/fake_project_id",
            Some(json!({"quota": {"port": 2000}})),
        )
        .await;
    assert_eq!(s, 200);

    // 1000 creates, split across both controllers, 16 in flight on each.
    let mut tasks = Vec::new();
    for worker in 0..32 {
        let api = if worker % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        let net = net.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..(1000 / 32 + usize::from(worker < 1000 % 32)) {
                let (status, v) = api
                    .call(
                        As::Anonymous,
                        "POST",
                        "/v2.0/ports",
                        Some(json!({"port": {"network_id": net}})),
                    )
                    .await;
                assert_eq!(status, 201, "{v}");
                got.push((
                    v["port"]["fixed_ips"][0]["ip_address"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                    v["port"]["mac_address"].as_str().unwrap().to_owned(),
                ));
            }
            got
        }));
    }
    let mut ips = HashSet::new();
    let mut macs = HashSet::new();
    let mut total = 0;
    for t in tasks {
        for (ip, mac) in t.await.unwrap() {
            total += 1;
            assert!(ips.insert(ip.clone()), "address {ip} handed out twice");
            assert!(macs.insert(mac.clone()), "MAC {mac} handed out twice");
        }
    }
    assert_eq!(total, 1000);
    // Both controllers see the same 1000 ports.
    let (_, listed) = second
        .call(
            As::Anonymous,
            "GET",
            &format!("/v2.0/ports?network_id={net}&fields=fixed_ips&fields=device_owner"),
            None,
        )
        .await;
    let listed: HashSet<String> = listed["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["device_owner"] != "network:dhcp")
        .map(|p| p["fixed_ips"][0]["ip_address"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, ips);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_watch_over_etcd() {
    let Some(etcd) = EtcdServer::start_or_skip() else {
        return;
    };
    let endpoints = vec![etcd.endpoint.clone()];
    let api = Api::on(Arc::new(
        EtcdStore::connect(&endpoints, "/watch").await.unwrap(),
    ));
    let (s, _) = api
        .call(
            As::Anonymous,
            "POST",
            "/isthmus/v1/nodes",
            Some(json!({"node": {"name": "n1", "tunnel_ip": "10.0.0.1"}})),
        )
        .await;
    assert_eq!(s, 201);
    let mut w = Watch::open(&api, "node=n1").await;
    let snapshot = w.snapshot().await;
    assert_eq!(snapshot.len(), 1, "only the node itself: {snapshot:?}");
    let (net, _) = api.network_with_subnet(As::Anonymous, "10.60.0.0/24").await;
    let port = api
        .create(
            As::Anonymous,
            "ports",
            "port",
            json!({"network_id": net, "binding:host_id": "n1"}),
        )
        .await;
    let line = w
        .until(|l| l["kind"] == "port" && l["object"]["id"] == port["id"])
        .await;
    assert_eq!(line["type"], "ADDED");
    // A compacted resume point is answered with RELIST (etcd reports it on the stream).
    let revision = line["revision"].as_u64().unwrap();
    api.store.compact(revision).await.unwrap();
    let mut stale = Watch::open(&api, "node=n1&from=1").await;
    assert_eq!(stale.next().await["type"], "RELIST");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_compacts_etcds_history() {
    let Some(etcd) = EtcdServer::start_or_skip() else {
        return;
    };
    let store: isthmus_store::SharedStore = Arc::new(
        EtcdStore::connect(std::slice::from_ref(&etcd.endpoint), "/compact")
            .await
            .unwrap(),
    );
    let api = Api::on(store.clone());
    for i in 0..20 {
        api.create(
            As::Anonymous,
            "networks",
            "network",
            json!({ "name": format!("n{i}") }),
        )
        .await;
    }
    let service = isthmus_controller::Service::new(store.clone(), Default::default());
    let now = store.revision().await.unwrap();
    assert_eq!(service.compact_history(5).await.unwrap(), Some(now - 5));
    // Asked again with nothing new, it does nothing (etcd would refuse a compacted revision).
    assert_eq!(service.compact_history(5).await.unwrap(), None);
    // A watch from before the compaction is told to re-list; one from after works.
    let mut old = store.watch("/", 1).await.unwrap();
    assert!(matches!(
        old.recv().await,
        Some(Err(isthmus_store::StoreError::Compacted { .. }))
    ));
    let (s, _) = api.call(As::Anonymous, "GET", "/v2.0/networks", None).await;
    assert_eq!(s, 200);
    assert_eq!(
        service.compact_history(1_000).await.unwrap(),
        None,
        "too little history"
    );
}
