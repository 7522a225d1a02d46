//! The Neutron API through the router, on the memory store.

mod common;

use std::collections::HashSet;

use common::{fault, Api, As};
use serde_json::{json, Value};

#[tokio::test]
async fn discovery_documents() {
    let api = Api::memory();
    let (s, v) = api.call(As::Anonymous, "GET", "/", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["versions"][0]["id"], "v2.0");
    assert_eq!(
        v["versions"][0]["links"][0]["href"],
        "http://test:9696/v2.0/"
    );
    let (_, v) = api.call(As::Anonymous, "GET", "/v2.0/", None).await;
    assert!(v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["collection"] == "ports"));
    let (_, v) = api
        .call(As::Anonymous, "GET", "/v2.0/extensions", None)
        .await;
    let aliases: Vec<&str> = v["extensions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["alias"].as_str().unwrap())
        .collect();
    assert!(aliases.contains(&"security-group") && aliases.contains(&"dns-integration"));
    for l3 in ["router", "ext-gw-mode", "extraroute", "dvr"] {
        assert!(aliases.contains(&l3), "{l3}");
    }
    assert!(aliases.contains(&"trunk") && aliases.contains(&"trunk-details"));
    let (s, _) = api
        .call(As::Anonymous, "GET", "/v2.0/extensions/binding", None)
        .await;
    assert_eq!(s, 200);
    let (s, v) = api
        .call(As::Anonymous, "GET", "/v2.0/extensions/qos", None)
        .await;
    assert_eq!((s, fault(&v)), (404, "ExtensionNotFound"));
    let (s, body) = api.call(As::Anonymous, "GET", "/metrics", None).await;
    assert_eq!(s, 200);
    assert!(body
        .as_str()
        .unwrap()
        .contains("isthmus_api_requests_total"));
    let (s, _) = api.call(As::Anonymous, "GET", "/healthz", None).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn bad_input_is_400_in_neutron_format_never_500() {
    let api = Api::memory();
    type Case = (
        &'static str,
        &'static str,
        Option<Vec<u8>>,
        u16,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/v2.0/networks",
            Some(b"{not json".to_vec()),
            400,
            "MalformedRequestBody",
        ),
        (
            "POST",
            "/v2.0/networks",
            Some(b"".to_vec()),
            400,
            "HTTPBadRequest",
        ),
        (
            "POST",
            "/v2.0/networks",
            Some(br#"{"network": {"bogus": 1}}"#.to_vec()),
            400,
            "HTTPBadRequest",
        ),
        (
            "POST",
            "/v2.0/networks",
            Some(br#"{"network": {"name": 5}}"#.to_vec()),
            400,
            "HTTPBadRequest",
        ),
        (
            "POST",
            "/v2.0/networks",
            Some(br#"{"network": {"admin_state_up": "maybe"}}"#.to_vec()),
            400,
            "HTTPBadRequest",
        ),
        (
            "POST",
            "/v2.0/networks",
            Some(br#"{"network": {"status": "UP"}}"#.to_vec()),
            400,
            "HTTPBadRequest",
        ),
        (
            "POST",
            "/v2.0/networks",
            Some(br#"{"network": []}"#.to_vec()),
            400,
            "HTTPBadRequest",
        ),
        (
            "POST",
            "/v2.0/networks",
            Some(br#"[1, 2]"#.to_vec()),
            400,
            "HTTPBadRequest",
        ),
        (
            "POST",
            "/v2.0/ports",
            Some(br#"{"port": {"network_id": "nope"}}"#.to_vec()),
            400,
            "HTTPBadRequest",
        ),
        (
            "POST",
            "/v2.0/ports",
            Some(br#"{"port": {"network_id": "11111111-2222-3333-4444-555555555555"}}"#.to_vec()),
            404,
            "NetworkNotFound",
        ),
        (
            "GET",
            "/v2.0/networks/does-not-exist",
            None,
            404,
            "NetworkNotFound",
        ),
        ("GET", "/v2.0/qos/policies", None, 404, "HTTPNotFound"),
        ("GET", "/v2.0/networks?bogus=1", None, 400, "HTTPBadRequest"),
        (
            "GET",
            "/v2.0/networks?limit=-1",
            None,
            400,
            "HTTPBadRequest",
        ),
        (
            "GET",
            "/v2.0/networks?sort_key=nope",
            None,
            400,
            "HTTPBadRequest",
        ),
        ("PATCH", "/v2.0/networks", None, 405, "HTTPMethodNotAllowed"),
    ];
    for (method, path, body, status, kind) in cases {
        let (s, v) = api.raw(As::Anonymous, method, path, body, &[]).await;
        assert_eq!((s, fault(&v)), (status, kind), "{method} {path}: {v}");
        assert!(v["NeutronError"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
}

#[tokio::test]
async fn ipam_is_lowest_free_and_releases() {
    let api = Api::memory();
    let (net, sub) = api
        .network_with_subnet(As::Anonymous, "192.168.100.0/24")
        .await;
    let port = |ip: Option<&str>| {
        let mut body = json!({"network_id": net});
        if let Some(ip) = ip {
            body["fixed_ips"] = json!([{"ip_address": ip}]);
        }
        body
    };
    // The network's DHCP port took .2 with the subnet (.1 is the gateway).
    let dhcp = api.dhcp_ports(&net).await;
    assert_eq!(dhcp[0]["fixed_ips"][0]["ip_address"], "192.168.100.2");
    assert_eq!(dhcp[0]["status"], "ACTIVE");
    let a = api.create(As::Anonymous, "ports", "port", port(None)).await;
    let b = api.create(As::Anonymous, "ports", "port", port(None)).await;
    assert_eq!(a["fixed_ips"][0]["ip_address"], "192.168.100.3");
    assert_eq!(b["fixed_ips"][0]["ip_address"], "192.168.100.4");
    assert_eq!(a["fixed_ips"][0]["subnet_id"], sub.as_str());
    assert_eq!(a["status"], "DOWN");
    assert!(a["mac_address"].as_str().unwrap().starts_with("fa:16:3e:"));
    // Explicit address taken → 409; outside → 400.
    let (s, v) = api
        .call(
            As::Anonymous,
            "POST",
            "/v2.0/ports",
            Some(json!({"port": port(Some("192.168.100.4"))})),
        )
        .await;
    assert_eq!((s, fault(&v)), (409, "IpAddressAlreadyAllocated"));
    let (s, v) = api
        .call(
            As::Anonymous,
            "POST",
            "/v2.0/ports",
            Some(json!({"port": port(Some("10.0.0.3"))})),
        )
        .await;
    assert_eq!((s, fault(&v)), (400, "InvalidIpForNetwork"));
    // Same MAC twice on a network → 409.
    let (s, v) = api
        .call(
            As::Anonymous,
            "POST",
            "/v2.0/ports",
            Some(json!({"port": {"network_id": net, "mac_address": a["mac_address"]}})),
        )
        .await;
    assert_eq!((s, fault(&v)), (409, "MacAddressInUse"));
    // Delete releases: the next port gets .3 again.
    let (s, _) = api
        .call(
            As::Anonymous,
            "DELETE",
            &format!("/v2.0/ports/{}", a["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(s, 204);
    let c = api.create(As::Anonymous, "ports", "port", port(None)).await;
    assert_eq!(c["fixed_ips"][0]["ip_address"], "192.168.100.3");
    // Update fixed_ips: the old address is released, the new one claimed.
    let c_id = c["id"].as_str().unwrap();
    let (s, v) = api
        .call(
            As::Anonymous,
            "PUT",
            &format!("/v2.0/ports/{c_id}"),
            Some(json!({"port": {"fixed_ips": [{"ip_address": "192.168.100.77"}]}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["port"]["fixed_ips"][0]["ip_address"], "192.168.100.77");
    let d = api.create(As::Anonymous, "ports", "port", port(None)).await;
    assert_eq!(d["fixed_ips"][0]["ip_address"], "192.168.100.3");
    // Nothing half-done: a failed create left no claim behind.
    let claims = api.keys(&format!("/isthmus/ipam/{sub}/")).await;
    assert_eq!(claims.len(), 4, "{claims:?} (one the DHCP port's)");
}

#[tokio::test]
async fn sixty_four_concurrent_creates_on_a_slash_28() {
    let api = Api::memory();
    let (net, _) = api.network_with_subnet(As::Anonymous, "10.28.0.0/28").await;
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let api = api.clone();
        let net = net.clone();
        tasks.push(tokio::spawn(async move {
            api.call(
                As::Anonymous,
                "POST",
                "/v2.0/ports",
                Some(json!({"port": {"network_id": net}})),
            )
            .await
        }));
    }
    let mut addresses = HashSet::new();
    let mut failures = 0;
    for t in tasks {
        let (status, v) = t.await.unwrap();
        match status {
            201 => {
                assert!(addresses.insert(
                    v["port"]["fixed_ips"][0]["ip_address"]
                        .as_str()
                        .unwrap()
                        .to_owned()
                ));
            }
            409 => {
                assert_eq!(fault(&v), "IpAddressGenerationFailure");
                failures += 1;
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!(
        addresses.len(),
        12,
        "a /28 has 13 assignable addresses, one the DHCP port's"
    );
    assert_eq!(failures, 52);
}

#[tokio::test]
async fn projects_are_isolated() {
    let api = Api::memory();
    let a = As::Member("project-a");
    let b = As::Member("project-b");
    let (net_a, _) = api.network_with_subnet(a, "10.1.0.0/24").await;
    let port_a = api
        .create(a, "ports", "port", json!({"network_id": net_a}))
        .await;
    let port_a = port_a["id"].as_str().unwrap();
    let sg_a = api
        .create(
            a,
            "security-groups",
            "security_group",
            json!({"name": "web"}),
        )
        .await;
    let sg_a = sg_a["id"].as_str().unwrap();

    for (collection, id) in [
        ("networks", net_a.as_str()),
        ("ports", port_a),
        ("security-groups", sg_a),
    ] {
        let (_, list) = api
            .call(b, "GET", &format!("/v2.0/{collection}"), None)
            .await;
        let plural = collection.replace('-', "_");
        assert!(
            !list[&plural]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o["id"] == id),
            "B lists A's {collection}"
        );
        for method in ["GET", "DELETE"] {
            let (s, _) = api
                .call(b, method, &format!("/v2.0/{collection}/{id}"), None)
                .await;
            assert_eq!(s, 404, "{method} A's {collection} as B");
        }
        let singular = plural.trim_end_matches('s');
        let (s, _) = api
            .call(
                b,
                "PUT",
                &format!("/v2.0/{collection}/{id}"),
                Some(json!({ singular: {"name": "stolen"}})),
            )
            .await;
        assert_eq!(s, 404, "update A's {collection} as B");
    }
    // B cannot attach to A's network or use A's group.
    let (s, v) = api
        .call(
            b,
            "POST",
            "/v2.0/ports",
            Some(json!({"port": {"network_id": net_a}})),
        )
        .await;
    assert_eq!((s, fault(&v)), (404, "NetworkNotFound"));
    let (net_b, _) = api.network_with_subnet(b, "10.2.0.0/24").await;
    let (s, v) = api
        .call(
            b,
            "POST",
            "/v2.0/ports",
            Some(json!({"port": {"network_id": net_b, "security_groups": [sg_a]}})),
        )
        .await;
    assert_eq!((s, fault(&v)), (404, "SecurityGroupNotFound"));
    // A non-admin cannot act for another project or touch binding attributes.
    let (s, _) = api
        .call(
            b,
            "POST",
            "/v2.0/networks",
            Some(json!({"network": {"project_id": "project-a"}})),
        )
        .await;
    assert_eq!(s, 400);
    let (s, v) = api
        .call(
            b,
            "POST",
            "/v2.0/ports",
            Some(json!({"port": {"network_id": net_b, "binding:host_id": "node1"}})),
        )
        .await;
    assert_eq!((s, fault(&v)), (403, "PolicyNotAuthorized"));
    // A shared network is visible and usable; its ports stay private to their project.
    let admin = As::Admin("ops");
    let shared = api
        .create(
            admin,
            "networks",
            "network",
            json!({"name": "shared", "shared": true}),
        )
        .await;
    let shared_id = shared["id"].as_str().unwrap();
    api.create(
        admin,
        "subnets",
        "subnet",
        json!({"network_id": shared_id, "ip_version": 4, "cidr": "10.9.0.0/24"}),
    )
    .await;
    let pb = api
        .create(b, "ports", "port", json!({"network_id": shared_id}))
        .await;
    assert!(
        !pb.as_object().unwrap().contains_key("binding:host_id"),
        "binding is admin-only"
    );
    let (s, _) = api
        .call(
            a,
            "GET",
            &format!("/v2.0/ports/{}", pb["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(s, 404);
    let (s, v) = api
        .call(b, "DELETE", &format!("/v2.0/networks/{shared_id}"), None)
        .await;
    assert_eq!((s, fault(&v)), (403, "PolicyNotAuthorized"));
    // An admin creates a port for project A with a binding (what Nova and Kuryr do).
    let bound = api
        .create(
            admin,
            "ports",
            "port",
            json!({"network_id": net_a, "project_id": "project-a", "binding:host_id": "node1"}),
        )
        .await;
    assert_eq!(bound["project_id"], "project-a");
    assert_eq!(bound["binding:vif_type"], "bridge");
    assert_eq!(
        bound["binding:vif_details"]["bridge_name"],
        format!("brq{}", &net_a[..11])
    );
    let (s, _) = api
        .call(
            a,
            "GET",
            &format!("/v2.0/ports/{}", bound["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn security_groups_follow_neutron() {
    let api = Api::memory();
    let p = As::Member("p");
    let (_, v) = api.call(p, "GET", "/v2.0/security-groups", None).await;
    let groups = v["security_groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "default group created on first use");
    let default = &groups[0];
    assert_eq!(default["name"], "default");
    let rules = default["security_group_rules"].as_array().unwrap();
    assert_eq!(rules.len(), 4);
    assert_eq!(
        rules
            .iter()
            .filter(|r| r["remote_group_id"] == default["id"])
            .count(),
        2
    );
    let default_id = default["id"].as_str().unwrap();

    let web = api
        .create(
            p,
            "security-groups",
            "security_group",
            json!({"name": "web"}),
        )
        .await;
    assert_eq!(
        web["security_group_rules"].as_array().unwrap().len(),
        2,
        "two egress rules"
    );
    let web_id = web["id"].as_str().unwrap();
    let rule = json!({"security_group_id": web_id, "direction": "ingress", "protocol": "tcp",
                      "port_range_min": 80, "port_range_max": 80, "remote_group_id": default_id});
    let created = api
        .create(
            p,
            "security-group-rules",
            "security_group_rule",
            rule.clone(),
        )
        .await;
    let (s, v) = api
        .call(
            p,
            "POST",
            "/v2.0/security-group-rules",
            Some(json!({"security_group_rule": rule})),
        )
        .await;
    assert_eq!((s, fault(&v)), (409, "SecurityGroupRuleExists"));
    assert!(v["NeutronError"]["message"]
        .as_str()
        .unwrap()
        .contains(created["id"].as_str().unwrap()));
    let (s, _) = api
        .call(p, "POST", "/v2.0/security-group-rules", Some(json!({"security_group_rule": {"security_group_id": web_id, "direction": "ingress", "remote_ip_prefix": "2001:db8::/64"}})))
        .await;
    assert_eq!(s, 400, "ethertype must match the prefix family");

    // In use → 409; default cannot be removed by its project.
    let (net, _) = api.network_with_subnet(p, "10.3.0.0/24").await;
    let port = api
        .create(
            p,
            "ports",
            "port",
            json!({"network_id": net, "security_groups": [web_id]}),
        )
        .await;
    let (s, v) = api
        .call(
            p,
            "DELETE",
            &format!("/v2.0/security-groups/{web_id}"),
            None,
        )
        .await;
    assert_eq!((s, fault(&v)), (409, "SecurityGroupInUse"));
    let (s, v) = api
        .call(
            p,
            "DELETE",
            &format!("/v2.0/security-groups/{default_id}"),
            None,
        )
        .await;
    assert_eq!((s, fault(&v)), (409, "SecurityGroupCannotRemoveDefault"));
    // Port security off with groups → 409; address pairs need port security.
    let port_id = port["id"].as_str().unwrap();
    let (s, v) = api
        .call(
            p,
            "PUT",
            &format!("/v2.0/ports/{port_id}"),
            Some(json!({"port": {"port_security_enabled": false}})),
        )
        .await;
    assert_eq!((s, fault(&v)), (409, "PortSecurityPortHasSecurityGroup"));
    let (s, v) = api
        .call(
            p,
            "PUT",
            &format!("/v2.0/ports/{port_id}"),
            Some(json!({"port": {"port_security_enabled": false, "security_groups": []}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = api
        .call(
            p,
            "PUT",
            &format!("/v2.0/ports/{port_id}"),
            Some(json!({"port": {"allowed_address_pairs": [{"ip_address": "10.3.0.99"}]}})),
        )
        .await;
    assert_eq!((s, fault(&v)), (409, "AddressPairAndPortSecurityRequired"));
    // Now unused: the group goes, and with it the rule naming the default group as remote.
    let (s, _) = api
        .call(
            p,
            "DELETE",
            &format!("/v2.0/security-groups/{web_id}"),
            None,
        )
        .await;
    assert_eq!(s, 204);
    let (s, _) = api
        .call(
            p,
            "GET",
            &format!(
                "/v2.0/security-group-rules/{}",
                created["id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(s, 404);
    assert!(api
        .keys(&format!("/isthmus/index/group-rules/{web_id}/"))
        .await
        .is_empty());
    let remote_refs = api
        .keys(&format!("/isthmus/index/remote-group-rules/{default_id}/"))
        .await;
    assert_eq!(
        remote_refs.len(),
        2,
        "only the default group's own ingress rules still name it"
    );
    assert!(!remote_refs
        .iter()
        .any(|k| k.ends_with(created["id"].as_str().unwrap())));
}

#[tokio::test]
async fn queries_revisions_and_tags() {
    let api = Api::memory();
    let mut ids = Vec::new();
    for i in 0..5 {
        let n = api
            .create(
                As::Anonymous,
                "networks",
                "network",
                json!({"name": format!("net{i}"), "admin_state_up": i % 2 == 0}),
            )
            .await;
        ids.push(n["id"].as_str().unwrap().to_owned());
    }
    let (_, v) = api
        .call(
            As::Anonymous,
            "GET",
            "/v2.0/networks?name=net1&name=net3&fields=name&fields=id",
            None,
        )
        .await;
    let names: HashSet<&str> = v["networks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, HashSet::from(["net1", "net3"]));
    assert_eq!(
        v["networks"][0].as_object().unwrap().len(),
        2,
        "fields= projects"
    );
    let (_, v) = api
        .call(
            As::Anonymous,
            "GET",
            "/v2.0/networks?admin_state_up=false",
            None,
        )
        .await;
    assert_eq!(v["networks"].as_array().unwrap().len(), 2);
    let (_, v) = api
        .call(
            As::Anonymous,
            "GET",
            "/v2.0/networks?sort_key=name&sort_dir=desc&limit=2",
            None,
        )
        .await;
    assert_eq!(v["networks"][0]["name"], "net4");
    let next = v["networks_links"][0]["href"].as_str().unwrap();
    let next_path = next.trim_start_matches("http://test:9696");
    let (_, v2) = api.call(As::Anonymous, "GET", next_path, None).await;
    assert_eq!(v2["networks"][0]["name"], "net2");

    // If-Match and revision_number.
    let id = &ids[0];
    let (s, v) = api
        .raw(
            As::Anonymous,
            "PUT",
            &format!("/v2.0/networks/{id}"),
            Some(br#"{"network": {"name": "x"}}"#.to_vec()),
            &[("if-match", "revision_number=7")],
        )
        .await;
    assert_eq!((s, fault(&v)), (412, "RevisionNumberConstraintFailed"));
    let (s, v) = api
        .raw(
            As::Anonymous,
            "PUT",
            &format!("/v2.0/networks/{id}"),
            Some(br#"{"network": {"name": "x"}}"#.to_vec()),
            &[("if-match", "revision_number=1")],
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["network"]["revision_number"], 2);

    // Tags sub-resource and tag filters.
    let (s, v) = api
        .call(
            As::Anonymous,
            "PUT",
            &format!("/v2.0/networks/{id}/tags"),
            Some(json!({"tags": ["red", "blue"]})),
        )
        .await;
    assert_eq!((s, v["tags"].clone()), (200, json!(["blue", "red"])));
    let (s, _) = api
        .call(
            As::Anonymous,
            "PUT",
            &format!("/v2.0/networks/{id}/tags/green"),
            None,
        )
        .await;
    assert_eq!(s, 201);
    let (s, _) = api
        .call(
            As::Anonymous,
            "GET",
            &format!("/v2.0/networks/{id}/tags/green"),
            None,
        )
        .await;
    assert_eq!(s, 204);
    let (s, _) = api
        .call(
            As::Anonymous,
            "DELETE",
            &format!("/v2.0/networks/{id}/tags/purple"),
            None,
        )
        .await;
    assert_eq!(s, 404);
    let (_, v) = api
        .call(As::Anonymous, "GET", "/v2.0/networks?tags=red,green", None)
        .await;
    assert_eq!(v["networks"].as_array().unwrap().len(), 1);
    let (_, v) = api
        .call(
            As::Anonymous,
            "GET",
            "/v2.0/networks?not-tags-any=red",
            None,
        )
        .await;
    assert_eq!(v["networks"].as_array().unwrap().len(), 4);
    let (s, _) = api
        .call(
            As::Anonymous,
            "DELETE",
            &format!("/v2.0/networks/{id}/tags"),
            None,
        )
        .await;
    assert_eq!(s, 204);
    let (_, v) = api
        .call(As::Anonymous, "GET", &format!("/v2.0/networks/{id}"), None)
        .await;
    assert_eq!(v["network"]["tags"], json!([]));
}

#[tokio::test]
async fn networks_and_subnets_lifecycle_leaves_nothing_behind() {
    let api = Api::memory();
    let n1 = api
        .create(As::Anonymous, "networks", "network", json!({}))
        .await;
    let n2 = api
        .create(As::Anonymous, "networks", "network", json!({}))
        .await;
    assert_eq!(n1["provider:segmentation_id"], 1);
    assert_eq!(n2["provider:segmentation_id"], 2);
    assert_eq!(n1["mtu"], 1450);
    let (s, v) = api
        .call(
            As::Anonymous,
            "POST",
            "/v2.0/networks",
            Some(json!({"network": {"provider:segmentation_id": 2}})),
        )
        .await;
    assert_eq!((s, fault(&v)), (409, "TunnelIdInUse"));
    let flat = json!({"network": {"provider:network_type": "flat", "provider:physical_network": "public", "router:external": true}});
    let (s, _) = api
        .call(As::Anonymous, "POST", "/v2.0/networks", Some(flat.clone()))
        .await;
    assert_eq!(s, 201);
    let (s, v) = api
        .call(As::Anonymous, "POST", "/v2.0/networks", Some(flat))
        .await;
    assert_eq!((s, fault(&v)), (409, "FlatNetworkInUse"));

    let net = n1["id"].as_str().unwrap();
    let v4 = api
        .create(
            As::Anonymous,
            "subnets",
            "subnet",
            json!({"network_id": net, "ip_version": 4, "cidr": "10.5.0.0/24"}),
        )
        .await;
    let (s, v) = api
        .call(
            As::Anonymous,
            "POST",
            "/v2.0/subnets",
            Some(json!({"subnet": {"network_id": net, "ip_version": 4, "cidr": "10.5.0.128/25"}})),
        )
        .await;
    assert_eq!(
        (s, fault(&v)),
        (400, "InvalidInput"),
        "overlap within a network"
    );
    let v6 = api
        .create(As::Anonymous, "subnets", "subnet", json!({"network_id": net, "ip_version": 6, "cidr": "2001:db8:5::/64", "ipv6_address_mode": "slaac", "ipv6_ra_mode": "slaac"}))
        .await;
    let (_, shown) = api
        .call(As::Anonymous, "GET", &format!("/v2.0/networks/{net}"), None)
        .await;
    assert_eq!(shown["network"]["subnets"].as_array().unwrap().len(), 2);
    // A port gets one IPv4 address and its SLAAC address.
    let port = api
        .create(
            As::Anonymous,
            "ports",
            "port",
            json!({"network_id": net, "mac_address": "fa:16:3e:12:34:56"}),
        )
        .await;
    let ips: Vec<&str> = port["fixed_ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["ip_address"].as_str().unwrap())
        .collect();
    assert_eq!(ips, ["10.5.0.3", "2001:db8:5:0:f816:3eff:fe12:3456"]);
    let (s, v) = api
        .call(
            As::Anonymous,
            "DELETE",
            &format!("/v2.0/subnets/{}", v4["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!((s, fault(&v)), (409, "SubnetInUse"));
    let (s, v) = api
        .call(
            As::Anonymous,
            "DELETE",
            &format!("/v2.0/networks/{net}"),
            None,
        )
        .await;
    assert_eq!((s, fault(&v)), (409, "NetworkInUse"));
    api.call(
        As::Anonymous,
        "DELETE",
        &format!("/v2.0/ports/{}", port["id"].as_str().unwrap()),
        None,
    )
    .await;
    let (s, _) = api
        .call(
            As::Anonymous,
            "DELETE",
            &format!("/v2.0/subnets/{}", v6["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(s, 204);
    let (s, _) = api
        .call(
            As::Anonymous,
            "DELETE",
            &format!("/v2.0/networks/{net}"),
            None,
        )
        .await;
    assert_eq!(s, 204, "network delete takes its remaining subnet along");
    let (s, _) = api
        .call(
            As::Anonymous,
            "GET",
            &format!("/v2.0/subnets/{}", v4["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(s, 404);
    for id in [n2["id"].as_str().unwrap()] {
        api.call(
            As::Anonymous,
            "DELETE",
            &format!("/v2.0/networks/{id}"),
            None,
        )
        .await;
    }
    let (_, all) = api.call(As::Anonymous, "GET", "/v2.0/networks", None).await;
    for n in all["networks"].as_array().unwrap() {
        api.call(
            As::Anonymous,
            "DELETE",
            &format!("/v2.0/networks/{}", n["id"].as_str().unwrap()),
            None,
        )
        .await;
    }
    for prefix in [
        "/isthmus/networks/",
        "/isthmus/subnets/",
        "/isthmus/ports/",
        "/isthmus/ipam/",
        "/isthmus/mac/",
        "/isthmus/vni/",
        "/isthmus/flat/",
        "/isthmus/index/network-ports/",
        "/isthmus/index/group-ports/",
    ] {
        assert_eq!(
            api.keys(prefix).await,
            Vec::<String>::new(),
            "leftovers under {prefix}"
        );
    }
}

#[tokio::test]
async fn bulk_create_is_all_or_nothing() {
    let api = Api::memory();
    let (net, sub) = api.network_with_subnet(As::Anonymous, "10.6.0.0/24").await;
    let (s, v) = api
        .call(
            As::Anonymous,
            "POST",
            "/v2.0/ports",
            Some(json!({"ports": [{"network_id": net}, {"network_id": net}]})),
        )
        .await;
    assert_eq!(s, 201);
    assert_eq!(v["ports"].as_array().unwrap().len(), 2);
    let (s, _) = api
        .call(As::Anonymous, "POST", "/v2.0/ports", Some(json!({"ports": [{"network_id": net}, {"network_id": net, "fixed_ips": [{"ip_address": "10.6.0.2"}]}]})))
        .await;
    assert_eq!(s, 409);
    assert_eq!(
        api.keys(&format!("/isthmus/ipam/{sub}/")).await.len(),
        3,
        "the failed bulk rolled back (the DHCP port's and two ports' claims are left)"
    );
    let _ = Value::Null;
}

#[tokio::test]
async fn namespace_bindings_pick_a_network_per_namespace() {
    let api = Api::memory();
    let (s, net) = api
        .call(
            As::Anonymous,
            "POST",
            "/v2.0/networks",
            Some(json!({"network": {"name": "pods", "project_id": "team"}})),
        )
        .await;
    assert_eq!(s, 201, "{net}");
    let net_id = net["network"]["id"].as_str().unwrap().to_owned();
    let path = "/isthmus/v1/namespace-bindings/web";
    let body = json!({"namespace_binding": {"network_id": net_id}});
    let (s, v) = api
        .call(As::Anonymous, "PUT", path, Some(body.clone()))
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["namespace_binding"]["project_id"], "team");
    let (s, _) = api
        .call(As::Anonymous, "PUT", path, Some(body.clone()))
        .await;
    assert_eq!(s, 200, "a second PUT replaces");
    let (s, v) = api.call(As::Anonymous, "GET", path, None).await;
    assert_eq!(
        (s, v["namespace_binding"]["network_id"].as_str()),
        (200, Some(net_id.as_str()))
    );
    let (_, v) = api
        .call(As::Anonymous, "GET", "/isthmus/v1/namespace-bindings", None)
        .await;
    assert_eq!(v["namespace_bindings"].as_array().unwrap().len(), 1);
    // Bad input, unknown networks and non-admins get Neutron errors.
    for (ns, body, status, fault_type) in [
        ("Bad_Name", body.clone(), 400, "HTTPBadRequest"),
        (
            "web",
            json!({"namespace_binding": {}}),
            400,
            "HTTPBadRequest",
        ),
        (
            "web",
            json!({"namespace_binding": {"network_id": "nope"}}),
            400,
            "HTTPBadRequest",
        ),
        (
            "web",
            json!({"namespace_binding": {"network_id": "6b1f0b52-8a4c-4bd5-9a0e-2f3b1c0d9e11"}}),
            404,
            "NetworkNotFound",
        ),
        (
            "web",
            json!({"namespace_binding": {"network_id": net_id,
                   "security_group_ids": ["6b1f0b52-8a4c-4bd5-9a0e-2f3b1c0d9e11"]}}),
            404,
            "SecurityGroupNotFound",
        ),
        (
            "web",
            json!({"namespace_binding": {"network_id": net_id, "security_group_ids": "x"}}),
            400,
            "HTTPBadRequest",
        ),
        (
            "web",
            json!({"namespace_binding": {"network_id": net_id, "x": 1}}),
            400,
            "HTTPBadRequest",
        ),
    ] {
        let p = format!("/isthmus/v1/namespace-bindings/{ns}");
        let (s, v) = api.call(As::Anonymous, "PUT", &p, Some(body)).await;
        assert_eq!((s, fault(&v)), (status, fault_type), "{v}");
    }
    let (s, _) = api.call(As::Member("team"), "PUT", path, Some(body)).await;
    assert_eq!(s, 403);
    let (s, _) = api.call(As::Anonymous, "DELETE", path, None).await;
    assert_eq!(s, 204);
    let (s, v) = api.call(As::Anonymous, "GET", path, None).await;
    assert_eq!((s, fault(&v)), (404, "NamespaceBindingNotFound"));
}

#[tokio::test]
async fn ip_availability_counts_the_ipam_claims() {
    let api = Api::memory();
    let (_, net) = api
        .call(
            As::Anonymous,
            "POST",
            "/v2.0/networks",
            Some(json!({"network": {"name": "n"}})),
        )
        .await;
    let net_id = net["network"]["id"].as_str().unwrap().to_owned();
    let (s, _) = api
        .call(
            As::Anonymous,
            "POST",
            "/v2.0/subnets",
            Some(json!({"subnet": {
            "network_id": net_id, "ip_version": 4, "cidr": "10.0.0.0/29"}})),
        )
        .await;
    assert_eq!(s, 201);
    let mut ports = Vec::new();
    for _ in 0..2 {
        let (_, p) = api
            .call(
                As::Anonymous,
                "POST",
                "/v2.0/ports",
                Some(json!({"port": {"network_id": net_id}})),
            )
            .await;
        ports.push(p["port"]["id"].as_str().unwrap().to_owned());
    }
    let path = format!("/v2.0/network-ip-availabilities/{net_id}");
    let (s, v) = api.call(As::Anonymous, "GET", &path, None).await;
    assert_eq!(s, 200, "{v}");
    let a = &v["network_ip_availability"];
    assert_eq!(
        (a["total_ips"].as_u64(), a["used_ips"].as_u64()),
        (Some(5), Some(3)),
        "two ports and the DHCP port"
    );
    assert_eq!(a["subnet_ip_availability"][0]["cidr"], "10.0.0.0/29");
    api.call(
        As::Anonymous,
        "DELETE",
        &format!("/v2.0/ports/{}", ports[0]),
        None,
    )
    .await;
    let (_, v) = api.call(As::Anonymous, "GET", &path, None).await;
    assert_eq!(v["network_ip_availability"]["used_ips"], 2);
    let (_, v) = api
        .call(
            As::Anonymous,
            "GET",
            "/v2.0/network-ip-availabilities",
            None,
        )
        .await;
    assert_eq!(v["network_ip_availabilities"].as_array().unwrap().len(), 1);
    let (s, _) = api.call(As::Member("p"), "GET", &path, None).await;
    assert_eq!(s, 403);
    let (s, v) = api
        .call(
            As::Anonymous,
            "GET",
            "/v2.0/network-ip-availabilities/nope",
            None,
        )
        .await;
    assert_eq!((s, fault(&v)), (404, "NetworkNotFound"));
}
