//! Watch fan-out: what a change costs the controller as the number of node watches grows.
//!
//! One controller (embedded store, default settings, security groups on) with N simulated
//! agents (watch streams from this process), each a node with a port on a shared network and
//! the default group, and one more node whose port is on a target network under a group of
//! its own. Ports are then created one at a time on the target network: only that node cares.
//! Reported per N: controller CPU per create (from /proc), delivery to the interested stream
//! (request sent → its ADDED line read) p50/p99, and the lines the N others received.
//! With `--bulk TOTAL`: TOTAL ports created 1,000 per request into the target network, with
//! and without its node watching; total time and controller RSS after (at once and 2 s later).
//!
//! `--bulk-watchers N` adds N more nodes watching, which do not see the target network (their
//! ports are in a group of their own, so the bulk's are not even remote-group members).
//!
//! `cargo bench -p isthmus --bench watch_fanout -- [N...] [--ports P] [--rounds R]
//!  [--bulk TOTAL [--bulk-watchers N]] [--baseline BIN]` (default N = 10 500, P = 200, R = 3).
//! `--baseline` runs another isthmus binary (e.g. an older build) side by side, interleaved.

use std::collections::HashMap;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use isthmus_agent::Endpoint;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

#[allow(dead_code)]
mod support;

use support::{median, Killed};

struct Controller {
    process: Killed,
    api: Endpoint,
    authority: String,
    _data: tempfile::TempDir,
}

impl Controller {
    async fn start(bin: &str) -> Controller {
        let data = tempfile::tempdir().expect("data directory");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let process = Killed(
            Command::new(bin)
                .args(["controller", "--listen", &format!("127.0.0.1:{port}")])
                .arg("--data-dir")
                .arg(data.path())
                .args(["--auth", "noauth"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("controller"),
        );
        let api = Endpoint::parse(&format!("http://127.0.0.1:{port}")).expect("endpoint");
        for _ in 0..400 {
            if matches!(api.request("GET", "/healthz", None).await, Ok((200, _))) {
                return Controller {
                    process,
                    api,
                    authority: format!("127.0.0.1:{port}"),
                    _data: data,
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{bin} controller did not answer within 20 s");
    }

    /// An API call as the operator (noauth's admin), on a connection of its own.
    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let payload = body.to_string();
        let mut stream = TcpStream::connect(&self.authority).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{payload}",
            self.authority,
            payload.len()
        );
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("answer");
        let text = String::from_utf8_lossy(&raw);
        let status: u16 = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let answer = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {answer}"
        );
        serde_json::from_str(answer).unwrap_or(Value::Null)
    }

    /// Raises the port quota (Neutron's default is 500).
    async fn raise_quota(&self) {
        self.call(
            "PUT",
            "/v2.0/quotas/fake_project_id",
            json!({"quota": {"port": 1_000_000}}),
        )
        .await;
    }

    /// CPU time (user + system) the controller used so far, in milliseconds.
    fn cpu_ms(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.process.0.id()))
            .expect("controller stat");
        // Fields after the command name (which may hold spaces): utime is the 14th field.
        let rest = &stat[stat.rfind(')').expect("stat") + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        // Linux reports these in USER_HZ, which is 100 on every architecture it runs on.
        ticks * 10.0
    }

    fn rss_mb(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.0.id()))
            .expect("controller status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    }

    async fn network(&self, name: &str, cidr: &str) -> String {
        let net = self
            .call("POST", "/v2.0/networks", json!({"network": {"name": name}}))
            .await;
        let id = net["network"]["id"].as_str().unwrap().to_owned();
        self.call(
            "POST",
            "/v2.0/subnets",
            json!({"subnet": {"network_id": id, "ip_version": 4, "cidr": cidr}}),
        )
        .await;
        id
    }

    /// Nodes `w0`..`w{n-1}`, each with a port on `network` (in `group`, or the default one).
    async fn nodes_on(&self, network: &str, group: Option<&str>, n: usize) {
        for i in 0..n {
            self.node(&format!("w{i}"), i).await;
        }
        for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
            let batch: Vec<Value> = chunk
                .iter()
                .map(|i| {
                    let mut port =
                        json!({"network_id": network, "binding:host_id": format!("w{i}")});
                    if let Some(group) = group {
                        port["security_groups"] = json!([group]);
                    }
                    port
                })
                .collect();
            self.call("POST", "/v2.0/ports", json!({ "ports": batch }))
                .await;
        }
    }

    /// Simulated agents of nodes `w0`..`w{n-1}`; counts the lines they read.
    async fn watch_nodes(&self, n: usize) -> Arc<Mutex<u64>> {
        let lines = Arc::new(Mutex::new(0u64));
        for i in 0..n {
            watch(&self.api, &format!("w{i}"), lines.clone(), None).await;
        }
        lines
    }

    /// A new security group (Neutron's: egress rules only, no remote group).
    async fn group(&self, name: &str) -> String {
        self.call(
            "POST",
            "/v2.0/security-groups",
            json!({"security_group": {"name": name}}),
        )
        .await["security_group"]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn node(&self, name: &str, index: usize) {
        let ip = format!("10.255.{}.{}", index / 250, index % 250 + 1);
        self.call(
            "POST",
            "/isthmus/v1/nodes",
            json!({"node": {"name": name, "tunnel_ip": ip}}),
        )
        .await;
    }
}

/// A simulated agent: follows `node`'s watch; returns once its snapshot is complete. Counts
/// the change lines it reads after that and, if `arrivals` is given, reports each port added.
async fn watch(
    api: &Endpoint,
    node: &str,
    changes: Arc<Mutex<u64>>,
    arrivals: Option<mpsc::UnboundedSender<(String, Instant)>>,
) {
    let mut lines = api
        .stream(&format!("/isthmus/v1/watch?node={node}"))
        .await
        .expect("watch");
    loop {
        let line = lines
            .next()
            .await
            .expect("watch line")
            .expect("open stream");
        if line["type"] == "BOOKMARK" && line["synced"] == true {
            break;
        }
    }
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next().await {
            if line["type"] == "BOOKMARK" {
                continue;
            }
            *changes.lock().unwrap() += 1;
            if let (Some(tx), "ADDED", "port") = (
                &arrivals,
                line["type"].as_str().unwrap_or(""),
                line["kind"].as_str().unwrap_or(""),
            ) {
                let id = line["object"]["id"].as_str().unwrap_or_default().to_owned();
                let _ = tx.send((id, Instant::now()));
            }
        }
    });
}

struct Fanout {
    cpu_per_create_ms: f64,
    delivery_ms: Vec<f64>,
    others_lines: u64,
    rss_mb: f64,
}

async fn fanout_round(bin: &str, watchers: usize, ports: usize) -> Fanout {
    let c = Controller::start(bin).await;
    c.raise_quota().await;
    let shared = c.network("shared", "10.0.0.0/16").await;
    let target = c.network("target", "10.1.0.0/16").await;
    let group = c.group("target").await;
    c.nodes_on(&shared, None, watchers).await;
    c.node("interested", watchers).await;
    c.call(
        "POST",
        "/v2.0/ports",
        json!({"port": {"network_id": target, "binding:host_id": "interested",
                        "security_groups": [group]}}),
    )
    .await;
    let others = c.watch_nodes(watchers).await;
    let (tx, mut arrivals) = mpsc::unbounded_channel();
    watch(&c.api, "interested", Arc::new(Mutex::new(0)), Some(tx)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    *others.lock().unwrap() = 0;
    let cpu = c.cpu_ms();
    let mut delivery = Vec::new();
    let mut early: HashMap<String, Instant> = HashMap::new();
    for _ in 0..ports {
        let sent = Instant::now();
        let port = c
            .call(
                "POST",
                "/v2.0/ports",
                json!({"port": {"network_id": target, "security_groups": [group]}}),
            )
            .await;
        let id = port["port"]["id"].as_str().unwrap().to_owned();
        let arrived = loop {
            if let Some(at) = early.remove(&id) {
                break at;
            }
            let (got, at) = tokio::time::timeout(Duration::from_secs(30), arrivals.recv())
                .await
                .expect("port delivered within 30 s")
                .expect("interested stream open");
            if got == id {
                break at;
            }
            early.insert(got, at);
        };
        delivery.push(arrived.duration_since(sent).as_secs_f64() * 1000.0);
    }
    let cpu_per_create_ms = (c.cpu_ms() - cpu) / ports as f64;
    let others_lines = *others.lock().unwrap();
    Fanout {
        cpu_per_create_ms,
        delivery_ms: delivery,
        others_lines,
        rss_mb: c.rss_mb(),
    }
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Creates `total` ports, 1,000 per request, into a network `interested` watches (or not),
/// with `others` more nodes watching that do not see it; returns (seconds, controller RSS MB
/// at once after, and 2 s later: the allocator returns freed pages after a delay of its own).
async fn bulk_round(bin: &str, total: usize, watched: bool, others: usize) -> (f64, f64, f64) {
    let c = Controller::start(bin).await;
    c.raise_quota().await;
    let target = c.network("target", "10.0.0.0/12").await;
    if others > 0 {
        // In a group of their own: the bulk's ports (in the default group) are then in no
        // view of theirs, not even as remote-group members.
        let shared = c.network("shared", "10.16.0.0/16").await;
        let group = c.group("others").await;
        c.nodes_on(&shared, Some(&group), others).await;
    }
    let _others_lines = c.watch_nodes(others).await;
    c.node("interested", others).await;
    c.call(
        "POST",
        "/v2.0/ports",
        json!({"port": {"network_id": target, "binding:host_id": "interested"}}),
    )
    .await;
    let seen = Arc::new(Mutex::new(0u64));
    if watched {
        watch(&c.api, "interested", seen.clone(), None).await;
    }
    let start = Instant::now();
    for _ in 0..total.div_ceil(1000) {
        let batch: Vec<Value> = (0..1000).map(|_| json!({"network_id": target})).collect();
        c.call("POST", "/v2.0/ports", json!({ "ports": batch }))
            .await;
    }
    if watched {
        // Done when the watcher holds every port.
        while (*seen.lock().unwrap() as usize) < total {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let at_once = c.rss_mb();
    tokio::time::sleep(Duration::from_secs(2)).await;
    (seconds, at_once, c.rss_mb())
}

#[tokio::main]
async fn main() {
    let mut counts = Vec::new();
    let (mut ports, mut rounds, mut bulk, mut binaries) = (200, 3, 0, Vec::new());
    let mut bulk_watchers = 0;
    binaries.push(("this".to_owned(), env!("CARGO_BIN_EXE_isthmus").to_owned()));
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--ports" => ports = args.next().and_then(|v| v.parse().ok()).expect("--ports P"),
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--rounds R")
            }
            "--bulk-watchers" => {
                bulk_watchers = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--bulk-watchers N");
            }
            "--bulk" => {
                bulk = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--bulk TOTAL")
            }
            "--baseline" => {
                binaries.push(("baseline".into(), args.next().expect("--baseline BIN")))
            }
            "--bench" => {}
            n => {
                if let Ok(n) = n.parse::<usize>() {
                    counts.push(n)
                }
            }
        }
    }
    if counts.is_empty() && bulk == 0 {
        counts = vec![10, 500];
    }
    let mut results = Vec::new();
    for &n in &counts {
        let mut per: HashMap<String, Vec<Fanout>> = HashMap::new();
        for round in 0..rounds {
            for (name, bin) in &binaries {
                let r = fanout_round(bin, n, ports).await;
                println!(
                    "  {name} N={n} round {round}: {:.2} ms CPU/create, delivery p50 {:.1} ms p99 {:.1} ms, others got {} lines",
                    r.cpu_per_create_ms,
                    percentile(r.delivery_ms.clone(), 0.5),
                    percentile(r.delivery_ms.clone(), 0.99),
                    r.others_lines
                );
                per.entry(name.clone()).or_default().push(r);
            }
        }
        for (name, _) in &binaries {
            let rs = &per[name];
            let row = json!({
                "binary": name, "watchers": n, "ports": ports, "rounds": rounds,
                "cpu_ms_per_create": median(rs.iter().map(|r| r.cpu_per_create_ms).collect()),
                "delivery_p50_ms": median(rs.iter().map(|r| percentile(r.delivery_ms.clone(), 0.5)).collect()),
                "delivery_p99_ms": median(rs.iter().map(|r| percentile(r.delivery_ms.clone(), 0.99)).collect()),
                "lines_to_others": rs.iter().map(|r| r.others_lines).max(),
                "controller_rss_mb": median(rs.iter().map(|r| r.rss_mb).collect()),
            });
            println!("{row}");
            results.push(row);
        }
    }
    if bulk > 0 {
        for (name, bin) in &binaries {
            for watched in [false, true] {
                let (seconds, at_once, settled) =
                    bulk_round(bin, bulk, watched, bulk_watchers).await;
                let row = json!({"binary": name, "bulk_ports": bulk, "watched": watched,
                                 "other_watchers": bulk_watchers,
                                 "seconds": seconds, "controller_rss_mb": at_once,
                                 "controller_rss_mb_2s_later": settled});
                println!("{row}");
                results.push(row);
            }
        }
    }
    println!("{}", json!({ "results": results }));
}
