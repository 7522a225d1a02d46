//! `kill -9` of the controller during a create storm loses no port that got a 201
//! (embedded store and etcd).

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use isthmus_store::etcd_server::EtcdServer;
use serde_json::json;
use support::{free_port, try_http, Controller};

/// Storms port creates, kills the controller mid-storm, restarts it with the same store, and
/// checks every acknowledged port.
fn storm_kill_restart(args: &[&str]) {
    let port = free_port();
    let controller = Controller::start(port, args);
    let (s, net) = controller.http(
        "POST",
        "/v2.0/networks",
        Some(&json!({"network": {"name": "storm"}})),
    );
    assert_eq!(s, 201);
    let net_id = net["network"]["id"].as_str().unwrap().to_owned();
    let (s, _) = controller.http(
        "POST",
        "/v2.0/subnets",
        Some(&json!({"subnet": {"network_id": net_id, "ip_version": 4, "cidr": "10.77.0.0/16"}})),
    );
    assert_eq!(s, 201);

    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (acknowledged, stop, net_id) = (acknowledged.clone(), stop.clone(), net_id.clone());
        workers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match try_http(
                    port,
                    "POST",
                    "/v2.0/ports",
                    Some(&json!({"port": {"network_id": net_id}})),
                ) {
                    Ok((201, v)) => acknowledged.lock().unwrap().push(v["port"].clone()),
                    Ok((status, v)) => panic!("unexpected {status}: {v}"),
                    // The controller died under us: that request was never acknowledged.
                    Err(_) => return,
                }
            }
        }));
    }
    // Let a few hundred creates land, then kill without warning.
    while acknowledged.lock().unwrap().len() < 300 {
        std::thread::sleep(Duration::from_millis(5));
    }
    controller.kill9();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= 300);

    let restarted = Controller::start(port, args);
    for port in &acknowledged {
        let id = port["id"].as_str().unwrap();
        let (s, v) = restarted.http("GET", &format!("/v2.0/ports/{id}"), None);
        assert_eq!(s, 200, "port {id} acknowledged before the kill is gone");
        assert_eq!(
            v["port"]["fixed_ips"], port["fixed_ips"],
            "port {id} changed address"
        );
        assert_eq!(
            v["port"]["mac_address"], port["mac_address"],
            "port {id} changed MAC"
        );
    }
    // And the store is consistent: listing shows no duplicate address.
    let (_, listed) = restarted.http("GET", &format!("/v2.0/ports?network_id={net_id}"), None);
    let mut ips: Vec<String> = listed["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["fixed_ips"][0]["ip_address"].as_str().unwrap().to_owned())
        .collect();
    let n = ips.len();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), n, "duplicate addresses after restart");
    eprintln!(
        "{} acknowledged ports all present after kill -9 ({n} in store)",
        acknowledged.len()
    );
}

#[test]
fn kill9_during_create_storm_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_owned();
    storm_kill_restart(&["--data-dir", &data]);
}

#[test]
fn kill9_during_create_storm_etcd() {
    let Some(etcd) = EtcdServer::start_or_skip() else {
        return;
    };
    storm_kill_restart(&["--store", "etcd", "--etcd-endpoints", &etcd.endpoint]);
}
