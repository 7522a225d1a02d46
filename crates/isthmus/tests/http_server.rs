//! The controller's HTTP server as clients meet it: oversized request heads answered in
//! Neutron's format, and a stop (SIGTERM) that does not wait for streams that never end.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{free_port, request_full, Controller};

#[test]
fn oversized_request_heads_get_neutron_errors() {
    let data = tempfile::tempdir().unwrap();
    let c = Controller::start(free_port(), &["--data-dir", data.path().to_str().unwrap()]);
    let long = format!("/v2.0/networks?name={}", "x".repeat(20_000));
    let (status, headers, body) = request_full(c.port, "GET", &long, None, &[]).unwrap();
    assert_eq!(status, 414, "{body}");
    assert_eq!(body["NeutronError"]["type"], "HTTPRequestURITooLong");
    assert!(headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("x-openstack-request-id")));
    let many: Vec<(String, String)> = (0..150)
        .map(|i| (format!("X-Extra-{i}"), "y".to_owned()))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (status, _, body) = request_full(c.port, "GET", "/v2.0/networks", None, &many).unwrap();
    assert_eq!(status, 431, "{body}");
    assert_eq!(
        body["NeutronError"]["type"],
        "HTTPRequestHeaderFieldsTooLarge"
    );
    // Ordinary requests still pass.
    let (status, _, _) = request_full(c.port, "GET", "/v2.0/networks", None, &[]).unwrap();
    assert_eq!(status, 200);
}

#[test]
fn sigterm_stops_the_controller_with_a_watch_stream_open() {
    let data = tempfile::tempdir().unwrap();
    let mut c = Controller::start(free_port(), &["--data-dir", data.path().to_str().unwrap()]);
    let node = json!({"node": {"name": "n1", "tunnel_ip": "10.0.0.1"}});
    assert_eq!(c.http("POST", "/isthmus/v1/nodes", Some(&node)).0, 201);
    // A watch stream, held open.
    let mut stream = TcpStream::connect(("127.0.0.1", c.port)).unwrap();
    write!(
        stream,
        "GET /isthmus/v1/watch?node=n1 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    let mut first = [0u8; 64];
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let n = stream.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &c.child.id().to_string()])
        .status()
        .unwrap();
    // The watch ends (the agent moves on) rather than being cut after a grace period...
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert!(
        rest.ends_with(b"0\r\n\r\n"),
        "the stream ends with its last chunk: {}",
        String::from_utf8_lossy(&rest)
    );
    // ...and the process exits within a second or two.
    let deadline = started + Duration::from_secs(2);
    loop {
        if let Some(status) = c.child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "still running 2 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("stopped {:?} after SIGTERM", started.elapsed());
}
