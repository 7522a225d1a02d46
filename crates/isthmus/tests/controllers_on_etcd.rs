//! Controllers on an etcd that speaks only TLS and wants client certificates: they serve the
//! API through it; one of them leads (runs the sweeps, compaction and gateway failover) and
//! hands the lead over at once when stopped, or loses it with its lease when killed; a
//! controller without a client certificate refuses to start with a clear message.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use isthmus_store::etcd_server::{EtcdServer, TestPki};
use isthmus_store::{EtcdStore, EtcdTls, Store};
use serde_json::json;
use support::{free_port, Controller};

fn tls_args<'a>(pki: &'a [String; 3], endpoint: &'a str) -> Vec<&'a str> {
    vec![
        "--store",
        "etcd",
        "--etcd-endpoints",
        endpoint,
        "--etcd-cacert",
        &pki[0],
        "--etcd-cert",
        &pki[1],
        "--etcd-key",
        &pki[2],
        "--leader-lease-seconds",
        "2",
    ]
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// The pid in the leader key's value (`host:pid:nonce`), if any controller leads.
async fn leader_pid(store: &EtcdStore) -> Option<u32> {
    let kv = store.get("/isthmus/leader").await.unwrap()?;
    let value = String::from_utf8(kv.value.to_vec()).unwrap();
    value.split(':').nth(1)?.parse().ok()
}

async fn until_leader(store: &EtcdStore, not: Option<u32>, within: Duration) -> (u32, Duration) {
    let start = Instant::now();
    loop {
        if let Some(pid) = leader_pid(store).await.filter(|p| Some(*p) != not) {
            return (pid, start.elapsed());
        }
        assert!(start.elapsed() < within, "no new leader within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controllers_share_a_tls_etcd_and_one_leads_at_a_time() {
    let pki = TestPki::generate().unwrap();
    let Some(etcd) = EtcdServer::start_tls_or_skip(&pki) else {
        return;
    };
    let files = [
        path(&pki.path("ca.pem")),
        path(&pki.path("client.pem")),
        path(&pki.path("client.key")),
    ];
    let args = tls_args(&files, &etcd.endpoint);

    // No client certificate: the controller exits at once, saying why.
    let refused = Command::new(env!("CARGO_BIN_EXE_isthmus"))
        .args([
            "controller",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .args(&args[..6])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("connecting to etcd at https://"), "{said}");

    let one = Controller::start(free_port(), &args);
    let two = Controller::start(free_port(), &args);
    let network = json!({"network": {"name": "over-tls"}});
    let (status, body) = one.http("POST", "/v2.0/networks", Some(&network));
    assert_eq!(status, 201, "{body}");
    let id = body["network"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        two.http("GET", &format!("/v2.0/networks/{id}"), None).0,
        200
    );

    let read = |name: &str| std::fs::read(pki.path(name)).unwrap();
    let tls = EtcdTls {
        ca: read("ca.pem"),
        identity: Some((read("client.pem"), read("client.key"))),
    };
    let store = EtcdStore::connect_with(std::slice::from_ref(&etcd.endpoint), "", Some(&tls))
        .await
        .unwrap();
    let (leader, _) = until_leader(&store, None, Duration::from_secs(10)).await;
    let pids = [one.child.id(), two.child.id()];
    assert!(
        pids.contains(&leader),
        "leader {leader} is not one of {pids:?}"
    );
    // The lead stays put while its holder lives.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(leader_pid(&store).await, Some(leader));

    // SIGTERM: the lead is handed over at once, not after the lease's 2 s.
    let (mut leading, other) = if one.child.id() == leader {
        (one, two)
    } else {
        (two, one)
    };
    let term = Command::new("kill")
        .args(["-TERM", &leader.to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let (next, took) = until_leader(&store, Some(leader), Duration::from_secs(5)).await;
    assert_eq!(next, other.child.id());
    eprintln!("lead handed over {took:?} after SIGTERM");
    assert!(took < Duration::from_millis(1900), "handover took {took:?}");
    let _ = leading.child.wait();

    // kill -9: the lead comes back once its lease (2 s) has ended.
    let third = Controller::start(free_port(), &args);
    let killed = other.child.id();
    other.kill9();
    let (next, took) = until_leader(&store, Some(killed), Duration::from_secs(10)).await;
    assert_eq!(next, third.child.id());
    eprintln!("lead taken over {took:?} after kill -9");
    assert_eq!(
        third.http("GET", &format!("/v2.0/networks/{id}"), None).0,
        200
    );
}
