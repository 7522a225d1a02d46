//! What the load-balancer tests share: a member's server (`backend.py`, answering its name)
//! and a client counting which member took each connection (`client.py`).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};

use isthmus_lab::Netns;

pub const BACKEND: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/lb/backend.py");
pub const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/lb/client.py");

/// A member's server, killed on drop.
pub struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `backend.py` in `ns`, answering `name` on port 8080.
pub fn serve(ns: &Netns, name: &str) -> Server {
    serve_on(ns, name, 8080)
}

/// Starts `backend.py` in `ns`, answering `name` on `port`.
pub fn serve_on(ns: &Netns, name: &str, port: u16) -> Server {
    let mut child = ns
        .command("python3")
        .args([BACKEND, name, &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready");
    Server(child)
}

/// Connections per member over `n` TCP connections from `ns` to `vip:port`.
pub fn count(ns: &Netns, vip: &str, port: u16, n: u32) -> BTreeMap<String, u64> {
    let out = ns
        .exec(
            "python3",
            &[CLIENT, "count", vip, &port.to_string(), &n.to_string()],
        )
        .unwrap();
    serde_json::from_str(&out).unwrap()
}

/// Whether `member` took `expected` connections, give or take `slack`.
pub fn within(counts: &BTreeMap<String, u64>, member: &str, expected: u64, slack: u64) -> bool {
    let got = counts.get(member).copied().unwrap_or(0);
    got + slack >= expected && got <= expected + slack
}
