//! The Octavia API on the in-process router: provisioning status follows what the nodes that
//! need a load balancer report applied; Octavia's errors and policy.

mod common;

use common::{Api, As};
use serde_json::{json, Value};

async fn lbaas(api: &Api, who: As<'_>, path: &str, kind: &str, body: Value) -> Value {
    let (s, v) = api
        .call(
            who,
            "POST",
            &format!("/v2/lbaas/{path}"),
            Some(json!({ kind: body })),
        )
        .await;
    assert_eq!(s, 201, "{path}: {v}");
    v[kind].clone()
}

async fn status_of(api: &Api, path: &str, kind: &str) -> String {
    let (s, v) = api
        .call(As::Anonymous, "GET", &format!("/v2/lbaas/{path}"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    v[kind]["provisioning_status"].as_str().unwrap().to_owned()
}

async fn revision(api: &Api) -> u64 {
    api.store.revision().await.unwrap()
}

/// Registers nodes n1 and n2.
async fn register_nodes(api: &Api) {
    for (name, ip) in [("n1", "192.0.2.1"), ("n2", "192.0.2.2")] {
        let (s, v) = api
            .call(
                As::Anonymous,
                "POST",
                "/isthmus/v1/nodes",
                Some(json!({"node": {"name": name, "tunnel_ip": ip}})),
            )
            .await;
        assert!(s == 201 || s == 200, "{v}");
    }
}

#[tokio::test]
async fn provisioning_waits_for_the_nodes_that_balance_the_vip() {
    let api = Api::memory();
    let (net, subnet) = api
        .network_with_subnet(As::Member("p1"), "10.0.0.0/24")
        .await;
    // Node n1 hosts a port on the VIP's network; n2 hosts nothing there.
    register_nodes(&api).await;
    api.create(
        As::Anonymous,
        "ports",
        "port",
        json!({"network_id": net, "project_id": "p1", "binding:host_id": "n1"}),
    )
    .await;
    let lb = lbaas(
        &api,
        As::Member("p1"),
        "loadbalancers",
        "loadbalancer",
        json!({"vip_subnet_id": subnet}),
    )
    .await;
    let lb_path = format!("loadbalancers/{}", lb["id"].as_str().unwrap());
    assert_eq!(lb["provisioning_status"], "PENDING_CREATE", "{lb}");
    let applied = |rev: u64, node: &'static str| {
        let api = api.clone();
        async move {
            let (s, v) = api
                .call(
                    As::Anonymous,
                    "PUT",
                    &format!("/isthmus/v1/nodes/{node}/applied"),
                    Some(json!({"revision": rev})),
                )
                .await;
            assert_eq!(s, 204, "{v}");
        }
    };
    // n2's report does not count: it does not need this load balancer.
    applied(revision(&api).await, "n2").await;
    assert_eq!(
        status_of(&api, &lb_path, "loadbalancer").await,
        "PENDING_CREATE"
    );
    applied(revision(&api).await, "n1").await;
    assert_eq!(status_of(&api, &lb_path, "loadbalancer").await, "ACTIVE");

    let listener = lbaas(
        &api,
        As::Member("p1"),
        "listeners",
        "listener",
        json!({"loadbalancer_id": lb["id"], "protocol": "TCP", "protocol_port": 80}),
    )
    .await;
    assert_eq!(listener["provisioning_status"], "PENDING_CREATE");
    assert_eq!(
        status_of(&api, &lb_path, "loadbalancer").await,
        "PENDING_UPDATE"
    );
    applied(revision(&api).await, "n1").await;
    assert_eq!(status_of(&api, &lb_path, "loadbalancer").await, "ACTIVE");
    let (_, list) = api
        .call(As::Member("p1"), "GET", "/v2/lbaas/listeners", None)
        .await;
    assert_eq!(
        list["listeners"][0]["provisioning_status"], "ACTIVE",
        "{list}"
    );

    // Reports are for agents; the wrong body is refused.
    let (s, _) = api
        .call(
            As::Member("p1"),
            "PUT",
            "/isthmus/v1/nodes/n1/applied",
            Some(json!({"revision": 1})),
        )
        .await;
    assert_eq!(s, 403);
    let (s, _) = api
        .call(
            As::Anonymous,
            "PUT",
            "/isthmus/v1/nodes/n1/applied",
            Some(json!({"revision": "x"})),
        )
        .await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn octavia_errors_and_policy() {
    let api = Api::memory();
    let (_, subnet) = api
        .network_with_subnet(As::Member("p1"), "10.0.0.0/24")
        .await;
    let lb = lbaas(
        &api,
        As::Member("p1"),
        "loadbalancers",
        "loadbalancer",
        json!({"vip_subnet_id": subnet}),
    )
    .await;
    let id = lb["id"].as_str().unwrap();
    // Another project sees nothing, in Octavia's words and format.
    let (s, v) = api
        .call(
            As::Member("p2"),
            "GET",
            &format!("/v2/lbaas/loadbalancers/{id}"),
            None,
        )
        .await;
    assert_eq!(s, 404);
    assert_eq!(v["faultstring"], format!("Load Balancer {id} not found."));
    assert_eq!(v["faultcode"], "Client");
    // A reader reads but does not write.
    let (s, _) = api
        .call(
            As::Reader("p1"),
            "GET",
            &format!("/v2.0/lbaas/loadbalancers/{id}"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let (s, v) = api
        .call(
            As::Reader("p1"),
            "PUT",
            &format!("/v2/lbaas/loadbalancers/{id}"),
            Some(json!({"loadbalancer": {"name": "x"}})),
        )
        .await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(
        v["faultstring"],
        "Policy does not allow this request to be performed."
    );
    // Unknown attributes, L7 and TLS are refused before anything is made.
    let (s, v) = api
        .call(
            As::Member("p1"),
            "POST",
            "/v2/lbaas/listeners",
            Some(
                json!({"listener": {"loadbalancer_id": id, "protocol": "TERMINATED_HTTPS",
                                       "protocol_port": 443}}),
            ),
        )
        .await;
    assert_eq!(s, 501, "{v}");
    let (s, _) = api
        .call(
            As::Member("p1"),
            "POST",
            "/v2/lbaas/listeners",
            Some(
                json!({"listener": {"loadbalancer_id": id, "protocol": "TCP", "protocol_port": 80,
                                       "bogus": 1}}),
            ),
        )
        .await;
    assert_eq!(s, 400);
    let (_, listeners) = api
        .call(As::Member("p1"), "GET", "/v2/lbaas/listeners", None)
        .await;
    assert_eq!(listeners["listeners"], json!([]));
    // Members live under their pool only.
    let (s, v) = api
        .call(As::Member("p1"), "GET", "/v2/lbaas/members", None)
        .await;
    assert_eq!(s, 404, "{v}");
    assert!(v["faultstring"].is_string(), "{v}");
    // Without credentials a keystone-less controller still answers in Octavia's format.
    let (s, v) = api
        .call(As::Member("p1"), "PATCH", "/v2/lbaas/loadbalancers", None)
        .await;
    assert_eq!(s, 405, "{v}");
    assert!(v["faultstring"].is_string(), "{v}");
    // Deleting a load balancer with children needs cascade; cascade removes the VIP port too.
    lbaas(
        &api,
        As::Member("p1"),
        "listeners",
        "listener",
        json!({"loadbalancer_id": id, "protocol": "UDP", "protocol_port": 53}),
    )
    .await;
    let (s, v) = api
        .call(
            As::Member("p1"),
            "DELETE",
            &format!("/v2/lbaas/loadbalancers/{id}"),
            None,
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, _) = api
        .call(
            As::Member("p1"),
            "DELETE",
            &format!("/v2/lbaas/loadbalancers/{id}?cascade=true"),
            None,
        )
        .await;
    assert_eq!(s, 204);
    let (_, ports) = api
        .call(
            As::Anonymous,
            "GET",
            "/v2.0/ports?device_owner=Octavia",
            None,
        )
        .await;
    assert_eq!(ports["ports"], json!([]));
    assert!(api.keys("/isthmus/listeners/").await.is_empty());
}

#[tokio::test]
async fn statistics_are_the_nodes_reports_summed() {
    let api = Api::memory();
    let (_, subnet) = api
        .network_with_subnet(As::Member("p1"), "10.0.0.0/24")
        .await;
    register_nodes(&api).await;
    let lb = lbaas(
        &api,
        As::Member("p1"),
        "loadbalancers",
        "loadbalancer",
        json!({"vip_subnet_id": subnet}),
    )
    .await;
    let mut listeners = Vec::new();
    for port in [80, 81] {
        let l = lbaas(
            &api,
            As::Member("p1"),
            "listeners",
            "listener",
            json!({"loadbalancer_id": lb["id"], "protocol": "TCP", "protocol_port": port}),
        )
        .await;
        listeners.push(l["id"].as_str().unwrap().to_owned());
    }
    let stats = |bytes: u64, active: u64| {
        json!({"bytes_in": bytes, "bytes_out": 2 * bytes, "active_connections": active,
               "total_connections": 10, "request_errors": 1})
    };
    let report = |node: &'static str, body: Value| {
        let api = api.clone();
        async move {
            api.call(
                As::Anonymous,
                "PUT",
                &format!("/isthmus/v1/nodes/{node}/lb-stats"),
                Some(body),
            )
            .await
        }
    };
    let (a, b) = (&listeners[0], &listeners[1]);
    let (s, v) = report(
        "n1",
        json!({"listeners": {a: stats(100, 2), b: stats(5, 1)}}),
    )
    .await;
    assert_eq!(s, 204, "{v}");
    let (s, v) = report("n2", json!({"listeners": {a: stats(50, 7)}})).await;
    assert_eq!(s, 204, "{v}");
    let get = |path: String| {
        let api = api.clone();
        async move { api.call(As::Reader("p1"), "GET", &path, None).await }
    };
    let (s, v) = get(format!("/v2/lbaas/listeners/{a}/stats")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["stats"],
        json!({"bytes_in": 150, "bytes_out": 300, "active_connections": 9,
               "total_connections": 20, "request_errors": 2})
    );
    let (s, v) = get(format!(
        "/v2/lbaas/loadbalancers/{}/stats",
        lb["id"].as_str().unwrap()
    ))
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["stats"],
        json!({"bytes_in": 155, "bytes_out": 310, "active_connections": 10,
               "total_connections": 30, "request_errors": 3})
    );
    // A node deleted takes its reports with it.
    let (s, _) = api
        .call(As::Anonymous, "DELETE", "/isthmus/v1/nodes/n2", None)
        .await;
    assert_eq!(s, 204);
    let (_, v) = get(format!("/v2/lbaas/listeners/{a}/stats")).await;
    assert_eq!(v["stats"]["bytes_in"], 100, "{v}");
    // A report carries what changed: a listener gone (null) goes, the others stay; one with
    // `replace` starts the node's statistics afresh.
    let bytes_in = |listener: String| async move {
        get(format!("/v2/lbaas/listeners/{listener}/stats")).await.1["stats"]["bytes_in"].clone()
    };
    let (s, v) = report("n1", json!({"listeners": {b: null}})).await;
    assert_eq!(s, 204, "{v}");
    assert_eq!(bytes_in(b.clone()).await, 0);
    assert_eq!(bytes_in(a.clone()).await, 100);
    // Thousands of listeners in one report (spread over the node's shards) and a change to one.
    let mut many: serde_json::Map<String, Value> = (0..3000)
        .map(|i| (format!("other-{i}"), stats(1, 0)))
        .collect();
    many.insert(a.clone(), stats(7, 0));
    let (s, v) = report("n1", json!({ "listeners": many })).await;
    assert_eq!(s, 204, "{v}");
    assert_eq!(bytes_in(a.clone()).await, 7);
    let (s, v) = report(
        "n1",
        json!({"listeners": {b: stats(3, 0)}, "replace": true}),
    )
    .await;
    assert_eq!(s, 204, "{v}");
    assert_eq!(bytes_in(a.clone()).await, 0);
    assert_eq!(bytes_in(b.clone()).await, 3);
    let (s, _) = report("n1", json!({"listeners": {}, "replace": "yes"})).await;
    assert_eq!(s, 400);

    // Another project sees nothing; pools have no statistics; only agents report.
    let (s, v) = api
        .call(
            As::Member("p2"),
            "GET",
            &format!("/v2/lbaas/listeners/{a}/stats"),
            None,
        )
        .await;
    assert_eq!(s, 404, "{v}");
    assert!(v["faultstring"].is_string(), "{v}");
    let (s, _) = get(format!("/v2/lbaas/pools/{a}/stats")).await;
    assert_eq!(s, 404);
    let (s, _) = api
        .call(
            As::Member("p1"),
            "PUT",
            "/isthmus/v1/nodes/n1/lb-stats",
            Some(json!({"listeners": {}})),
        )
        .await;
    assert_eq!(s, 403);
    let (s, _) = report("n1", json!({"listeners": {a: {"bytes_in": -1}}})).await;
    assert_eq!(s, 400);
    let (s, _) = report("nobody", json!({"listeners": {}})).await;
    assert_eq!(s, 404);
}
