//! `isthmus lab up | status | down` as a newcomer runs them: the whole scenario from one
//! command, and nothing left behind after `down`.

mod cloud;

use std::process::Command;

fn isthmus(args: &[&str]) -> (bool, String) {
    cloud::cni_plugin(); // lab up execs it: it must be built
    let out = Command::new(cloud::BIN).args(args).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn lab_up_shows_a_vm_and_a_pod_talking_and_down_removes_everything() {
    if !isthmus_lab::runnable() {
        return;
    }
    let name = format!("isth-lab-{}", std::process::id());
    let (ok, out) = isthmus(&["lab", "up", "--nodes", "2", "--name", &name]);
    let cleanup = || isthmus(&["lab", "down", "--name", &name]);
    if !ok {
        cleanup();
        panic!("lab up failed:\n{out}");
    }
    for expected in [
        "VM  vm1      192.168.100.3",
        "pod demo/web 192.168.100.4",
        "before any rule: blocked",
        "--remote-group",
        "ping vm1 -> demo/web: 3 packets transmitted, 3 received, 0% packet loss",
        "ping demo/web -> vm1: 3 packets transmitted, 3 received, 0% packet loss",
        "router edge",
        "ping outside -> floating IP (vm1): 3 packets transmitted, 3 received, 0% packet loss",
        "ping demo/web -> outside (SNAT to the router's address): 3 packets transmitted, 3 received, 0% packet loss",
    ] {
        if !out.contains(expected) {
            cleanup();
            panic!("lab up did not print '{expected}':\n{out}");
        }
    }
    let (ok, again) = isthmus(&["lab", "up", "--name", &name]);
    assert!(!ok && again.contains("already up"), "{again}");
    let (ok, status) = isthmus(&["lab", "status", "--name", &name]);
    assert!(ok, "{status}");
    assert!(
        status.contains("demo/web") && status.contains("agent node2 alive=true"),
        "{status}"
    );

    let (ok, down) = isthmus(&["lab", "down", "--name", &name]);
    assert!(ok, "{down}");
    let left = isthmus_lab::scenario::namespaces(&name);
    assert!(left.is_empty(), "namespaces left: {left:?}");
    assert!(!std::path::Path::new("/run").join(&name).exists());
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(
        !ps.contains(&format!("/run/{name}")),
        "processes left:\n{ps}"
    );
}

#[test]
fn lab_names_that_leave_run_are_refused_before_anything_happens() {
    for name in [
        "..",
        "/",
        "../tmp",
        "a/../../etc",
        "UPPER",
        "x y",
        "averyveryverylongname1",
    ] {
        let (ok, out) = isthmus(&["lab", "down", "--name", name]);
        assert!(!ok, "lab down --name {name:?} succeeded: {out}");
        assert!(out.contains("is not 1 to 20 of a-z, 0-9 and '-'"), "{out}");
    }
}
