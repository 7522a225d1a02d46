//! Neutron's semantics where clients notice them: pagination links, filter-only attributes,
//! MTU conflicts, network-owner rights, bulk bodies.

mod common;

use common::{fault, Api, As};
use serde_json::{json, Value};

const A: As = As::Member("project-a");
const B: As = As::Member("project-b");

fn links(v: &Value, collection: &str) -> Vec<(String, String)> {
    v[format!("{collection}_links")]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|x| {
                    (
                        x["rel"].as_str().unwrap().to_owned(),
                        x["href"]
                            .as_str()
                            .unwrap()
                            .trim_start_matches("http://test:9696")
                            .to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn names(v: &Value) -> Vec<String> {
    v["networks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn pagination_links_as_neutron_draws_them() {
    let api = Api::memory();
    for i in 0..4 {
        api.create(A, "networks", "network", json!({"name": format!("n{i}")}))
            .await;
    }
    let (_, v) = api
        .call(A, "GET", "/v2.0/networks?sort_key=name&limit=2", None)
        .await;
    assert_eq!(names(&v), ["n0", "n1"]);
    let l = links(&v, "networks");
    assert_eq!(
        l.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(),
        ["next", "previous"]
    );
    // The second page is full: Neutron still links a next one, which is empty.
    let (_, v) = api.call(A, "GET", &l[0].1, None).await;
    assert_eq!(names(&v), ["n2", "n3"]);
    let l = links(&v, "networks");
    assert_eq!(l[0].0, "next");
    let (_, v) = api.call(A, "GET", &l[0].1, None).await;
    assert_eq!(names(&v), Vec::<String>::new());
    let last = links(&v, "networks");
    assert_eq!(
        last.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(),
        ["previous"]
    );
    // Paging back from a marker.
    let (_, v) = api.call(A, "GET", &l[1].1, None).await;
    assert_eq!(names(&v), ["n0", "n1"]);
    // page_reverse without a marker is the last page.
    let (_, v) = api
        .call(
            A,
            "GET",
            "/v2.0/networks?sort_key=name&limit=3&page_reverse=True",
            None,
        )
        .await;
    assert_eq!(names(&v), ["n1", "n2", "n3"]);
    let l = links(&v, "networks");
    assert_eq!(
        l.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(),
        ["next", "previous"]
    );
    assert!(l[1].1.contains("page_reverse=True") && l[1].1.contains("marker="));
    // Without limit, no links and no marker.
    let (_, v) = api.call(A, "GET", "/v2.0/networks", None).await;
    assert!(v.get("networks_links").is_none());
}

#[tokio::test]
async fn subnets_filter_on_shared_without_showing_it() {
    let api = Api::memory();
    let shared = api
        .create(
            As::Anonymous,
            "networks",
            "network",
            json!({"name": "shared", "shared": true}),
        )
        .await;
    let shared_id = shared["id"].as_str().unwrap();
    api.create(
        As::Anonymous,
        "subnets",
        "subnet",
        json!({"network_id": shared_id, "ip_version": 4, "cidr": "10.9.0.0/24"}),
    )
    .await;
    let (_, own) = api.network_with_subnet(A, "10.1.0.0/24").await;
    let (_, v) = api.call(A, "GET", "/v2.0/subnets?shared=true", None).await;
    assert_eq!(v["subnets"].as_array().unwrap().len(), 1);
    assert_eq!(v["subnets"][0]["network_id"], shared_id);
    assert!(
        v["subnets"][0].get("shared").is_none(),
        "a filter, not an attribute"
    );
    let (_, v) = api.call(A, "GET", "/v2.0/subnets?shared=false", None).await;
    assert_eq!(v["subnets"][0]["id"], json!(own));
    let (s, _) = api
        .call(
            A,
            "POST",
            "/v2.0/subnets",
            Some(json!({"subnet": {"network_id": shared_id,
            "ip_version": 4, "cidr": "10.8.0.0/24", "shared": true}})),
        )
        .await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn mtu_too_small_for_ipv6_conflicts() {
    let api = Api::memory();
    let net = api
        .create(
            A,
            "networks",
            "network",
            json!({"name": "small", "mtu": 1200}),
        )
        .await;
    let net_id = net["id"].as_str().unwrap().to_owned();
    let v6 = json!({"subnet": {"network_id": net_id, "ip_version": 6, "cidr": "2001:db8::/64"}});
    let (s, v) = api.call(A, "POST", "/v2.0/subnets", Some(v6.clone())).await;
    assert_eq!((s, fault(&v)), (409, "Conflict"));
    let path = format!("/v2.0/networks/{net_id}");
    let (s, _) = api
        .call(A, "PUT", &path, Some(json!({"network": {"mtu": 1400}})))
        .await;
    assert_eq!(s, 200);
    assert_eq!(api.call(A, "POST", "/v2.0/subnets", Some(v6)).await.0, 201);
    let (s, v) = api
        .call(A, "PUT", &path, Some(json!({"network": {"mtu": 1279}})))
        .await;
    assert_eq!((s, fault(&v)), (409, "Conflict"));
    let (s, _) = api
        .call(A, "PUT", &path, Some(json!({"network": {"mtu": 67}})))
        .await;
    assert_eq!(s, 400, "below IPv4's minimum on any network");
}

#[tokio::test]
async fn network_owners_keep_port_security_and_see_the_ports() {
    let api = Api::memory();
    let net = api
        .create(
            As::Admin("project-a"),
            "networks",
            "network",
            json!({"name": "shared", "shared": true}),
        )
        .await;
    let net_id = net["id"].as_str().unwrap().to_owned();
    api.create(
        As::Admin("project-a"),
        "subnets",
        "subnet",
        json!({"network_id": net_id, "ip_version": 4, "cidr": "10.5.0.0/24"}),
    )
    .await;
    for (extra, rule) in [
        (
            json!({"port_security_enabled": false, "security_groups": []}),
            "rule:create_port:port_security_enabled",
        ),
        (
            json!({"allowed_address_pairs": [{"ip_address": "10.5.0.99"}]}),
            "rule:create_port:allowed_address_pairs",
        ),
    ] {
        let mut body = json!({"network_id": net_id});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (s, v) = api
            .call(B, "POST", "/v2.0/ports", Some(json!({ "port": body })))
            .await;
        assert_eq!((s, fault(&v)), (403, "PolicyNotAuthorized"), "{v}");
        assert!(v["NeutronError"]["message"]
            .as_str()
            .unwrap()
            .contains(rule));
    }
    let port = api
        .create(
            B,
            "ports",
            "port",
            json!({"network_id": net_id, "name": "b"}),
        )
        .await;
    let port_id = port["id"].as_str().unwrap();
    let (s, v) = api
        .call(
            B,
            "PUT",
            &format!("/v2.0/ports/{port_id}"),
            Some(json!({"port": {"port_security_enabled": false}})),
        )
        .await;
    assert_eq!((s, fault(&v)), (403, "PolicyNotAuthorized"));
    // The network's owner sees ports of others on its network; others still do not.
    assert_eq!(
        api.call(A, "GET", &format!("/v2.0/ports/{port_id}"), None)
            .await
            .0,
        200
    );
    let (_, v) = api
        .call(
            A,
            "GET",
            &format!("/v2.0/ports?network_id={net_id}&name=b"),
            None,
        )
        .await;
    assert_eq!(v["ports"].as_array().unwrap().len(), 1);
    assert_eq!(
        api.call(
            As::Member("project-c"),
            "GET",
            &format!("/v2.0/ports/{port_id}"),
            None
        )
        .await
        .0,
        404
    );
}

#[tokio::test]
async fn bulk_items_bare_or_wrapped() {
    let api = Api::memory();
    let (s, v) = api
        .call(
            A,
            "POST",
            "/v2.0/networks",
            Some(json!({"networks": [
            {"network": {"name": "wrapped"}}, {"name": "bare"}]})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["networks"][0]["name"], "wrapped");
    assert_eq!(v["networks"][1]["name"], "bare");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_bulk_creates_all_land_with_distinct_addresses() {
    // On the durable store every write yields, so the bulks interleave as on a server.
    let dir = tempfile::tempdir().unwrap();
    let store = isthmus_store::EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
    let api = Api::on(std::sync::Arc::new(store));
    let (net, _) = api.network_with_subnet(As::Anonymous, "10.50.0.0/22").await;
    let (s, _) = api
        .call(
            As::Anonymous,
            "PUT",
            "/v2.0/quotas/fake_project_id",
            Some(json!({"quota": {"port": 2000}})),
        )
        .await;
    assert_eq!(s, 200);
    let bulks: Vec<_> = (0..16)
        .map(|b| {
            let api = api.clone();
            let net = net.clone();
            tokio::spawn(async move {
                let items: Vec<Value> = (0..60)
                    .map(|i| json!({"network_id": net, "name": format!("b{b}-{i}")}))
                    .collect();
                api.call(
                    As::Anonymous,
                    "POST",
                    "/v2.0/ports",
                    Some(json!({ "ports": items })),
                )
                .await
            })
        })
        .collect();
    let mut ips = std::collections::HashSet::new();
    for bulk in bulks {
        let (s, v) = bulk.await.unwrap();
        assert_eq!(s, 201, "{v}");
        for port in v["ports"].as_array().unwrap() {
            assert!(
                ips.insert(port["fixed_ips"][0]["ip_address"].clone()),
                "{port}"
            );
        }
    }
    assert_eq!(ips.len(), 960);
}
