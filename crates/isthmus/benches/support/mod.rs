//! What the throughput benchmarks share: an iperf3 run and medians.

use isthmus_lab::Netns;
use serde_json::Value;

/// Runs an iperf3 client (1 stream, `seconds`) in `client` against `server_ip`; Gbps received.
pub fn iperf(client: &Netns, server_ip: &str, seconds: u32) -> f64 {
    let out = client
        .exec(
            "iperf3",
            &["-c", server_ip, "-t", &seconds.to_string(), "-J"],
        )
        .expect("iperf3 client");
    let v: Value = serde_json::from_str(&out).expect("iperf3 JSON");
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9
}

/// The median (the mean of the middle two for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
