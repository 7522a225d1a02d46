//! The plugin binary through the CNI exec protocol (env + stdin → stdout + exit status), for
//! what it answers without an agent. (Building this test also builds the binary the kernel
//! tests execute.)

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

fn exec(env: &[(&str, &str)], stdin: &str) -> (bool, Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_isthmus-cni"))
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.success(), stdout)
}

const CONF: &str = r#"{"cniVersion": "1.0.0", "name": "n", "type": "isthmus", "socket": "/nonexistent/isthmus.sock"}"#;

#[test]
fn version_lists_what_it_speaks() {
    let (ok, v) = exec(&[("CNI_COMMAND", "VERSION")], CONF);
    assert!(ok);
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(
        v["supportedVersions"],
        serde_json::json!(["1.0.0", "1.1.0"])
    );
}

#[test]
fn errors_are_json_with_the_spec_codes_and_a_failing_status() {
    let add = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
    ];
    for (env, stdin, code) in [
        (&add[..], "not json", 6),
        (&add[..], r#"{"cniVersion": "0.4.0", "name": "n"}"#, 1),
        (&add[..2], CONF, 4),
        (&add[..], CONF, 11),
        (&[("CNI_COMMAND", "STATUS")][..], CONF, 50),
    ] {
        let (ok, v) = exec(env, stdin);
        assert!(!ok, "{v}");
        assert_eq!(v["code"], code, "{v}");
        assert!(v["msg"].is_string() && v["cniVersion"].is_string(), "{v}");
    }
}
