//! Prometheus metrics of the API.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Latency histogram bucket bounds, in seconds.
const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0];

#[derive(Debug, Default)]
struct Series {
    count: u64,
    sum: f64,
    buckets: [u64; BUCKETS.len()],
}

/// Request counters and latency histograms by method and status.
#[derive(Debug, Default)]
pub struct Metrics {
    series: Mutex<BTreeMap<(String, u16), Series>>,
}

impl Metrics {
    /// Records one request.
    pub fn observe(&self, method: &str, status: u16, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let s = series.entry((method.to_owned(), status)).or_default();
        s.count += 1;
        s.sum += secs;
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                s.buckets[i] += 1;
            }
        }
    }

    /// The Prometheus text exposition, with the store revision.
    pub fn render(&self, store_revision: u64) -> String {
        let mut out = String::new();
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(
            out,
            "# HELP isthmus_api_requests_total API requests by method and status."
        );
        let _ = writeln!(out, "# TYPE isthmus_api_requests_total counter");
        for ((method, status), s) in series.iter() {
            let _ = writeln!(
                out,
                "isthmus_api_requests_total{{method=\"{method}\",status=\"{status}\"}} {}",
                s.count
            );
        }
        let _ = writeln!(
            out,
            "# HELP isthmus_api_request_duration_seconds API latency."
        );
        let _ = writeln!(out, "# TYPE isthmus_api_request_duration_seconds histogram");
        for ((method, status), s) in series.iter() {
            let labels = format!("method=\"{method}\",status=\"{status}\"");
            for (bound, n) in BUCKETS.iter().zip(s.buckets) {
                let _ = writeln!(
                    out,
                    "isthmus_api_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "isthmus_api_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                s.count
            );
            let _ = writeln!(
                out,
                "isthmus_api_request_duration_seconds_sum{{{labels}}} {}",
                s.sum
            );
            let _ = writeln!(
                out,
                "isthmus_api_request_duration_seconds_count{{{labels}}} {}",
                s.count
            );
        }
        let _ = writeln!(out, "# HELP isthmus_store_revision Current store revision.");
        let _ = writeln!(out, "# TYPE isthmus_store_revision gauge");
        let _ = writeln!(out, "isthmus_store_revision {store_revision}");
        out
    }
}
