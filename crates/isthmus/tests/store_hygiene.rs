//! Heartbeats do not grow the store: 100 nodes beat through the API into a real etcd for the
//! equivalent of a day at the default 10 s interval (8,640 beats each, 864,000 beats).
//! A beat renews the node's lease and writes nothing, so etcd's revision does not move; and
//! with the controller's compaction (here every second, keeping 10,000 revisions) the space
//! etcd uses stays flat. (`ISTHMUS_HYGIENE_BEATS=N` beats N times instead, for a quicker look.)

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use isthmus_store::etcd_server::EtcdServer;
use serde_json::json;
use support::{free_port, Controller};

const NODES: usize = 100;
/// Beats per node: a day at 10 s, unless `ISTHMUS_HYGIENE_BEATS` says otherwise.
fn beats() -> usize {
    std::env::var("ISTHMUS_HYGIENE_BEATS")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(8_640)
}
const CLIENTS: usize = 8;

/// Sends `beats` heartbeats for each of `nodes` over one kept-alive connection.
fn beat(port: u16, nodes: &[usize], beats: usize) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut buf = [0u8; 4096];
    for _ in 0..beats {
        for n in nodes {
            write!(
                stream,
                "PUT /isthmus/v1/nodes/n{n}/heartbeat HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
            )
            .unwrap();
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let read = stream.read(&mut buf).unwrap();
                assert!(read > 0, "the controller closed the connection");
                head.extend_from_slice(&buf[..read]);
            }
            assert!(
                head.starts_with(b"HTTP/1.1 204"),
                "{}",
                String::from_utf8_lossy(&head)
            );
        }
    }
}

/// A gauge of etcd's `/metrics`.
fn metric(endpoint: &str, name: &str) -> f64 {
    let authority = endpoint.trim_start_matches("http://");
    let mut stream = TcpStream::connect(authority).unwrap();
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("etcd reports no {name}"))
}

/// Bytes of its database etcd uses.
fn in_use(endpoint: &str) -> f64 {
    metric(endpoint, "etcd_mvcc_db_total_size_in_use_in_bytes")
}

/// etcd's revision.
fn revision(endpoint: &str) -> f64 {
    metric(endpoint, "etcd_debugging_mvcc_current_revision")
}

#[test]
fn heartbeats_of_100_nodes_for_a_day_leave_the_store_flat() {
    // The volume of writes is what matters here, not their durability.
    let Some(etcd) = EtcdServer::start_or_skip_with(&["--unsafe-no-fsync"]) else {
        return;
    };
    let port = free_port();
    let controller = Controller::start(
        port,
        &[
            "--store",
            "etcd",
            "--etcd-endpoints",
            &etcd.endpoint,
            "--compact-every-seconds",
            "1",
            "--history-kept",
            "10000",
        ],
    );
    for n in 0..NODES {
        let node = json!({"node": {"name": format!("n{n}"), "tunnel_ip": format!("10.9.{}.{}", n / 200, n % 200 + 1)}});
        assert_eq!(
            controller.http("POST", "/isthmus/v1/nodes", Some(&node)).0,
            201
        );
    }
    let beats = beats();
    let started = Instant::now();
    let before = revision(&etcd.endpoint);
    let mut sizes = Vec::new();
    for quarter in 0..4 {
        std::thread::scope(|scope| {
            for c in 0..CLIENTS {
                let nodes: Vec<usize> = (c..NODES).step_by(CLIENTS).collect();
                scope.spawn(move || beat(port, &nodes, beats / 4));
            }
        });
        // A compaction runs every second.
        std::thread::sleep(Duration::from_millis(2500));
        let size = in_use(&etcd.endpoint);
        eprintln!(
            "after {} of the beats ({:?}): etcd uses {:.1} MB",
            ["a quarter", "half", "three quarters", "all"][quarter],
            started.elapsed(),
            size / 1e6
        );
        sizes.push(size);
    }
    let after = revision(&etcd.endpoint);
    eprintln!(
        "{} beats moved etcd's revision by {}",
        NODES * beats,
        after - before
    );
    assert_eq!(after, before, "a heartbeat wrote to the store");
    let first = sizes[0];
    for (quarter, size) in sizes.iter().enumerate().skip(1) {
        assert!(
            *size <= first * 1.25 + 1e6,
            "the store grew from {first} to {size} bytes by quarter {}",
            quarter + 1
        );
    }
}
