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

/// Starts `requests` one after the other on a few threads until the controller dies; returns
/// what each acknowledged (201/200) request answered.
fn until_killed(
    port: u16,
    requests: Vec<(String, String, serde_json::Value)>,
    kill_after: usize,
    controller: Controller,
) -> Vec<(usize, serde_json::Value)> {
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let requests = Arc::new(Mutex::new(requests.into_iter().enumerate()));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (acknowledged, requests) = (acknowledged.clone(), requests.clone());
            std::thread::spawn(move || loop {
                let Some((i, (method, path, body))) = requests.lock().unwrap().next() else {
                    return;
                };
                match try_http(port, &method, &path, Some(&body)) {
                    Ok((200 | 201, v)) => acknowledged.lock().unwrap().push((i, v)),
                    Ok((status, v)) => panic!("unexpected {status}: {v}"),
                    Err(_) => return,
                }
            })
        })
        .collect();
    while acknowledged.lock().unwrap().len() < kill_after {
        std::thread::sleep(Duration::from_millis(2));
    }
    controller.kill9();
    for w in workers {
        w.join().unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    acknowledged
}

#[test]
fn kill9_during_router_interface_adds_and_bulk_creates_leaves_no_orphan() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_owned();
    let args = ["--data-dir", data.as_str()];
    let port = free_port();
    let controller = Controller::start(port, &args);
    let created = |c: &Controller, path: &str, body: serde_json::Value, kind: &str| {
        let (s, v) = c.http("POST", path, Some(&body));
        assert_eq!(s, 201, "{v}");
        v[kind]["id"].as_str().unwrap().to_owned()
    };
    let router = created(
        &controller,
        "/v2.0/routers",
        json!({"router": {"name": "r"}}),
        "router",
    );
    let subnets: Vec<String> = (0..60)
        .map(|i| {
            let net = created(
                &controller,
                "/v2.0/networks",
                json!({"network": {"name": format!("n{i}")}}),
                "network",
            );
            created(
                &controller,
                "/v2.0/subnets",
                json!({"subnet": {"network_id": net, "ip_version": 4,
                                  "cidr": format!("10.80.{i}.0/24")}}),
                "subnet",
            )
        })
        .collect();
    let adds = subnets
        .iter()
        .map(|s| {
            (
                "PUT".to_owned(),
                format!("/v2.0/routers/{router}/add_router_interface"),
                json!({"subnet_id": s}),
            )
        })
        .collect();
    let acknowledged = until_killed(port, adds, 10, controller);

    // Every interface port belongs to an interface of the router: removing its subnet works,
    // and then no interface port is left (an orphan would stay, or answer 404).
    let restarted = Controller::start(port, &args);
    let (_, ports) = restarted.http(
        "GET",
        &format!(
            "/v2.0/ports?device_owner=network:router_interface_distributed&device_id={router}"
        ),
        None,
    );
    let ports = ports["ports"].as_array().unwrap().clone();
    assert!(
        ports.len() >= acknowledged.len(),
        "acknowledged interfaces are there"
    );
    for p in &ports {
        let subnet = p["fixed_ips"][0]["subnet_id"].as_str().unwrap();
        let (s, v) = restarted.http(
            "PUT",
            &format!("/v2.0/routers/{router}/remove_router_interface"),
            Some(&json!({ "subnet_id": subnet })),
        );
        assert_eq!(s, 200, "interface port {} is an orphan: {v}", p["id"]);
    }
    let (_, left) = restarted.http(
        "GET",
        "/v2.0/ports?device_owner=network:router_interface_distributed",
        None,
    );
    assert_eq!(left["ports"], json!([]), "no interface port is left");

    // Bulk creates of 20 ports: each lands whole or not at all.
    let (s, _) = restarted.http(
        "PUT",
        "/v2.0/quotas/fake_project_id",
        Some(&json!({"quota": {"port": 100_000}})),
    );
    assert_eq!(s, 200);
    let net = created(
        &restarted,
        "/v2.0/networks",
        json!({"network": {"name": "bulk"}}),
        "network",
    );
    created(
        &restarted,
        "/v2.0/subnets",
        json!({"subnet": {"network_id": net, "ip_version": 4, "cidr": "10.81.0.0/16"}}),
        "subnet",
    );
    let bulks = (0..200)
        .map(|b| {
            let ports: Vec<_> = (0..20)
                .map(|i| json!({"network_id": net, "name": format!("b{b}-{i}")}))
                .collect();
            (
                "POST".to_owned(),
                "/v2.0/ports".to_owned(),
                json!({ "ports": ports }),
            )
        })
        .collect();
    let acknowledged = until_killed(port, bulks, 20, restarted);
    let restarted = Controller::start(port, &args);
    let (_, listed) = restarted.http("GET", &format!("/v2.0/ports?network_id={net}"), None);
    let mut per_bulk = std::collections::BTreeMap::<String, usize>::new();
    for p in listed["ports"].as_array().unwrap() {
        let bulk = p["name"].as_str().unwrap().split_once('-').map(|(b, _)| b);
        if let Some(bulk) = bulk.filter(|b| {
            b.strip_prefix('b')
                .is_some_and(|n| n.parse::<u32>().is_ok())
        }) {
            *per_bulk.entry(bulk.to_owned()).or_default() += 1;
        }
    }
    for (bulk, n) in &per_bulk {
        assert_eq!(*n, 20, "bulk {bulk} landed in part: {n} of 20 ports");
    }
    for (i, _) in &acknowledged {
        assert!(
            per_bulk.contains_key(&format!("b{i}")),
            "acknowledged bulk b{i} is gone"
        );
    }
    eprintln!(
        "{} bulks acknowledged, {} in the store, none in part",
        acknowledged.len(),
        per_bulk.len()
    );
}
