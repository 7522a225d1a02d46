//! Nodes, agents, port status and the node watch stream.

mod common;

use std::sync::Arc;

use common::{fault, Api, As, Watch};
use isthmus_store::MemoryStore;
use serde_json::{json, Value};

fn kinds(lines: &[Value], ty: &str) -> Vec<String> {
    let mut k: Vec<String> = lines
        .iter()
        .filter(|l| l["type"] == ty)
        .map(|l| l["kind"].as_str().unwrap().to_owned())
        .collect();
    k.sort();
    k
}

async fn register(api: &Api, name: &str, ip: &str) -> (u16, Value) {
    api.call(
        As::Anonymous,
        "POST",
        "/isthmus/v1/nodes",
        Some(json!({"node": {"name": name, "tunnel_ip": ip, "roles": ["compute"], "physnets": {"public": "eth1"}}})),
    )
    .await
}

#[tokio::test]
async fn nodes_register_and_appear_as_agents() {
    let api = Api::memory();
    let (s, v) = register(&api, "node1", "10.0.0.11").await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["node"]["alive"], true);
    let (s, again) = register(&api, "node1", "10.0.0.12").await;
    assert_eq!(s, 200, "re-registration updates");
    assert_eq!(
        again["node"]["id"], v["node"]["id"],
        "the agent id is stable"
    );
    assert_eq!(again["node"]["tunnel_ip"], "10.0.0.12");
    let (s, _) = api
        .call(
            As::Anonymous,
            "PUT",
            "/isthmus/v1/nodes/node1/heartbeat",
            None,
        )
        .await;
    assert_eq!(s, 204);
    let (s, v) = api
        .call(
            As::Anonymous,
            "PUT",
            "/isthmus/v1/nodes/ghost/heartbeat",
            None,
        )
        .await;
    assert_eq!((s, fault(&v)), (404, "NodeNotFound"));
    let (_, agents) = api.call(As::Anonymous, "GET", "/v2.0/agents", None).await;
    let agent = &agents["agents"][0];
    assert_eq!(agent["host"], "node1");
    assert_eq!(agent["alive"], true);
    assert_eq!(agent["configurations"]["tunneling_ip"], "10.0.0.12");
    let (s, _) = api
        .call(
            As::Anonymous,
            "GET",
            &format!("/v2.0/agents/{}", agent["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let (s, v) = api.call(As::Member("p"), "GET", "/v2.0/agents", None).await;
    assert_eq!((s, fault(&v)), (403, "PolicyNotAuthorized"));
    let (s, _) = api
        .call(
            As::Anonymous,
            "POST",
            "/isthmus/v1/nodes",
            Some(json!({"node": {"name": "bad name", "tunnel_ip": "10.0.0.1"}})),
        )
        .await;
    assert_eq!(s, 400);
    let (s, _) = api
        .call(As::Anonymous, "DELETE", "/isthmus/v1/nodes/node1", None)
        .await;
    assert_eq!(s, 204);
    let (_, agents) = api.call(As::Anonymous, "GET", "/v2.0/agents", None).await;
    assert_eq!(agents["agents"], json!([]));
}

#[tokio::test]
async fn watch_streams_exactly_the_nodes_view() {
    let api = Api::memory();
    register(&api, "node1", "10.0.0.11").await;
    register(&api, "node2", "10.0.0.12").await;
    let (s, v) = api
        .call(As::Anonymous, "GET", "/isthmus/v1/watch", None)
        .await;
    assert_eq!((s, fault(&v)), (400, "HTTPBadRequest"));
    let (s, v) = api
        .call(As::Anonymous, "GET", "/isthmus/v1/watch?node=ghost", None)
        .await;
    assert_eq!((s, fault(&v)), (404, "NodeNotFound"));

    let mut w = Watch::open(&api, "node=node1").await;
    let snapshot = w.snapshot().await;
    assert_eq!(
        kinds(&snapshot, "ADDED"),
        ["node", "node"],
        "a fresh node sees only the nodes"
    );

    let (net_a, _) = api.network_with_subnet(As::Anonymous, "10.10.0.0/24").await;
    let (net_b, _) = api.network_with_subnet(As::Anonymous, "10.20.0.0/24").await;
    // A port on net-b bound to node2, in no security group, is none of node1's business.
    // (Members of a group node1's rules name as remote would be: their addresses fill sets.)
    api.create(
        As::Anonymous,
        "ports",
        "port",
        json!({"network_id": net_b, "binding:host_id": "node2", "port_security_enabled": false}),
    )
    .await;
    // The first local port brings its network, subnet, group, the network's DHCP port and
    // itself.
    let local = api
        .create(
            As::Anonymous,
            "ports",
            "port",
            json!({"network_id": net_a, "binding:host_id": "node1"}),
        )
        .await;
    let local_id = local["id"].as_str().unwrap();
    let mut added = Vec::new();
    while added.len() < 5 {
        let line = w.next().await;
        if line["type"] == "BOOKMARK" {
            continue;
        }
        assert_eq!(line["type"], "ADDED", "{line}");
        assert_ne!(
            line["object"]["network_id"],
            json!(net_b),
            "a net-b object leaked: {line}"
        );
        added.push(line);
    }
    assert_eq!(
        kinds(&added, "ADDED"),
        ["network", "port", "port", "security_group", "subnet"]
    );
    assert!(added
        .iter()
        .any(|l| l["kind"] == "port" && l["object"]["device_owner"] == "network:dhcp"));
    let group = added
        .iter()
        .find(|l| l["kind"] == "security_group")
        .unwrap();
    assert_eq!(
        group["object"]["security_group_rules"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    let port = added
        .iter()
        .find(|l| l["kind"] == "port" && l["object"]["id"] == local_id)
        .unwrap();
    assert_eq!(port["object"]["binding:host_id"], "node1");

    // A remote port on the same network is needed for forwarding entries.
    let remote = api
        .create(
            As::Anonymous,
            "ports",
            "port",
            json!({"network_id": net_a, "binding:host_id": "node2"}),
        )
        .await;
    let line = w.until(|l| l["type"] != "BOOKMARK").await;
    assert_eq!(
        (line["type"].as_str(), line["kind"].as_str()),
        (Some("ADDED"), Some("port"))
    );
    assert_eq!(line["object"]["id"], remote["id"]);

    // Status reports come back as modifications; only the bound node may report.
    let (s, v) = api
        .call(
            As::Anonymous,
            "PUT",
            &format!("/isthmus/v1/ports/{local_id}/status"),
            Some(json!({"status": "ACTIVE", "node": "node2"})),
        )
        .await;
    assert_eq!((s, fault(&v)), (409, "Conflict"));
    let (s, v) = api
        .call(
            As::Anonymous,
            "PUT",
            &format!("/isthmus/v1/ports/{local_id}/status"),
            Some(json!({"status": "ACTIVE", "node": "node1"})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["port"]["status"], "ACTIVE");
    let line = w.until(|l| l["type"] != "BOOKMARK").await;
    assert_eq!(line["type"], "MODIFIED");
    assert_eq!(line["object"]["status"], "ACTIVE");

    // A rule change reaches the node inside its group.
    let group_id = group["object"]["id"].as_str().unwrap();
    api.create(
        As::Anonymous,
        "security-group-rules",
        "security_group_rule",
        json!({"security_group_id": group_id, "direction": "ingress", "protocol": "icmp"}),
    )
    .await;
    let line = w.until(|l| l["type"] != "BOOKMARK").await;
    assert_eq!(
        (line["type"].as_str(), line["kind"].as_str()),
        (Some("MODIFIED"), Some("security_group"))
    );
    assert_eq!(
        line["object"]["security_group_rules"]
            .as_array()
            .unwrap()
            .len(),
        5
    );

    // The last local port leaves: everything but the nodes goes.
    api.call(
        As::Anonymous,
        "DELETE",
        &format!("/v2.0/ports/{local_id}"),
        None,
    )
    .await;
    let mut deleted = Vec::new();
    while deleted.len() < 6 {
        let line = w.until(|l| l["type"] != "BOOKMARK").await;
        assert_eq!(line["type"], "DELETED", "{line}");
        deleted.push(line);
    }
    assert_eq!(
        kinds(&deleted, "DELETED"),
        [
            "network",
            "port",
            "port",
            "port",
            "security_group",
            "subnet"
        ]
    );

    // A reconnect gets a consistent snapshot of the current view.
    let mut again = Watch::open(&api, "node=node2").await;
    let snap = again.snapshot().await;
    assert_eq!(
        kinds(&snap, "ADDED"),
        [
            "network",
            "network",
            "node",
            "node",
            "port",
            "port",
            "port",
            "port",
            "security_group",
            "subnet",
            "subnet"
        ]
    );
}

#[tokio::test]
async fn watch_tells_a_client_behind_compaction_to_relist() {
    let api = Api::on(Arc::new(MemoryStore::with_history(4)));
    register(&api, "node1", "10.0.0.11").await;
    for i in 0..10 {
        api.create(
            As::Anonymous,
            "networks",
            "network",
            json!({"name": format!("n{i}")}),
        )
        .await;
    }
    let mut w = Watch::open(&api, "node=node1&from=1").await;
    let line = w.next().await;
    assert_eq!(line["type"], "RELIST", "{line}");
    let mut fresh = Watch::open(&api, "node=node1").await;
    assert_eq!(kinds(&fresh.snapshot().await, "ADDED"), ["node"]);
}

#[tokio::test]
async fn bulk_creates_are_all_or_nothing_for_the_store_and_for_watchers() {
    let api = Api::memory();
    register(&api, "node1", "10.0.0.11").await;
    let (net, subnet) = api.network_with_subnet(As::Anonymous, "10.30.0.0/24").await;
    let port = |extra: Value| {
        let mut body = json!({"network_id": net, "binding:host_id": "node1"});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    // A first port brings the network into node1's view.
    api.create(As::Anonymous, "ports", "port", port(json!({})))
        .await;
    let claims = api.keys(&format!("/isthmus/ipam/{subnet}/")).await.len();
    let mut w = Watch::open(&api, "node=node1").await;
    w.snapshot().await;

    // Ten ports whose tenth asks for an address outside the subnet: none of them is made.
    let mut items: Vec<Value> = (0..9).map(|_| port(json!({}))).collect();
    items.push(port(
        json!({"fixed_ips": [{"subnet_id": subnet, "ip_address": "10.99.0.5"}]}),
    ));
    let (s, v) = api
        .call(
            As::Anonymous,
            "POST",
            "/v2.0/ports",
            Some(json!({ "ports": items })),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let (_, listed) = api.call(As::Anonymous, "GET", "/v2.0/ports", None).await;
    assert_eq!(
        listed["ports"].as_array().unwrap().len(),
        2,
        "no port of the bulk is left (the first and the DHCP port are)"
    );
    assert_eq!(
        api.keys(&format!("/isthmus/ipam/{subnet}/")).await.len(),
        claims,
        "no address of the bulk is left"
    );

    // A bulk that succeeds reaches the watch whole, in one revision; nothing of the failed
    // one ever did.
    let items: Vec<Value> = (0..3).map(|_| port(json!({}))).collect();
    let (s, v) = api
        .call(
            As::Anonymous,
            "POST",
            "/v2.0/ports",
            Some(json!({ "ports": items })),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let made: Vec<&str> = v["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    let mut seen = Vec::new();
    let mut revisions = std::collections::BTreeSet::new();
    while seen.len() < 3 {
        let line = w.until(|l| l["type"] != "BOOKMARK").await;
        if line["kind"] == "port" {
            assert_eq!(line["type"], "ADDED", "{line}");
            seen.push(line["object"]["id"].as_str().unwrap().to_owned());
            revisions.insert(line["revision"].as_u64().unwrap());
        }
    }
    seen.sort();
    let mut made: Vec<String> = made.into_iter().map(str::to_owned).collect();
    made.sort();
    assert_eq!(seen, made, "the watch saw exactly the bulk that was made");
    assert_eq!(revisions.len(), 1, "one transaction: {revisions:?}");
}

/// What a client holds after `lines`, as a resume body.
fn held(lines: &[Value]) -> Value {
    let mut held = serde_json::Map::new();
    for l in lines {
        let ids = held
            .entry(l["kind"].as_str().unwrap().to_owned())
            .or_insert_with(|| json!({}));
        match l["type"].as_str().unwrap() {
            "DELETED" => {
                ids.as_object_mut()
                    .unwrap()
                    .remove(l["id"].as_str().unwrap());
            }
            _ => ids[l["id"].as_str().unwrap()] = l["revision"].clone(),
        }
    }
    json!({ "held": held })
}

#[tokio::test]
async fn a_reconnecting_client_gets_only_what_changed_while_it_was_away() {
    let api = Api::memory();
    assert_eq!(register(&api, "node1", "10.0.0.11").await.0, 201);
    let (net, _) = api.network_with_subnet(As::Anonymous, "10.9.0.0/24").await;
    let port = |host: &str| json!({"port": {"network_id": net, "binding:host_id": host}});
    let (s, _) = api
        .call(As::Anonymous, "POST", "/v2.0/ports", Some(port("node1")))
        .await;
    assert_eq!(s, 201);
    let (_, gone) = api
        .call(As::Anonymous, "POST", "/v2.0/ports", Some(port("")))
        .await;
    let mut w = Watch::open(&api, "node=node1").await;
    let snapshot = w.snapshot().await;
    assert!(snapshot.len() >= 5, "{snapshot:?}");
    drop(w);
    let body = held(&snapshot);

    // Back with nothing changed: the stream opens with its synced bookmark.
    let mut w = Watch::resume(&api, "node=node1", &body).await;
    assert_eq!(w.snapshot().await, Vec::<Value>::new());
    drop(w);

    // Meanwhile a port is added, one deleted and the network renamed: exactly those come.
    let (s, added) = api
        .call(As::Anonymous, "POST", "/v2.0/ports", Some(port("")))
        .await;
    assert_eq!(s, 201);
    let gone_id = gone["port"]["id"].as_str().unwrap();
    let (s, _) = api
        .call(
            As::Anonymous,
            "DELETE",
            &format!("/v2.0/ports/{gone_id}"),
            None,
        )
        .await;
    assert_eq!(s, 204);
    let (s, _) = api
        .call(
            As::Anonymous,
            "PUT",
            &format!("/v2.0/networks/{net}"),
            Some(json!({"network": {"name": "renamed"}})),
        )
        .await;
    assert_eq!(s, 200);
    let mut w = Watch::resume(&api, "node=node1", &body).await;
    // (The controller's mirror may take the writes after the stream opened: they follow.)
    let mut changes = w.snapshot().await;
    while changes.len() < 3 {
        changes.push(w.until(|l| l["type"] != "BOOKMARK").await);
    }
    let mut got: Vec<(String, String, String)> = changes
        .iter()
        .map(|l| {
            let id = l["id"].as_str().unwrap().to_owned();
            (
                l["type"].as_str().unwrap().to_owned(),
                l["kind"].as_str().unwrap().to_owned(),
                id,
            )
        })
        .collect();
    got.sort();
    let mut want = vec![
        (
            "ADDED".to_owned(),
            "port".to_owned(),
            added["port"]["id"].as_str().unwrap().to_owned(),
        ),
        ("DELETED".to_owned(), "port".to_owned(), gone_id.to_owned()),
        ("MODIFIED".to_owned(), "network".to_owned(), net.clone()),
    ];
    want.sort();
    assert_eq!(got, want);

    // A body that is not a held map is refused in Neutron's format.
    let req = axum::http::Request::builder()
        .method("POST")
        .uri("/isthmus/v1/watch?node=node1")
        .body(axum::body::Body::from(r#"{"held": {"port": {"p": "x"}}}"#))
        .unwrap();
    let response = tower::ServiceExt::oneshot(api.router.clone(), req)
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}
