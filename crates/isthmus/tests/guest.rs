//! Real guests: a QEMU guest (Debian's kernel, busybox) on an Isthmus network gets its port's
//! address, gateway, MTU and name server by DHCP, reaches a pod on another node by its name
//! (`<pod>.<namespace>.<domain>`, resolved by Isthmus's DNS), and fetches its metadata through
//! the agent's proxy from a metadata service that checks the headers and signature as Nova's
//! does; a second guest on a network behind a router reaches the same pod by name.

mod cloud;

use std::time::Duration;

use cloud::{
    add_router_interface, cloud_with, cni_add, cni_conf, create, default_group, ip_of, wait_for,
};
use isthmus_lab::guest::{self, GuestImage};
use serde_json::{json, Value};

/// The guest image, built once per target directory; `None` (skipped, with the reason) where
/// QEMU is not installed; under CI that is a failure.
fn image() -> Option<GuestImage> {
    if !guest::qemu_available() {
        isthmus_lab::skip("QEMU (qemu-system-x86) is not installed");
        return None;
    }
    Some(guest::image(&std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("guest")).unwrap())
}

/// Nova's metadata handler as far as the proxy is concerned
/// (`nova/api/metadata/handler.py`, `_handle_instance_id_request`): the instance id, tenant
/// and signature headers must be there, the signature must be the HMAC-SHA256 of the instance
/// id under the shared secret; then it answers with what it was told.
const NOVA_METADATA: &str = r#"
import hashlib, hmac, http.server, json, secrets, sys
SECRET = sys.argv[2].encode()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        instance = self.headers.get("X-Instance-ID")
        tenant = self.headers.get("X-Tenant-ID")
        signature = self.headers.get("X-Instance-ID-Signature")
        remote = self.headers.get("X-Forwarded-For")
        if instance is None or tenant is None or signature is None or remote is None:
            return self.answer(400, {"error": "missing header"})
        expected = hmac.new(SECRET, instance.encode(), hashlib.sha256).hexdigest()
        if not secrets.compare_digest(expected, signature):
            return self.answer(403, {"error": "signature mismatch"})
        if self.path != "/openstack/latest/meta_data.json":
            return self.answer(404, {"error": self.path})
        self.answer(200, {"uuid": instance, "project_id": tenant, "forwarded_for": remote})
    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *args):
        pass
http.server.HTTPServer((sys.argv[1], 8775), Handler).serve_forever()
"#;

/// Kills the metadata service when the test ends.
struct Service(std::process::Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn qemu_guests_get_dhcp_resolve_names_across_a_router_and_fetch_signed_metadata() {
    let secrets = tempfile::tempdir().unwrap();
    let (right, wrong) = (secrets.path().join("right"), secrets.path().join("wrong"));
    std::fs::write(&right, "s3cret-shared-with-nova\n").unwrap();
    std::fs::write(&wrong, "not-the-secret").unwrap();
    let url = "http://10.251.0.254:8775";
    let (right, wrong) = (right.to_str().unwrap(), wrong.to_str().unwrap());
    // Node 1's agent has Nova's secret, node 2's a wrong one.
    let Some(cloud) = cloud_with(&[
        &["--metadata-url", url, "--metadata-secret-file", right],
        &["--metadata-url", url, "--metadata-secret-file", wrong],
    ]) else {
        return;
    };
    let Some(image) = image() else { return };
    let lab = &cloud.lab;
    let nova = Service(
        lab.fabric
            .command("python3")
            .args([
                "-c",
                NOVA_METADATA,
                "10.251.0.254",
                "s3cret-shared-with-nova",
            ])
            .spawn()
            .unwrap(),
    );

    let net = create(lab, "/v2.0/networks", "network", json!({"name": "guests"}));
    let net = net["id"].as_str().unwrap().to_owned();
    let sub_a = create(
        lab,
        "/v2.0/subnets",
        "subnet",
        json!({"network_id": net, "ip_version": 4,
        "cidr": "10.70.0.0/24"}),
    );
    let project = "guests";
    let guest_port = create(
        lab,
        "/v2.0/ports",
        "port",
        json!({"network_id": net, "project_id": project,
        "binding:host_id": "node1", "device_owner": "compute:nova", "dns_name": "guest1",
        "device_id": "6f1b9d1e-0000-4000-8000-0000000000a1"}),
    );
    // The project's default group (made with its first port) admits ICMP.
    let default = default_group(lab, Some(project));
    create(
        lab,
        "/v2.0/security-group-rules",
        "security_group_rule",
        json!({
        "security_group_id": default, "direction": "ingress", "protocol": "icmp"}),
    );
    let other = create(
        lab,
        "/v2.0/ports",
        "port",
        json!({"network_id": net, "project_id": project,
        "binding:host_id": "node2", "device_owner": "compute:nova",
        "device_id": "6f1b9d1e-0000-4000-8000-0000000000b2"}),
    );
    let vm = lab
        .add_vm_for_port(1, &other, 24, Some("10.70.0.1"), 1450)
        .unwrap();
    // A pod on node 2, wired by the CNI plugin as kubelet would: its name is
    // web.demo.openstack.local.
    let pod = lab.add_pod().unwrap();
    let conf = cni_conf(&cloud, 1, json!({"network": net, "project": project}));
    let added = cni_add(
        &cloud,
        1,
        &pod,
        "guest-peer",
        "K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web;K8S_POD_UID=uid-web",
        &conf,
    );
    let pod_ip = added["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    // A second network behind a router, with a guest on node 2.
    let net_b = create(lab, "/v2.0/networks", "network", json!({"name": "behind"}));
    let net_b = net_b["id"].as_str().unwrap().to_owned();
    let sub_b = create(
        lab,
        "/v2.0/subnets",
        "subnet",
        json!({"network_id": net_b, "ip_version": 4, "cidr": "10.71.0.0/24"}),
    );
    let router = create(lab, "/v2.0/routers", "router", json!({"name": "r"}));
    let router = router["id"].as_str().unwrap().to_owned();
    for subnet in [&sub_a, &sub_b] {
        add_router_interface(lab, &router, subnet["id"].as_str().unwrap());
    }
    let second = create(
        lab,
        "/v2.0/ports",
        "port",
        json!({"network_id": net_b, "project_id": project,
        "binding:host_id": "node2", "device_owner": "compute:nova", "dns_name": "guest2",
        "device_id": "6f1b9d1e-0000-4000-8000-0000000000c3"}),
    );
    let dhcp = "ip link set eth0 up\n\
         udhcpc -i eth0 -n -q -t 30 -T 1 -O staticroutes -O mtu || echo NO-LEASE\n\
         ip -4 addr show dev eth0\n\
         ip route\n\
         cat /etc/resolv.conf\n\
         nslookup web.demo.openstack.local\n";
    // Resolved by the guests' own DHCP port (their resolv.conf), on each one's node.
    let by_name =
        "ping -c 3 -W 2 web.demo.openstack.local >/dev/null && echo PING-OK || echo PING-FAILED\n";
    let script = format!(
        "{dhcp}{by_name}\
         ping -c 3 -W 2 {peer} >/dev/null && echo PING-IP-OK || echo PING-IP-FAILED\n\
         echo META-BEGIN\n\
         wget -q -O - http://169.254.169.254/openstack/latest/meta_data.json\n\
         echo\n\
         echo META-END\n",
        peer = pod_ip
    );
    let guest = lab.boot_guest(0, &guest_port, &script, &image).unwrap();
    let guest2 = lab
        .boot_guest(
            1,
            &second,
            &format!(
                "{dhcp}{by_name}\
                 wget -q -O - http://169.254.169.254/openstack/latest/meta_data.json 2>&1\n\
                 echo META2-END\n"
            ),
            &image,
        )
        .unwrap();
    let console = guest.wait(Duration::from_secs(240)).unwrap();
    let console2 = guest2.wait(Duration::from_secs(240)).unwrap();
    assert!(console2.contains("PING-OK"), "{console2}");
    assert!(console.contains("ISTHMUS-GUEST-DONE"), "{console}");
    let lease = console
        .lines()
        .find(|l| l.starts_with("LEASE "))
        .unwrap_or_else(|| panic!("no lease:\n{console}"));
    for wanted in [
        format!("ip={}", ip_of(&guest_port)),
        "mask=24".to_owned(),
        "router=10.70.0.1".to_owned(),
        "dns=10.70.0.2".to_owned(),
        "mtu=1450".to_owned(),
        "hostname=guest1".to_owned(),
        "domain=openstack.local".to_owned(),
    ] {
        assert!(lease.contains(&wanted), "{wanted} not in {lease}");
    }
    assert!(
        console.contains("169.254.169.254 via 10.70.0.2"),
        "{console}"
    );
    assert!(console.contains("PING-OK"), "{console}");
    let meta = console
        .split("META-BEGIN")
        .nth(1)
        .and_then(|rest| rest.split("META-END").next())
        .unwrap_or_default();
    let meta: Value = serde_json::from_str(meta.trim())
        .unwrap_or_else(|e| panic!("metadata not JSON ({e}):\n{console}"));
    assert_eq!(meta["uuid"], guest_port["device_id"]);
    assert_eq!(meta["project_id"], guest_port["project_id"]);
    assert_eq!(meta["forwarded_for"], ip_of(&guest_port));

    // On node 2 the agent signs with a wrong secret: Nova's check refuses it (403), and the
    // proxy passes that on, to the guest there and to a namespace VM alike.
    assert!(
        console2.contains("403 Forbidden"),
        "guest 2 got its metadata with a wrong secret:\n{console2}"
    );
    vm.ns
        .ip(&["route", "add", "169.254.169.254", "via", "10.70.0.2"])
        .unwrap();
    let status = || {
        vm.ns
            .exec(
                "curl",
                &[
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "-m",
                    "5",
                    "http://169.254.169.254/openstack/latest/meta_data.json",
                ],
            )
            .unwrap_or_default()
    };
    wait_for("node 2's proxy to answer", Duration::from_secs(10), || {
        status() != "000"
    });
    assert_eq!(status(), "403");
    drop(nova);
}
