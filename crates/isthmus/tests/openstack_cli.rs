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
    assert_eq!(
        port_a["fixed_ips"][0]["ip_address"], "192.168.100.3",
        "after the network's DHCP port"
    );

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

    // extraroute-atomic: the CLI adds and removes routes with add/remove_extraroutes.
    cli.ok(&[
        "router",
        "add",
        "route",
        "--route",
        "destination=10.50.0.0/24,gateway=10.10.0.5",
        "r1",
    ]);
    let routes = cli.json(&["router", "show", "r1"])["routes"].to_string();
    assert!(
        routes.contains("10.50.0.0/24") && routes.contains("10.10.0.5"),
        "{routes}"
    );
    cli.ok(&[
        "router",
        "remove",
        "route",
        "--route",
        "destination=10.50.0.0/24,gateway=10.10.0.5",
        "r1",
    ]);
    assert!(!cli.json(&["router", "show", "r1"])["routes"]
        .to_string()
        .contains("10.50.0.0"));
    // l3-ha: set on create, changed only while the router is down.
    let ha = cli.json(&["router", "create", "--ha", "r-ha"]);
    assert_eq!(ha["ha"], true);
    let (ok, _, err) = cli.run(&["router", "set", "--no-ha", "r-ha"]);
    assert!(!ok && err.contains("admin_state_up to False"), "{err}");
    cli.ok(&["router", "set", "--disable", "--no-ha", "r-ha"]);
    assert_eq!(cli.json(&["router", "show", "r-ha"])["ha"], false);
    cli.ok(&["router", "delete", "r-ha"]);
    // Availability zones, extra DHCP options, subnet service types.
    assert!(cli
        .ok(&["availability", "zone", "list", "--network"])
        .contains("nova"));
    let pxe = cli.json(&[
        "port",
        "create",
        "--network",
        "private",
        "--extra-dhcp-option",
        "name=tftp-server,value=10.10.0.9",
        "pxe",
    ]);
    assert!(
        pxe["extra_dhcp_opts"].to_string().contains("tftp-server"),
        "{pxe}"
    );
    cli.ok(&["port", "delete", "pxe"]);
    let svc = cli.json(&[
        "subnet",
        "create",
        "--network",
        "private",
        "--subnet-range",
        "10.11.0.0/24",
        "--service-type",
        "network:floatingip",
        "fip-only",
    ]);
    assert_eq!(
        svc["service_types"],
        serde_json::json!(["network:floatingip"])
    );
    cli.ok(&["subnet", "delete", "fip-only"]);

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

    // floating-ip-router-writable: the router named is the one used, and must reach the port.
    let fip = cli.json(&[
        "floating", "ip", "create", "--port", "vm", "--router", "r1", "public",
    ]);
    assert_eq!(fip["router_id"], router["id"]);
    let address = fip["floating_ip_address"].as_str().unwrap().to_owned();
    cli.json(&["router", "create", "r-far"]);
    cli.ok(&["router", "set", "--external-gateway", "public", "r-far"]);
    let (ok, _, err) = cli.run(&[
        "floating", "ip", "set", "--port", "vm", "--router", "r-far", &address,
    ]);
    assert!(!ok && err.contains("has no interface on subnet"), "{err}");
    assert_eq!(
        cli.json(&["floating", "ip", "show", &address])["router_id"],
        router["id"]
    );
    cli.ok(&["floating", "ip", "delete", &address]);
    cli.ok(&["router", "unset", "--external-gateway", "r-far"]);
    cli.ok(&["router", "delete", "r-far"]);

    let (ok, _, err) = cli.run(&["router", "delete", "r1"]);
    assert!(!ok && err.contains("still has ports"), "{err}");
    cli.ok(&["router", "remove", "subnet", "r1", "private-v4"]);
    cli.ok(&["router", "unset", "--external-gateway", "r1"]);
    cli.ok(&["router", "delete", "r1"]);
    cli.ok(&["port", "delete", "vm"]);
    // Only the private network's DHCP port is left; it goes with the network.
    let ports = cli.json(&["port", "list", "--device-owner", "network:dhcp"]);
    assert_eq!(ports.as_array().unwrap().len(), 1, "{ports}");
    let ports = cli.json(&["port", "list"]);
    assert_eq!(ports.as_array().unwrap().len(), 1, "{ports}");
    cli.ok(&["network", "delete", "private", "public"]);
}

#[test]
fn openstack_cli_address_scopes_subnet_pools_and_rbac() {
    let Some(bin) = openstack() else {
        isthmus_lab::skip("no openstack CLI (./test.sh installs python-openstackclient in .venv)");
        return;
    };
    let (_dir, controller, cli) = Cli::with_controller(bin);
    let failure = |args: &[&str], wanted: &str| {
        let (ok, out, err) = cli.run(args);
        assert!(
            !ok && err.contains(wanted),
            "openstack {args:?}: {out}\n{err}"
        );
        assert!(!err.contains("Traceback"), "{err}");
    };

    // Address scopes.
    let scope = cli.json(&["address", "scope", "create", "--ip-version", "4", "scope4"]);
    assert_eq!(
        (scope["ip_version"].clone(), scope["shared"].clone()),
        (4.into(), false.into())
    );
    cli.ok(&["address", "scope", "set", "--name", "scope-v4", "scope4"]);
    assert_eq!(
        cli.json(&["address", "scope", "show", "scope-v4"])["id"],
        scope["id"]
    );
    assert!(cli.ok(&["address", "scope", "list"]).contains("scope-v4"));
    failure(
        &["address", "scope", "create", "--ip-version", "5", "bad"],
        "invalid choice",
    );

    // Subnet pools in it, prefixes allocated to subnets.
    let pool = cli.json(&[
        "subnet",
        "pool",
        "create",
        "--pool-prefix",
        "10.20.0.0/16",
        "--default-prefix-length",
        "24",
        "--max-prefix-length",
        "28",
        "--address-scope",
        "scope-v4",
        "pool4",
    ]);
    assert_eq!(pool["address_scope_id"], scope["id"]);
    assert_eq!(pool["min_prefixlen"], 8);
    cli.ok(&[
        "subnet",
        "pool",
        "set",
        "--pool-prefix",
        "10.21.0.0/16",
        "pool4",
    ]);
    assert_eq!(
        cli.json(&["subnet", "pool", "show", "pool4"])["prefixes"],
        serde_json::json!(["10.20.0.0/15"])
    );
    failure(
        &[
            "subnet",
            "pool",
            "create",
            "--pool-prefix",
            "10.20.5.0/24",
            "--address-scope",
            "scope-v4",
            "clash",
        ],
        "subnetpools within an address scope must have unique prefixes",
    );
    cli.ok(&["network", "create", "pooled"]);
    let subnet = cli.json(&[
        "subnet",
        "create",
        "--network",
        "pooled",
        "--subnet-pool",
        "pool4",
        "--prefix-length",
        "26",
        "pooled-v4",
    ]);
    assert_eq!(subnet["cidr"], "10.20.0.0/26");
    assert_eq!(subnet["subnetpool_id"], pool["id"]);
    let second = cli.json(&[
        "subnet",
        "create",
        "--network",
        "pooled",
        "--subnet-pool",
        "pool4",
        "pooled-v4b",
    ]);
    assert_eq!(second["cidr"], "10.20.1.0/24");
    failure(
        &[
            "subnet",
            "create",
            "--network",
            "pooled",
            "--subnet-pool",
            "pool4",
            "--prefix-length",
            "30",
            "tiny",
        ],
        "maximum allowed prefix is 28",
    );
    failure(&["address", "scope", "delete", "scope-v4"], "409");
    failure(&["subnet", "pool", "delete", "pool4"], "409");

    // The default pool, shared with everyone.
    cli.ok(&[
        "subnet",
        "pool",
        "create",
        "--default",
        "--share",
        "--pool-prefix",
        "192.168.0.0/16",
        "--default-prefix-length",
        "24",
        "default-v4",
    ]);
    cli.ok(&["network", "create", "defaulted"]);
    let from_default = cli.json(&[
        "subnet",
        "create",
        "--network",
        "defaulted",
        "--use-default-subnet-pool",
        "--ip-version",
        "4",
        "d-v4",
    ]);
    assert_eq!(from_default["cidr"], "192.168.0.0/24");

    // RBAC: share a network with every project, update and delete the policy. A targeted
    // grant needs Keystone to resolve the project (noauth has no identity API): made below
    // through the API.
    let shared = cli.json(&["network", "create", "to-share"]);
    let net_id = shared["id"].as_str().unwrap().to_owned();
    cli.ok(&[
        "subnet",
        "create",
        "--network",
        "to-share",
        "--subnet-range",
        "10.99.0.0/24",
        "share-v4",
    ]);
    let rbac = cli.json(&[
        "network",
        "rbac",
        "create",
        "--target-all-projects",
        "--action",
        "access_as_shared",
        "--type",
        "network",
        "to-share",
    ]);
    assert_eq!(rbac["target_project_id"], "*");
    let rbac_id = rbac["id"].as_str().unwrap().to_owned();
    assert!(cli.ok(&["network", "rbac", "list"]).contains(&rbac_id));
    assert_eq!(
        cli.json(&["network", "rbac", "show", &rbac_id])["object_id"],
        shared["id"]
    );
    let (status, v) = controller.http_as(
        "project-b",
        "GET",
        &format!("/v2.0/networks/{net_id}"),
        None,
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(cli.json(&["network", "show", "to-share"])["shared"], true);
    cli.ok(&["network", "rbac", "delete", &rbac_id]);
    assert_eq!(cli.json(&["network", "show", "to-share"])["shared"], false);
    // `--share` is that same wildcard policy, and `--no-share` removes it.
    let open = cli.json(&["network", "create", "--share", "open"]);
    let open_id = open["id"].as_str().unwrap();
    let listed = cli.json(&["network", "rbac", "list", "--long"]);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["Object ID"] == open_id && p["Action"] == "access_as_shared"),
        "{listed}"
    );
    cli.ok(&["network", "set", "--no-share", "open"]);
    assert!(!cli.ok(&["network", "rbac", "list"]).contains(open_id));
    cli.ok(&["network", "delete", "open"]);
    let (status, _) = controller.http_as(
        "project-b",
        "GET",
        &format!("/v2.0/networks/{net_id}"),
        None,
    );
    assert_eq!(status, 404);
    let (status, v) = controller.http(
        "POST",
        "/v2.0/rbac-policies",
        Some(
            &serde_json::json!({"rbac_policy": {"object_type": "network", "object_id": net_id,
            "action": "access_as_shared", "target_tenant": "project-b"}}),
        ),
    );
    assert_eq!(status, 201, "{v}");
    let rbac_id = v["rbac_policy"]["id"].as_str().unwrap().to_owned();
    let (status, v) = controller.http_as(
        "project-b",
        "POST",
        "/v2.0/ports",
        Some(&serde_json::json!({"port": {"network_id": net_id, "name": "b-port"}})),
    );
    assert_eq!(status, 201, "{v}");
    failure(
        &["network", "rbac", "delete", &rbac_id],
        "cannot be removed because other objects depend on it",
    );
    // The other shareable types.
    cli.ok(&["security", "group", "create", "web"]);
    for (kind, object) in [
        ("security_group", "web"),
        ("subnetpool", "pool4"),
        ("address_scope", "scope-v4"),
    ] {
        let policy = cli.json(&[
            "network",
            "rbac",
            "create",
            "--target-all-projects",
            "--action",
            "access_as_shared",
            "--type",
            kind,
            object,
        ]);
        assert_eq!(policy["object_type"], kind);
        cli.ok(&["network", "rbac", "delete", policy["id"].as_str().unwrap()]);
    }
    failure(
        &[
            "network",
            "rbac",
            "create",
            "--target-all-projects",
            "--action",
            "access_as_external",
            "--type",
            "security_group",
            "web",
        ],
        "Invalid action 'access_as_external' for object type 'security_group'",
    );
    cli.ok(&["security", "group", "delete", "web"]);
    cli.ok(&["port", "delete", "b-port"]);
    cli.ok(&["network", "rbac", "delete", &rbac_id]);

    // The template of default rules.
    let template = cli.json(&["default", "security", "group", "rule", "list"]);
    assert_eq!(template.as_array().map(Vec::len), Some(4), "{template}");
    let ssh = cli.json(&[
        "default",
        "security",
        "group",
        "rule",
        "create",
        "--protocol",
        "tcp",
        "--dst-port",
        "22",
        "--for-custom-sg",
    ]);
    let ssh_id = ssh["id"].as_str().unwrap().to_owned();
    assert_eq!(ssh["used_in_non_default_sg"], true);
    assert_eq!(
        cli.json(&["default", "security", "group", "rule", "show", &ssh_id])["port_range_max"],
        22
    );
    let group = cli.json(&["security", "group", "create", "with-ssh"]);
    assert!(group["rules"].to_string().contains("22"), "{group}");
    failure(
        &[
            "default",
            "security",
            "group",
            "rule",
            "create",
            "--protocol",
            "tcp",
            "--dst-port",
            "22",
            "--for-custom-sg",
        ],
        "409",
    );
    cli.ok(&["default", "security", "group", "rule", "delete", &ssh_id]);
    cli.ok(&["security", "group", "delete", "with-ssh"]);

    // Address groups, and a rule whose remote is one.
    let ag = cli.json(&[
        "address",
        "group",
        "create",
        "--address",
        "10.0.0.1",
        "--address",
        "10.0.1.0/24",
        "admins",
    ]);
    assert_eq!(
        ag["addresses"],
        serde_json::json!(["10.0.0.1/32", "10.0.1.0/24"])
    );
    cli.ok(&[
        "address",
        "group",
        "set",
        "--address",
        "10.0.0.2",
        "--name",
        "ops",
        "admins",
    ]);
    cli.ok(&["address", "group", "unset", "--address", "10.0.0.1", "ops"]);
    let shown = cli.json(&["address", "group", "show", "ops"]);
    assert_eq!(
        shown["addresses"],
        serde_json::json!(["10.0.0.2/32", "10.0.1.0/24"])
    );
    assert!(cli.ok(&["address", "group", "list"]).contains("ops"));
    cli.ok(&["security", "group", "create", "ssh-from-ops"]);
    let rule = cli.json(&[
        "security",
        "group",
        "rule",
        "create",
        "--protocol",
        "tcp",
        "--dst-port",
        "22",
        "--remote-address-group",
        "ops",
        "ssh-from-ops",
    ]);
    assert_eq!(rule["remote_address_group_id"], ag["id"]);
    failure(&["address", "group", "delete", "ops"], "409");
    cli.ok(&["security", "group", "delete", "ssh-from-ops"]);
    cli.ok(&["address", "group", "delete", "ops"]);

    cli.ok(&["subnet", "delete", "pooled-v4", "pooled-v4b", "d-v4"]);
    cli.ok(&["subnet", "pool", "delete", "pool4", "default-v4"]);
    cli.ok(&["address", "scope", "delete", "scope-v4"]);
}

/// `openstack network trunk` and `network subport` (trunk, trunk-details).
#[test]
fn openstack_cli_trunks() {
    let Some(bin) = openstack() else {
        isthmus_lab::skip("no openstack CLI (./test.sh installs python-openstackclient in .venv)");
        return;
    };
    let (_dir, _controller, cli) = Cli::with_controller(bin);
    let failure = |args: &[&str], wanted: &str| {
        let (ok, out, err) = cli.run(args);
        assert!(
            !ok && err.contains(wanted),
            "openstack {args:?}: {out}\n{err}"
        );
        assert!(!err.contains("Traceback"), "{err}");
    };
    for (net, cidr) in [
        ("vms", "10.0.0.0/24"),
        ("pods-a", "10.1.0.0/24"),
        ("pods-b", "10.2.0.0/24"),
    ] {
        cli.ok(&["network", "create", net]);
        cli.ok(&[
            "subnet",
            "create",
            "--network",
            net,
            "--subnet-range",
            cidr,
            net,
        ]);
    }
    cli.ok(&["port", "create", "--network", "vms", "vm-port"]);
    let a = cli.json(&["port", "create", "--network", "pods-a", "pod-a"]);
    cli.ok(&["port", "create", "--network", "pods-b", "pod-b"]);

    let trunk = cli.json(&[
        "network",
        "trunk",
        "create",
        "--parent-port",
        "vm-port",
        "--subport",
        "port=pod-a,segmentation-type=vlan,segmentation-id=101",
        "t1",
    ]);
    assert_eq!(trunk["status"], "DOWN");
    assert_eq!(trunk["is_admin_state_up"], true);
    cli.ok(&[
        "network",
        "trunk",
        "set",
        "--subport",
        "port=pod-b,segmentation-type=vlan,segmentation-id=102",
        "t1",
    ]);
    let subports = cli.json(&["network", "subport", "list", "--trunk", "t1"]);
    let vlans: Vec<u64> = subports
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["Segmentation ID"].as_u64().unwrap())
        .collect();
    assert_eq!(vlans, [101, 102]);
    let parent = cli.json(&["port", "show", "vm-port"]);
    assert_eq!(parent["trunk_details"]["trunk_id"], trunk["id"]);
    assert_eq!(
        parent["trunk_details"]["sub_ports"][0]["mac_address"],
        a["mac_address"]
    );
    // Subports show up as ports owned by the trunk.
    let owned = cli.json(&["port", "list", "--device-owner", "trunk:subport"]);
    assert_eq!(owned.as_array().unwrap().len(), 2);
    assert!(cli.ok(&["network", "trunk", "list"]).contains("t1"));

    failure(
        &[
            "network",
            "trunk",
            "set",
            "--subport",
            "port=vm-port,segmentation-type=vlan,segmentation-id=7",
            "t1",
        ],
        "is not eligible for use as a parent port",
    );
    failure(
        &["port", "delete", "pod-a"],
        "is currently a subport for trunk",
    );
    failure(
        &["network", "trunk", "create", "--parent-port", "pod-a", "t2"],
        "is in use by another trunk",
    );
    cli.ok(&["network", "trunk", "unset", "--subport", "pod-a", "t1"]);
    let shown = cli.json(&["network", "trunk", "show", "t1"]);
    assert_eq!(shown["sub_ports"].as_array().unwrap().len(), 1);
    cli.ok(&["port", "delete", "pod-a"]);
    cli.ok(&[
        "network",
        "trunk",
        "set",
        "--disable",
        "--name",
        "t1-off",
        "t1",
    ]);
    failure(
        &["network", "trunk", "unset", "--subport", "pod-b", "t1-off"],
        "is currently disabled",
    );
    cli.ok(&["network", "trunk", "set", "--enable", "t1-off"]);
    cli.ok(&["network", "trunk", "delete", "t1-off"]);
    cli.ok(&["port", "delete", "vm-port", "pod-b"]);
}

/// python-octaviaclient's `openstack loadbalancer` commands against the same controller.
#[test]
fn octavia_cli_end_to_end() {
    let Some(bin) = openstack() else {
        isthmus_lab::skip("no openstack CLI (./test.sh installs python-octaviaclient in .venv)");
        return;
    };
    let (_dir, _controller, cli) = Cli::with_controller(bin);
    cli.ok(&["network", "create", "web"]);
    cli.ok(&[
        "subnet",
        "create",
        "--network",
        "web",
        "--subnet-range",
        "10.9.0.0/24",
        "web-v4",
    ]);

    let lb = cli.json(&[
        "loadbalancer",
        "create",
        "--name",
        "lb1",
        "--vip-subnet-id",
        "web-v4",
        "--wait",
    ]);
    assert_eq!(lb["provider"], "isthmus");
    assert_eq!(lb["provisioning_status"], "ACTIVE");
    let vip_port = lb["vip_port_id"].as_str().unwrap();
    let port = cli.json(&["port", "show", vip_port]);
    assert_eq!(port["device_owner"], "Octavia");
    assert_eq!(port["fixed_ips"][0]["ip_address"], lb["vip_address"]);
    assert!(cli
        .ok(&["loadbalancer", "provider", "list"])
        .contains("isthmus"));

    let listener = cli.json(&[
        "loadbalancer",
        "listener",
        "create",
        "--name",
        "l1",
        "--protocol",
        "TCP",
        "--protocol-port",
        "80",
        "--allowed-cidr",
        "10.0.0.0/8",
        "lb1",
        "--wait",
    ]);
    assert_eq!(listener["allowed_cidrs"], serde_json::json!(["10.0.0.0/8"]));
    let (ok, _, err) = cli.run(&[
        "loadbalancer",
        "listener",
        "create",
        "--protocol",
        "HTTP",
        "--protocol-port",
        "81",
        "lb1",
    ]);
    assert!(
        !ok && err.contains("does not support") && err.contains("501"),
        "{err}"
    );
    let (ok, _, err) = cli.run(&[
        "loadbalancer",
        "listener",
        "create",
        "--protocol",
        "TCP",
        "--protocol-port",
        "80",
        "lb1",
    ]);
    assert!(!ok && err.contains("409"), "{err}");

    let pool = cli.json(&[
        "loadbalancer",
        "pool",
        "create",
        "--name",
        "p1",
        "--listener",
        "l1",
        "--protocol",
        "TCP",
        "--lb-algorithm",
        "SOURCE_IP",
        "--session-persistence",
        "type=SOURCE_IP",
        "--wait",
    ]);
    assert_eq!(pool["lb_algorithm"], "SOURCE_IP");
    for (name, address, weight) in [("m1", "10.9.0.10", "1"), ("m2", "10.9.0.11", "2")] {
        cli.ok(&[
            "loadbalancer",
            "member",
            "create",
            "--name",
            name,
            "--address",
            address,
            "--protocol-port",
            "8080",
            "--weight",
            weight,
            "--subnet-id",
            "web-v4",
            "p1",
            "--wait",
        ]);
    }
    let members = cli.json(&["loadbalancer", "member", "list", "p1"]);
    assert_eq!(members.as_array().unwrap().len(), 2, "{members}");
    let m2 = cli.json(&["loadbalancer", "member", "show", "p1", "m2"]);
    assert_eq!(m2["weight"], 2);
    cli.ok(&["loadbalancer", "member", "set", "--disable", "p1", "m2"]);
    assert_eq!(
        cli.json(&["loadbalancer", "member", "show", "p1", "m2"])["admin_state_up"],
        false
    );
    let monitor = cli.json(&[
        "loadbalancer",
        "healthmonitor",
        "create",
        "--name",
        "hm",
        "--delay",
        "2",
        "--timeout",
        "1",
        "--max-retries",
        "2",
        "--type",
        "TCP",
        "p1",
    ]);
    assert_eq!(monitor["type"], "TCP");

    // `status show` prints JSON by itself (and takes no -f).
    let status: serde_json::Value =
        serde_json::from_str(&cli.ok(&["loadbalancer", "status", "show", "lb1"])).unwrap();
    let tree = &status["loadbalancer"]["listeners"][0]["pools"][0];
    assert_eq!(tree["members"].as_array().unwrap().len(), 2, "{status}");
    assert_eq!(tree["health_monitor"]["type"], "TCP", "{status}");
    // Statistics, as the client shows them (no node carried traffic here).
    let stats = cli.json(&["loadbalancer", "stats", "show", "lb1"]);
    assert_eq!(stats["total_connections"], 0, "{stats}");
    assert_eq!(stats["bytes_in"], 0, "{stats}");
    let stats = cli.json(&["loadbalancer", "listener", "stats", "show", "l1"]);
    assert_eq!(stats["active_connections"], 0, "{stats}");

    let (ok, _, err) = cli.run(&["loadbalancer", "delete", "lb1"]);
    assert!(!ok && err.contains("has children"), "{err}");
    cli.ok(&["loadbalancer", "delete", "--cascade", "lb1", "--wait"]);
    assert_eq!(cli.json(&["loadbalancer", "list"]), serde_json::json!([]));
    assert_eq!(
        cli.json(&["loadbalancer", "pool", "list"]),
        serde_json::json!([])
    );
    let (ok, _, _) = cli.run(&["port", "show", vip_port]);
    assert!(!ok, "the VIP port is deleted with its load balancer");
}
