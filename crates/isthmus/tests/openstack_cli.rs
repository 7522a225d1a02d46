//! The real `openstack` CLI (python-openstackclient from PyPI) against the controller.

mod cloud;
mod support;

use cloud::openstack;

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use support::{free_port, Controller};

struct Cli {
    bin: PathBuf,
    endpoint: String,
}

impl Cli {
    /// Runs a command; returns (success, stdout, stderr).
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(&self.bin)
            .args(["--os-auth-type", "none", "--os-endpoint", &self.endpoint])
            .args(args)
            .output()
            .expect("run openstack");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(ok, "openstack {args:?} failed:\n{out}\n{err}");
        out
    }

    /// A controller on a fresh data directory (kept alive by the returned guard) and a CLI
    /// pointed at it.
    fn with_controller(bin: PathBuf) -> (tempfile::TempDir, Controller, Cli) {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let controller = Controller::start(port, &["--data-dir", dir.path().to_str().unwrap()]);
        let cli = Cli {
            bin,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        (dir, controller, cli)
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-f", "json"]);
        serde_json::from_str(&self.ok(&all)).expect("CLI printed JSON")
    }
}

#[test]
fn openstack_cli_end_to_end() {
    let Some(bin) = openstack() else {
        isthmus_lab::skip("no openstack CLI (./test.sh installs python-openstackclient in .venv)");
        return;
    };
    let (_dir, controller, cli) = Cli::with_controller(bin);

    let net = cli.json(&["network", "create", "demo"]);
    assert_eq!(net["name"], "demo");
    assert_eq!(net["mtu"], 1450);
    assert_eq!(cli.json(&["network", "show", "demo"])["id"], net["id"]);
    assert!(cli.ok(&["network", "list"]).contains("demo"));

    let v4 = cli.json(&[
        "subnet",
        "create",
        "--network",
        "demo",
        "--subnet-range",
        "192.168.100.0/24",
        "demo-v4",
    ]);
    assert_eq!(v4["gateway_ip"], "192.168.100.1");
    let v6 = cli.json(&[
        "subnet",
        "create",
        "--network",
        "demo",
        "--ip-version",
        "6",
        "--subnet-range",
        "2001:db8:100::/64",
        "demo-v6",
    ]);
    assert_eq!(v6["ip_version"], 6);

    let port_a = cli.json(&[
        "port",
        "create",
        "--network",
        "demo",
        "--dns-name",
        "hello",
        "--fixed-ip",
        "subnet=demo-v4",
        "hello",
    ]);
    let fqdn = port_a["dns_assignment"][0]["fqdn"].as_str().unwrap();
    assert_eq!(fqdn, "hello.openstack.local.");
    assert_eq!(port_a["fixed_ips"][0]["ip_address"], "192.168.100.2");

    cli.ok(&[
        "port",
        "set",
        "--allowed-address",
        "ip-address=192.168.100.50",
        "hello",
    ]);
    let shown = cli.json(&["port", "show", "hello"]);
    assert_eq!(
        shown["allowed_address_pairs"][0]["ip_address"],
        "192.168.100.50"
    );
    assert_eq!(
        shown["allowed_address_pairs"][0]["mac_address"],
        shown["mac_address"]
    );

    let web = cli.json(&["security", "group", "create", "web"]);
    let rule = cli.json(&[
        "security",
        "group",
        "rule",
        "create",
        "--ingress",
        "--protocol",
        "tcp",
        "--dst-port",
        "80",
        "--remote-group",
        "default",
        "web",
    ]);
    assert_eq!(rule["security_group_id"], web["id"]);
    assert_eq!(rule["port_range_min"], 80);
    assert!(rule["remote_group_id"]
        .as_str()
        .is_some_and(|r| !r.is_empty()));

    // An error the CLI prints cleanly: a fixed IP outside the subnet.
    let (ok, _, err) = cli.run(&[
        "port",
        "create",
        "--network",
        "demo",
        "--fixed-ip",
        "subnet=demo-v4,ip-address=10.9.9.9",
        "bad",
    ]);
    assert!(!ok);
    assert!(err.contains("BadRequestException: 400"), "{err}");
    assert!(
        err.contains("IP address 10.9.9.9 is not a valid IP for the specified subnet."),
        "{err}"
    );
    assert!(!err.contains("Traceback"), "{err}");

    // A registered node is a Neutron agent.
    let (status, _) = controller.http(
        "POST",
        "/isthmus/v1/nodes",
        Some(&serde_json::json!({"node": {"name": "compute-1", "tunnel_ip": "10.0.0.11", "roles": ["compute"]}})),
    );
    assert_eq!(status, 201);
    let agents = cli.json(&["network", "agent", "list"]);
    let agent = &agents[0];
    assert_eq!(agent["Host"], "compute-1");
    assert_eq!(agent["Alive"], true);
    assert_eq!(agent["Binary"], "isthmus-agent");

    // Deleting a network with ports is refused, then works once the port is gone.
    let (ok, _, err) = cli.run(&["network", "delete", "demo"]);
    assert!(!ok && err.contains("409"), "{err}");
    cli.ok(&["port", "delete", "hello"]);
    cli.ok(&["security", "group", "delete", "web"]);
    cli.ok(&["network", "delete", "demo"]);
    assert!(!cli.ok(&["network", "list"]).contains("demo"));
}

#[test]
fn openstack_cli_routers_and_floating_ips() {
    let Some(bin) = openstack() else {
        isthmus_lab::skip("no openstack CLI (./test.sh installs python-openstackclient in .venv)");
        return;
    };
    let (_dir, controller, cli) = Cli::with_controller(bin);
    let (status, _) = controller.http(
        "POST",
        "/isthmus/v1/nodes",
        Some(&serde_json::json!({"node": {"name": "net-1", "tunnel_ip": "10.0.0.21", "physnets": {"public": "eth1"}}})),
    );
    assert_eq!(status, 201);
    cli.ok(&[
        "network",
        "create",
        "--external",
        "--provider-network-type",
        "flat",
        "--provider-physical-network",
        "public",
        "public",
    ]);
    cli.ok(&[
        "subnet",
        "create",
        "--network",
        "public",
        "--subnet-range",
        "172.24.4.0/24",
        "--no-dhcp",
        "public-v4",
    ]);
    cli.ok(&["network", "create", "private"]);
    cli.ok(&[
        "subnet",
        "create",
        "--network",
        "private",
        "--subnet-range",
        "10.10.0.0/24",
        "private-v4",
    ]);

    let router = cli.json(&["router", "create", "r1"]);
    assert_eq!(router["status"], "ACTIVE");
    cli.ok(&["router", "add", "subnet", "r1", "private-v4"]);
    cli.ok(&["router", "set", "--external-gateway", "public", "r1"]);
    let shown = cli.json(&["router", "show", "r1"]);
    assert_eq!(shown["distributed"], true);
    let gateway = &shown["external_gateway_info"];
    assert_eq!(gateway["enable_snat"], true);
    assert!(gateway["external_fixed_ips"][0]["ip_address"]
        .as_str()
        .unwrap()
        .starts_with("172.24.4."));
    let interfaces = shown["interfaces_info"].to_string();
    assert!(interfaces.contains("10.10.0.1"), "{shown}");

    // Adding the subnet again is refused with Neutron's message.
    let (ok, _, err) = cli.run(&["router", "add", "subnet", "r1", "private-v4"]);
    assert!(
        !ok && err.contains("Router already has a port on subnet"),
        "{err}"
    );

    let vm = cli.json(&["port", "create", "--network", "private", "vm"]);
    let fip = cli.json(&["floating", "ip", "create", "public"]);
    assert_eq!(fip["port_id"], Value::Null);
    let address = fip["floating_ip_address"].as_str().unwrap().to_owned();
    cli.ok(&["floating", "ip", "set", "--port", "vm", &address]);
    let fip = cli.json(&["floating", "ip", "show", &address]);
    assert_eq!(fip["port_id"], vm["id"]);
    assert_eq!(fip["fixed_ip_address"], vm["fixed_ips"][0]["ip_address"]);
    assert_eq!(fip["router_id"], router["id"]);
    let (ok, _, err) = cli.run(&["router", "remove", "subnet", "r1", "private-v4"]);
    assert!(
        !ok && err.contains("required by one or more floating IPs"),
        "{err}"
    );
    cli.ok(&["floating", "ip", "unset", "--port", &address]);
    cli.ok(&["floating", "ip", "delete", &address]);

    let (ok, _, err) = cli.run(&["router", "delete", "r1"]);
    assert!(!ok && err.contains("still has ports"), "{err}");
    cli.ok(&["router", "remove", "subnet", "r1", "private-v4"]);
    cli.ok(&["router", "unset", "--external-gateway", "r1"]);
    cli.ok(&["router", "delete", "r1"]);
    cli.ok(&["port", "delete", "vm"]);
    let ports = cli.json(&["port", "list"]);
    assert_eq!(ports.as_array().unwrap().len(), 0, "{ports}");
    cli.ok(&["network", "delete", "private", "public"]);
}
