//! The controller's Kubernetes watcher against a double of the API server's list/watch
//! contract (tests/apiserver), with everything after the watcher real: the lab's controller,
//! agents and kernel, pods wired by the real `isthmus-cni` plugin.

mod apiserver;
mod cloud;
mod support;

use std::time::Duration;

use apiserver::ApiServer;
use cloud::{cni_add, cni_conf, shared_network, start_cloud, wait_for, Cloud};
use isthmus_lab::Lab;
use isthmus_store::etcd_server::EtcdServer;
use serde_json::{json, Value};
use support::{free_port, Controller};

fn namespace(name: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}, "annotations": annotations},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    })
}

fn pod(namespace: &str, name: &str, node: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "web"}},
        "spec": {"nodeName": node, "containers": [{"name": "web", "image": "registry.k8s.io/pause:3.10"}]},
        "status": {"phase": "Pending"},
    })
}

/// A lab whose controller watches the double (which listens in the fabric, where the
/// controller runs).
fn kube_cloud(nodes: usize, grace: &str) -> Option<(Cloud, ApiServer)> {
    if !isthmus_lab::runnable() {
        return None;
    }
    let lab = Lab::new(nodes).unwrap();
    let apiserver = ApiServer::start(lab.fabric.listen_tcp("10.251.0.254:6443").unwrap());
    let data = tempfile::tempdir().unwrap();
    let kubeconfig = data.path().join("kubeconfig");
    apiserver.kubeconfig(&kubeconfig);
    let kubeconfig = kubeconfig.to_str().unwrap().to_owned();
    let cloud = start_cloud(
        lab,
        data,
        &[
            "--kubeconfig",
            &kubeconfig,
            "--kubernetes-lease-seconds",
            "3",
            "--pod-port-grace-seconds",
            grace,
        ],
        &vec![&["--pool-size", "0"][..]; nodes],
    );
    Some((cloud, apiserver))
}

fn binding(lab: &Lab, namespace: &str) -> Option<Value> {
    let (s, v) = lab.api(
        "GET",
        &format!("/isthmus/v1/namespace-bindings/{namespace}"),
        None,
    );
    (s == 200).then(|| v["namespace_binding"].clone())
}

fn wait_binding(lab: &Lab, namespace: &str, network: &str) -> Value {
    let mut last = None;
    wait_for("the namespace binding", Duration::from_secs(15), || {
        last = binding(lab, namespace);
        last.as_ref().is_some_and(|b| b["network_id"] == network)
    });
    last.unwrap()
}

fn port(lab: &Lab, id: &str) -> Option<Value> {
    let (s, v) = lab.api("GET", &format!("/v2.0/ports/{id}"), None);
    (s == 200).then(|| v["port"].clone())
}

/// The port a pod ADD made (by its address).
fn port_of(lab: &Lab, result: &Value) -> Value {
    let address = result["ips"][0]["address"].as_str().unwrap();
    let ip = address.split('/').next().unwrap();
    let (_, v) = lab.api(
        "GET",
        &format!("/v2.0/ports?fixed_ips=ip_address%3D{ip}"),
        None,
    );
    v["ports"][0].clone()
}

#[test]
fn namespaces_pods_and_leaked_ports_follow_the_cluster() {
    let Some((cloud, k8s)) = kube_cloud(1, "2") else {
        return isthmus_lab::skip("needs root and the lab's kernel features");
    };
    let lab = &cloud.lab;
    let (net_a, _) = shared_network(lab, "net-a", "10.61.0.0/24");
    let (net_b, _) = shared_network(lab, "net-b", "10.62.0.0/24");
    let (s, group) = lab.api(
        "POST",
        "/v2.0/security-groups",
        Some(&json!({"security_group": {"name": "web", "project_id": "proj-b"}})),
    );
    assert_eq!(s, 201, "{group}");
    let group = group["security_group"]["id"].as_str().unwrap().to_owned();

    // A namespace annotated with a network (by name) and a project: its binding follows.
    k8s.create(namespace(
        "team-a",
        json!({"isthmus.io/network": "net-a", "isthmus.io/project": "proj-a"}),
    ));
    k8s.create(namespace("plain", json!({})));
    let b = wait_binding(lab, "team-a", &net_a);
    assert_eq!(b["project_id"], "proj-a");
    assert_eq!(b["origin"], "kubernetes");
    assert!(binding(lab, "plain").is_none(), "no annotation, no binding");
    // While the annotation is there, it wins over the API.
    let (s, v) = lab.api(
        "PUT",
        "/isthmus/v1/namespace-bindings/team-a",
        Some(&json!({"namespace_binding": {"network_id": net_b}})),
    );
    assert_eq!(s, 409, "{v}");

    // A pod of that namespace, wired by the real plugin with the runtime's K8S_* args.
    let web1 = k8s.create(pod("team-a", "web-1", "node1"));
    let uid1 = web1["metadata"]["uid"].as_str().unwrap().to_owned();
    let sandbox1 = lab.add_pod().unwrap();
    let conf = cni_conf(&cloud, 0, json!({}));
    let args = |name: &str, uid: &str, ns: &str| {
        format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_UID={uid}")
    };
    let result = cni_add(
        &cloud,
        0,
        &sandbox1,
        "c-web-1",
        &args("web-1", &uid1, "team-a"),
        &conf,
    );
    let port1 = port_of(lab, &result);
    assert_eq!(port1["network_id"], net_a.as_str(), "{result}");
    assert_eq!(port1["project_id"], "proj-a");
    assert_eq!(port1["device_id"], uid1.as_str());
    // The watcher tells the cluster which port the pod has.
    let mut annotation = Value::Null;
    wait_for("the pod's port annotation", Duration::from_secs(15), || {
        annotation = k8s.get("Pod", "team-a", "web-1").unwrap()["metadata"]["annotations"]
            ["isthmus.io/port"]
            .as_str()
            .and_then(|a| serde_json::from_str(a).ok())
            .unwrap_or(Value::Null);
        !annotation.is_null()
    });
    assert_eq!(annotation["id"], port1["id"]);
    assert_eq!(annotation["mac"], port1["mac_address"]);
    assert_eq!(annotation["ips"][0], port1["fixed_ips"][0]["ip_address"]);

    // The annotation changes: the next pod goes to the new network, project and groups.
    k8s.patch(
        "Namespace",
        "",
        "team-a",
        json!({"metadata": {"annotations": {
            "isthmus.io/network": net_b, "isthmus.io/project": "proj-b",
            "isthmus.io/security-groups": "web"}}}),
    );
    let b = wait_binding(lab, "team-a", &net_b);
    assert_eq!(b["security_group_ids"], json!([group]));
    let web2 = k8s.create(pod("team-a", "web-2", "node1"));
    let uid2 = web2["metadata"]["uid"].as_str().unwrap().to_owned();
    let sandbox2 = lab.add_pod().unwrap();
    let result = cni_add(
        &cloud,
        0,
        &sandbox2,
        "c-web-2",
        &args("web-2", &uid2, "team-a"),
        &conf,
    );
    let port2 = port_of(lab, &result);
    assert_eq!(port2["network_id"], net_b.as_str(), "{result}");
    assert_eq!(port2["project_id"], "proj-b");
    assert_eq!(port2["security_groups"], json!([group]));

    // A pod deleted in the cluster whose runtime never calls DEL: its port goes after the
    // grace period; the other pod's stays.
    k8s.delete("Pod", "team-a", "web-1");
    let id1 = port1["id"].as_str().unwrap();
    wait_for(
        "the leaked port to be deleted",
        Duration::from_secs(20),
        || port(lab, id1).is_none(),
    );
    assert!(port(lab, port2["id"].as_str().unwrap()).is_some());

    // History compacted while the watch is cut: the watcher gets 410 Gone, lists again and
    // sees what changed meanwhile (the annotation removed: the binding goes).
    k8s.compact();
    k8s.patch(
        "Namespace",
        "",
        "team-a",
        json!({"metadata": {"annotations": {"isthmus.io/network": null}}}),
    );
    wait_for(
        "the binding to go with its annotation",
        Duration::from_secs(20),
        || binding(lab, "team-a").is_none(),
    );
    // The API may bind it again now.
    let (s, v) = lab.api(
        "PUT",
        "/isthmus/v1/namespace-bindings/team-a",
        Some(&json!({"namespace_binding": {"network_id": net_b}})),
    );
    assert_eq!(s, 201, "{v}");
    // And an API binding is left alone by the watcher (no annotation asks otherwise).
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(binding(lab, "team-a").unwrap()["origin"], "api");
    let lists = k8s
        .requests()
        .iter()
        .filter(|r| r.as_str() == "GET /api/v1/namespaces")
        .count();
    assert!(
        lists >= 3,
        "a first list, watches and a relist after 410: {lists}"
    );
}

/// Two controllers on one etcd watch one cluster: one holds the Lease and writes; killed, the
/// other takes the Lease over and carries on.
#[test]
fn a_standby_controller_takes_the_lease_when_the_leader_dies() {
    let Some(etcd) = EtcdServer::start_or_skip() else {
        return;
    };
    let k8s = ApiServer::start(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    k8s.kubeconfig(&kubeconfig);
    let start = |id: &str| {
        Controller::start(
            free_port(),
            &[
                "--store",
                "etcd",
                "--etcd-endpoints",
                &etcd.endpoint,
                "--kubeconfig",
                kubeconfig.to_str().unwrap(),
                "--kubernetes-lease-seconds",
                "3",
                "--controller-id",
                id,
            ],
        )
    };
    let first = start("first");
    let holder = || {
        k8s.get("Lease", "kube-system", "isthmus-controller")
            .map(|l| {
                l["spec"]["holderIdentity"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .unwrap_or_default()
    };
    wait_for(
        "the first controller to lead",
        Duration::from_secs(10),
        || holder() == "first",
    );
    let second = start("second");
    let (s, net) = first.http(
        "POST",
        "/v2.0/networks",
        Some(&json!({"network": {"name": "pods"}})),
    );
    assert_eq!(s, 201, "{net}");
    let net = net["network"]["id"].as_str().unwrap().to_owned();
    let bound = |c: &Controller, ns: &str| {
        let (s, v) = c.http("GET", &format!("/isthmus/v1/namespace-bindings/{ns}"), None);
        s == 200 && v["namespace_binding"]["network_id"] == net.as_str()
    };
    k8s.create(namespace("one", json!({"isthmus.io/network": "pods"})));
    wait_for("the leader to bind", Duration::from_secs(10), || {
        bound(&second, "one")
    });
    assert_eq!(holder(), "first", "the standby does not take a live lease");

    first.kill9();
    wait_for(
        "the standby to take the lease",
        Duration::from_secs(15),
        || holder() == "second",
    );
    let lease = k8s
        .get("Lease", "kube-system", "isthmus-controller")
        .unwrap();
    assert_eq!(lease["spec"]["leaseTransitions"], 1, "{lease}");
    k8s.create(namespace("two", json!({"isthmus.io/network": "pods"})));
    wait_for("the new leader to bind", Duration::from_secs(10), || {
        bound(&second, "two")
    });

    // A controller stopped with SIGTERM hands the lease over at once.
    let third = start("third");
    terminate(second.child.id());
    wait_for(
        "the third to take the released lease",
        Duration::from_secs(5),
        || holder() == "third",
    );
    drop(third);
}

fn terminate(pid: u32) {
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
}
