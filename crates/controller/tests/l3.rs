//! Routers and floating IPs through the API, on the memory store: Neutron's wire format,
//! checks and errors, and nothing left behind.

mod common;

use common::{fault, Api, As};
use serde_json::{json, Value};

const ALICE: As = As::Member("alice");

async fn put(api: &Api, who: As<'_>, path: &str, body: Value) -> (u16, Value) {
    api.call(who, "PUT", path, Some(body)).await
}

/// An external flat network on physnet `public` with a /24, and a node mapping it.
async fn external(api: &Api) -> (String, String) {
    let (s, _) = api
        .call(
            As::Anonymous,
            "POST",
            "/isthmus/v1/nodes",
            Some(json!({"node": {"name": "gw1", "tunnel_ip": "192.0.2.1", "physnets": {"public": "eth1"}}})),
        )
        .await;
    assert!(s == 200 || s == 201);
    public_network(api).await
}

/// An external flat network on physnet `public` with a /24 without DHCP (as DevStack makes
/// it): (network, subnet).
async fn public_network(api: &Api) -> (String, String) {
    let net = api
        .create(
            As::Anonymous,
            "networks",
            "network",
            json!({"name": "public", "router:external": true,
                   "provider:network_type": "flat", "provider:physical_network": "public"}),
        )
        .await;
    let id = net["id"].as_str().unwrap().to_owned();
    let sub = api
        .create(
            As::Anonymous,
            "subnets",
            "subnet",
            json!({"network_id": id, "ip_version": 4, "cidr": "172.24.4.0/24", "enable_dhcp": false}),
        )
        .await;
    (id, sub["id"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn routers_interfaces_gateways_and_floating_ips() {
    let api = Api::memory();
    let (ext, ext_sub) = external(&api).await;
    let (net_a, sub_a) = api.network_with_subnet(ALICE, "10.1.0.0/24").await;
    let (_net_b, sub_b) = api.network_with_subnet(ALICE, "10.2.0.0/24").await;
    let (_, overlapping) = api.network_with_subnet(ALICE, "10.1.0.0/16").await;

    let router = api
        .create(ALICE, "routers", "router", json!({"name": "r1"}))
        .await;
    assert_eq!(router["external_gateway_info"], Value::Null);
    assert_eq!(router["status"], "ACTIVE");
    assert!(router.get("distributed").is_none(), "admin-only");
    let rid = router["id"].as_str().unwrap().to_owned();
    let add = format!("/v2.0/routers/{rid}/add_router_interface");
    let remove = format!("/v2.0/routers/{rid}/remove_router_interface");

    // Interfaces by subnet take the gateway address.
    let (s, info) = put(&api, ALICE, &add, json!({"subnet_id": sub_a})).await;
    assert_eq!(s, 200, "{info}");
    assert_eq!(info["subnet_id"], sub_a.as_str());
    let (_, port) = api
        .call(
            ALICE,
            "GET",
            &format!("/v2.0/ports/{}", info["port_id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(port["port"]["fixed_ips"][0]["ip_address"], "10.1.0.1");
    assert_eq!(
        port["port"]["device_owner"],
        "network:router_interface_distributed"
    );
    assert_eq!(port["port"]["device_id"], rid.as_str());
    let (s, v) = put(&api, ALICE, &add, json!({"subnet_id": sub_a})).await;
    assert_eq!((s, fault(&v)), (400, "HTTPBadRequest"), "{v}");
    let (s, v) = put(&api, ALICE, &add, json!({"subnet_id": overlapping})).await;
    assert_eq!(s, 400);
    assert!(v["NeutronError"]["message"]
        .as_str()
        .unwrap()
        .contains("overlaps"));
    let (s, v) = put(&api, ALICE, &add, json!({})).await;
    assert_eq!((s, fault(&v)), (400, "HTTPBadRequest"));
    let (s, _) = put(&api, ALICE, &add, json!({"subnet_id": sub_b})).await;
    assert_eq!(s, 200);

    // Router ports cannot be deleted through the port API; the network is in use.
    let (s, v) = api
        .call(
            ALICE,
            "DELETE",
            &format!("/v2.0/ports/{}", info["port_id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!((s, fault(&v)), (409, "ServicePortInUse"));
    let (s, v) = api
        .call(ALICE, "DELETE", &format!("/v2.0/networks/{net_a}"), None)
        .await;
    assert_eq!((s, fault(&v)), (409, "NetworkInUse"));

    // A VM port, and a floating IP that cannot be associated before the gateway exists.
    let vm = api
        .create(
            ALICE,
            "ports",
            "port",
            json!({"network_id": net_a, "name": "vm"}),
        )
        .await;
    let vm_id = vm["id"].as_str().unwrap();
    let (s, v) = api
        .call(
            ALICE,
            "POST",
            "/v2.0/floatingips",
            Some(json!({"floatingip": {"floating_network_id": ext, "port_id": vm_id}})),
        )
        .await;
    assert_eq!(
        (s, fault(&v)),
        (404, "ExternalGatewayForFloatingIPNotFound"),
        "{v}"
    );
    let (s, v) = api
        .call(
            ALICE,
            "POST",
            "/v2.0/floatingips",
            Some(json!({"floatingip": {"floating_network_id": net_a}})),
        )
        .await;
    assert_eq!(s, 400, "{v}");

    // Gateway: a port on the external network bound to the node mapping its physnet, and one
    // SNAT port per interface there.
    let (s, v) = put(
        &api,
        ALICE,
        &format!("/v2.0/routers/{rid}"),
        json!({"router": {"external_gateway_info": {"network_id": net_a}}}),
    )
    .await;
    assert_eq!((s, fault(&v)), (400, "HTTPBadRequest"), "not external: {v}");
    let (s, v) = put(
        &api,
        ALICE,
        &format!("/v2.0/routers/{rid}"),
        json!({"router": {"external_gateway_info": {"network_id": ext}}}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let gw = &v["router"]["external_gateway_info"];
    assert_eq!(gw["enable_snat"], true);
    assert_eq!(gw["external_fixed_ips"][0]["subnet_id"], ext_sub.as_str());
    let (_, ports) = api
        .call(
            As::Anonymous,
            "GET",
            &format!("/v2.0/ports?device_id={rid}"),
            None,
        )
        .await;
    let owners: Vec<(&str, &str)> = ports["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["device_owner"].as_str().unwrap(),
                p["binding:host_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(owners.len(), 5, "{owners:?}");
    assert!(owners.contains(&("network:router_gateway", "gw1")));
    assert_eq!(
        owners
            .iter()
            .filter(|o| **o == ("network:router_centralized_snat", "gw1"))
            .count(),
        2
    );

    // Floating IPs: create, associate, one per fixed address, disassociate.
    let fip = api
        .create(
            ALICE,
            "floatingips",
            "floatingip",
            json!({"floating_network_id": ext, "port_id": vm_id}),
        )
        .await;
    assert_eq!(fip["router_id"], rid.as_str());
    assert_eq!(fip["fixed_ip_address"], vm["fixed_ips"][0]["ip_address"]);
    assert!(fip["floating_ip_address"]
        .as_str()
        .unwrap()
        .starts_with("172.24.4."));
    let fip_id = fip["id"].as_str().unwrap().to_owned();
    let (s, v) = api
        .call(
            ALICE,
            "POST",
            "/v2.0/floatingips",
            Some(json!({"floatingip": {"floating_network_id": ext, "port_id": vm_id}})),
        )
        .await;
    assert_eq!(
        (s, fault(&v)),
        (409, "FloatingIPPortAlreadyAssociated"),
        "{v}"
    );
    let (s, v) = put(&api, ALICE, &remove, json!({"subnet_id": sub_a})).await;
    assert_eq!(
        (s, fault(&v)),
        (409, "RouterInterfaceInUseByFloatingIP"),
        "{v}"
    );
    let (s, v) = put(
        &api,
        ALICE,
        &format!("/v2.0/routers/{rid}"),
        json!({"router": {"external_gateway_info": null}}),
    )
    .await;
    assert_eq!(
        (s, fault(&v)),
        (409, "RouterExternalGatewayInUseByFloatingIp"),
        "{v}"
    );
    let (s, v) = api
        .call(
            As::Member("mallory"),
            "GET",
            &format!("/v2.0/floatingips/{fip_id}"),
            None,
        )
        .await;
    assert_eq!((s, fault(&v)), (404, "FloatingIPNotFound"));

    // Deleting the port disassociates its floating IP.
    let (s, _) = api
        .call(ALICE, "DELETE", &format!("/v2.0/ports/{vm_id}"), None)
        .await;
    assert_eq!(s, 204);
    let (_, v) = api
        .call(ALICE, "GET", &format!("/v2.0/floatingips/{fip_id}"), None)
        .await;
    assert_eq!(v["floatingip"]["port_id"], Value::Null);
    assert_eq!(v["floatingip"]["router_id"], Value::Null);

    // Extra routes need a connected next hop.
    let (s, v) = put(
        &api,
        ALICE,
        &format!("/v2.0/routers/{rid}"),
        json!({"router": {"routes": [{"destination": "10.9.0.0/16", "nexthop": "192.168.0.1"}]}}),
    )
    .await;
    assert_eq!((s, fault(&v)), (400, "InvalidInput"), "{v}");
    let (s, v) = put(
        &api,
        ALICE,
        &format!("/v2.0/routers/{rid}"),
        json!({"router": {"routes": [{"destination": "10.9.0.0/16", "nexthop": "10.1.0.9"}]}}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["router"]["routes"][0]["nexthop"], "10.1.0.9");

    // Tear down: in use until the interfaces go; then nothing is left.
    let (s, v) = api
        .call(ALICE, "DELETE", &format!("/v2.0/routers/{rid}"), None)
        .await;
    assert_eq!((s, fault(&v)), (409, "RouterInUse"));
    let (s, v) = put(&api, ALICE, &remove, json!({"port_id": vm_id})).await;
    assert_eq!((s, fault(&v)), (404, "RouterInterfaceNotFound"));
    assert_eq!(
        put(&api, ALICE, &remove, json!({"subnet_id": sub_a}))
            .await
            .0,
        200
    );
    let (s, v) = put(&api, ALICE, &remove, json!({"subnet_id": sub_a})).await;
    assert_eq!((s, fault(&v)), (404, "RouterInterfaceNotFoundForSubnet"));
    assert_eq!(
        put(&api, ALICE, &remove, json!({"subnet_id": sub_b}))
            .await
            .0,
        200
    );
    assert_eq!(
        api.call(
            ALICE,
            "DELETE",
            &format!("/v2.0/floatingips/{fip_id}"),
            None
        )
        .await
        .0,
        204
    );
    assert_eq!(
        api.call(ALICE, "DELETE", &format!("/v2.0/routers/{rid}"), None)
            .await
            .0,
        204
    );
    let (_, ports) = api.call(As::Anonymous, "GET", "/v2.0/ports", None).await;
    assert!(
        ports["ports"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["device_owner"] == "network:dhcp"),
        "{ports}"
    );
    assert!(api.keys("/isthmus/index/port-fips/").await.is_empty());
    assert!(api.keys("/isthmus/index/router-fips/").await.is_empty());
    assert!(api.keys("/isthmus/fip-association/").await.is_empty());
    assert_eq!(
        api.keys(&format!("/isthmus/ipam/{ext_sub}/")).await.len(),
        0
    );
}

#[tokio::test]
async fn interfaces_by_port_and_floating_ips_without_a_port() {
    let api = Api::memory();
    let (ext, _) = external(&api).await;
    let (net, _) = api.network_with_subnet(ALICE, "10.3.0.0/24").await;
    // Only admins choose whether a gateway SNATs (Neutron's
    // create_router:external_gateway_info:enable_snat); an admin makes the router for alice.
    let mut body =
        json!({"name": "r", "external_gateway_info": {"network_id": ext, "enable_snat": false}});
    let (s, v) = api
        .call(
            ALICE,
            "POST",
            "/v2.0/routers",
            Some(json!({ "router": body.clone() })),
        )
        .await;
    assert_eq!(
        (s, v["NeutronError"]["type"].as_str()),
        (403, Some("PolicyNotAuthorized"))
    );
    body["project_id"] = json!("alice");
    let router = api
        .create(As::Admin("ops"), "routers", "router", body)
        .await;
    assert_eq!(router["external_gateway_info"]["enable_snat"], false);
    let rid = router["id"].as_str().unwrap();
    let add = format!("/v2.0/routers/{rid}/add_router_interface");
    let port = api
        .create(
            ALICE,
            "ports",
            "port",
            json!({"network_id": net, "fixed_ips": [{"ip_address": "10.3.0.254"}]}),
        )
        .await;
    let pid = port["id"].as_str().unwrap();
    let (s, info) = put(&api, ALICE, &add, json!({"port_id": pid})).await;
    assert_eq!(s, 200, "{info}");
    let (s, v) = put(&api, ALICE, &add, json!({"port_id": pid})).await;
    assert_eq!((s, fault(&v)), (409, "PortInUse"), "{v}");
    // A VIP port: unbound, only an address.
    let vip = api
        .create(
            ALICE,
            "ports",
            "port",
            json!({"network_id": net, "name": "vip"}),
        )
        .await;
    // Choosing the address takes the manager role (Neutron's
    // create_floatingip:floating_ip_address); alice's manager picks it.
    let chosen =
        json!({"floatingip": {"floating_network_id": ext, "floating_ip_address": "172.24.4.100"}});
    let (s, v) = api
        .call(ALICE, "POST", "/v2.0/floatingips", Some(chosen.clone()))
        .await;
    assert_eq!((s, fault(&v)), (403, "PolicyNotAuthorized"), "{v}");
    let fip = api
        .create(
            As::Manager("alice"),
            "floatingips",
            "floatingip",
            chosen["floatingip"].clone(),
        )
        .await;
    assert_eq!(fip["port_id"], Value::Null);
    assert_eq!(fip["status"], "DOWN");
    let (s, v) = api
        .call(
            As::Manager("alice"),
            "POST",
            "/v2.0/floatingips",
            Some(chosen),
        )
        .await;
    assert_eq!((s, fault(&v)), (409, "IpAddressAlreadyAllocated"), "{v}");
    let fid = fip["id"].as_str().unwrap();
    let (s, v) = put(
        &api,
        ALICE,
        &format!("/v2.0/floatingips/{fid}"),
        json!({"floatingip": {"port_id": vip["id"]}}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["floatingip"]["router_id"], rid);
    // The node doing its NAT reports it; the port moving to a node sends it back to DOWN
    // until the node NATing it now reports it.
    let status = format!("/isthmus/v1/floatingips/{fid}/status");
    let (s, v) = put(
        &api,
        ALICE,
        &status,
        json!({"status": "ACTIVE", "node": "gw1"}),
    )
    .await;
    assert_eq!(
        (s, fault(&v)),
        (403, "PolicyNotAuthorized"),
        "agents only: {v}"
    );
    let (s, v) = put(
        &api,
        As::Anonymous,
        &status,
        json!({"status": "ACTIVE", "node": "gw1"}),
    )
    .await;
    assert_eq!(
        (s, v["floatingip"]["status"].clone()),
        (200, json!("ACTIVE")),
        "{v}"
    );
    let (s, _) = put(
        &api,
        As::Anonymous,
        &format!("/v2.0/ports/{}", vip["id"].as_str().unwrap()),
        json!({"port": {"binding:host_id": "gw1"}}),
    )
    .await;
    assert_eq!(s, 200);
    let (_, v) = api
        .call(ALICE, "GET", &format!("/v2.0/floatingips/{fid}"), None)
        .await;
    assert_eq!(v["floatingip"]["status"], "DOWN");
    let (s, v) = put(
        &api,
        ALICE,
        &format!("/v2.0/floatingips/{fid}"),
        json!({"floatingip": {"port_id": null}}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["floatingip"]["fixed_ip_address"], Value::Null);
    let (s, v) = put(
        &api,
        As::Anonymous,
        &status,
        json!({"status": "ACTIVE", "node": "gw1"}),
    )
    .await;
    assert_eq!(s, 409, "nothing to NAT: {v}");
    // Removing by port deletes the port, as Neutron does.
    assert_eq!(
        put(
            &api,
            ALICE,
            &format!("/v2.0/routers/{rid}/remove_router_interface"),
            json!({"port_id": pid})
        )
        .await
        .0,
        200
    );
    let (s, _) = api
        .call(ALICE, "GET", &format!("/v2.0/ports/{pid}"), None)
        .await;
    assert_eq!(s, 404);
    assert_eq!(
        api.call(ALICE, "DELETE", &format!("/v2.0/routers/{rid}"), None)
            .await
            .0,
        204
    );
    let (_, ports) = api
        .call(
            As::Anonymous,
            "GET",
            &format!("/v2.0/ports?network_id={ext}"),
            None,
        )
        .await;
    assert_eq!(
        ports["ports"].as_array().unwrap().len(),
        1,
        "only the floating IP's port: {ports}"
    );
}

#[tokio::test]
async fn a_gateway_set_before_any_node_maps_its_physnet_is_bound_when_one_registers() {
    let api = Api::memory();
    let (ext, _) = public_network(&api).await;
    let (_, sub) = api.network_with_subnet(ALICE, "10.4.0.0/24").await;
    let router = api
        .create(
            ALICE,
            "routers",
            "router",
            json!({"name": "early", "external_gateway_info": {"network_id": ext}}),
        )
        .await;
    let rid = router["id"].as_str().unwrap().to_owned();
    let add = format!("/v2.0/routers/{rid}/add_router_interface");
    let (s, info) = put(&api, ALICE, &add, json!({"subnet_id": sub})).await;
    assert_eq!(s, 200, "{info}");
    let hosts = |api: &Api| {
        let rid = rid.clone();
        let api = api.clone();
        async move {
            let (_, v) = api
                .call(
                    As::Anonymous,
                    "GET",
                    &format!("/v2.0/ports?device_id={rid}"),
                    None,
                )
                .await;
            v["ports"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["device_owner"] != "network:router_interface_distributed")
                .map(|p| p["binding:host_id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        hosts(&api).await,
        ["", ""],
        "gateway and SNAT port wait unbound"
    );

    // A node without the physnet changes nothing; one mapping it takes both.
    for (name, physnets) in [("plain", json!({})), ("edge", json!({"public": "eth1"}))] {
        let (s, _) = api
            .call(
                As::Anonymous,
                "POST",
                "/isthmus/v1/nodes",
                Some(
                    json!({"node": {"name": name, "tunnel_ip": "192.0.2.9", "physnets": physnets}}),
                ),
            )
            .await;
        assert_eq!(s, 201);
    }
    assert_eq!(hosts(&api).await, ["edge", "edge"]);
}

#[tokio::test]
async fn ha_atomic_extra_routes_port_details_and_pools() {
    let api = Api::memory();
    let (ext, ext_sub) = external(&api).await;
    let (_net, sub) = api.network_with_subnet(ALICE, "10.1.0.0/24").await;

    // l3-ha: accepted (admin only), changed only while the router is down.
    let (s, v) = api
        .call(
            ALICE,
            "POST",
            "/v2.0/routers",
            Some(json!({"router": {"name": "r", "ha": true}})),
        )
        .await;
    assert_eq!((s, fault(&v)), (403, "PolicyNotAuthorized"));
    let admin = As::Admin("alice");
    let (s, v) = api
        .call(
            admin,
            "POST",
            "/v2.0/routers",
            Some(json!({"router": {"name": "r", "ha": true}})),
        )
        .await;
    assert_eq!(
        (
            s,
            v["router"]["ha"].clone(),
            v["router"]["distributed"].clone()
        ),
        (201, json!(true), json!(true))
    );
    let rid = v["router"]["id"].as_str().unwrap().to_owned();
    let path = format!("/v2.0/routers/{rid}");
    let (s, v) = put(&api, admin, &path, json!({"router": {"ha": false}})).await;
    assert_eq!(s, 400);
    assert!(v["NeutronError"]["message"]
        .as_str()
        .unwrap()
        .contains("admin_state_up to False"));
    let (s, v) = put(
        &api,
        admin,
        &path,
        json!({"router": {"ha": false, "admin_state_up": false}}),
    )
    .await;
    assert_eq!((s, v["router"]["ha"].clone()), (200, json!(false)));

    // extraroute-atomic.
    let (s, _) = put(
        &api,
        ALICE,
        &format!("{path}/add_router_interface"),
        json!({"subnet_id": sub}),
    )
    .await;
    assert_eq!(s, 200);
    let route = json!({"destination": "10.5.0.0/24", "nexthop": "10.1.0.5"});
    let other = json!({"destination": "10.6.0.0/24", "nexthop": "10.1.0.6"});
    let (s, v) = put(
        &api,
        ALICE,
        &format!("{path}/add_extraroutes"),
        json!({"router": {"routes": [route, other]}}),
    )
    .await;
    assert_eq!(
        (s, v["router"]["routes"].as_array().map(Vec::len)),
        (200, Some(2)),
        "{v}"
    );
    let (_, v) = put(
        &api,
        ALICE,
        &format!("{path}/add_extraroutes"),
        json!({"router": {"routes": [route]}}),
    )
    .await;
    assert_eq!(
        v["router"]["routes"].as_array().map(Vec::len),
        Some(2),
        "adding twice is a no-op"
    );
    let (_, v) = put(
        &api,
        ALICE,
        &format!("{path}/remove_extraroutes"),
        json!({"router": {"routes": [route]}}),
    )
    .await;
    assert_eq!(v["router"]["routes"], json!([other]));
    let (s, _) = put(
        &api,
        ALICE,
        &format!("{path}/add_extraroutes"),
        json!({"router": {"routes": [{"destination": "10.7.0.0/24", "nexthop": "192.0.2.9"}]}}),
    )
    .await;
    assert_eq!(s, 400, "a nexthop off the router's subnets");
    let (s, _) = put(
        &api,
        ALICE,
        &format!("{path}/add_extraroutes"),
        json!({"routes": []}),
    )
    .await;
    assert_eq!(s, 400);
    let (s, _) = put(
        &api,
        As::Member("mallory"),
        &format!("{path}/add_extraroutes"),
        json!({"router": {"routes": [route]}}),
    )
    .await;
    assert_eq!(s, 404);

    // floatingip-pools and fip-port-details.
    let (_, v) = api.call(ALICE, "GET", "/v2.0/floatingip_pools", None).await;
    assert_eq!(
        v["floatingip_pools"],
        json!([{"subnet_id": ext_sub, "subnet_name": "", "network_id": ext,
        "project_id": "fake_project_id", "tenant_id": "fake_project_id", "cidr": "172.24.4.0/24"}])
    );
    let (s, _) = put(
        &api,
        ALICE,
        &path,
        json!({"router": {"external_gateway_info": {"network_id": ext}}}),
    )
    .await;
    assert_eq!(s, 200);
    let vm = api
        .create(
            ALICE,
            "ports",
            "port",
            json!({"network_id": _net, "name": "vm", "device_owner": "compute:nova"}),
        )
        .await;
    let fip = api
        .create(
            ALICE,
            "floatingips",
            "floatingip",
            json!({"floating_network_id": ext, "port_id": vm["id"]}),
        )
        .await;
    assert_eq!(fip["port_details"]["name"], "vm");
    assert_eq!(fip["port_details"]["mac_address"], vm["mac_address"]);
    assert_eq!(fip["port_details"]["device_owner"], "compute:nova");
    let (_, v) = api.call(ALICE, "GET", "/v2.0/floatingips", None).await;
    assert_eq!(
        v["floatingips"][0]["port_details"]["network_id"],
        json!(_net)
    );
    let fid = fip["id"].as_str().unwrap();
    let (_, v) = put(
        &api,
        ALICE,
        &format!("/v2.0/floatingips/{fid}"),
        json!({"floatingip": {"port_id": null}}),
    )
    .await;
    assert_eq!(v["floatingip"]["port_details"], Value::Null);

    let (_, v) = api
        .call(ALICE, "GET", "/v2.0/availability_zones", None)
        .await;
    assert_eq!(v["availability_zones"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn an_empty_floating_ip_update_disassociates() {
    let api = Api::memory();
    let (ext, _) = external(&api).await;
    let (net, sub) = api.network_with_subnet(ALICE, "10.3.0.0/24").await;
    let router = api
        .create(ALICE, "routers", "router", json!({"name": "r"}))
        .await;
    let rid = router["id"].as_str().unwrap();
    let (s, _) = put(
        &api,
        ALICE,
        &format!("/v2.0/routers/{rid}/add_router_interface"),
        json!({"subnet_id": sub}),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = put(
        &api,
        ALICE,
        &format!("/v2.0/routers/{rid}"),
        json!({"router": {"external_gateway_info": {"network_id": ext}}}),
    )
    .await;
    assert_eq!(s, 200);
    let vm = api
        .create(ALICE, "ports", "port", json!({"network_id": net}))
        .await;
    let fip = api
        .create(
            ALICE,
            "floatingips",
            "floatingip",
            json!({"floating_network_id": ext, "port_id": vm["id"]}),
        )
        .await;
    let path = format!("/v2.0/floatingips/{}", fip["id"].as_str().unwrap());
    let (_, v) = put(
        &api,
        ALICE,
        &path,
        json!({"floatingip": {"description": "kept"}}),
    )
    .await;
    assert_eq!(
        v["floatingip"]["port_id"], vm["id"],
        "a description alone keeps the association"
    );
    let (s, v) = put(&api, ALICE, &path, json!({"floatingip": {}})).await;
    assert_eq!(s, 200);
    assert_eq!(v["floatingip"]["port_id"], Value::Null);
    assert_eq!(v["floatingip"]["fixed_ip_address"], Value::Null);
}

#[tokio::test]
async fn a_failed_router_interface_leaves_no_port_and_leftovers_are_swept() {
    let api = Api::memory();
    let (ext, _) = external(&api).await;
    // A /29 with the gateway and every other address but one taken (the DHCP port's and four
    // ports'): the interface port gets the gateway address, then the router's SNAT port
    // finds none.
    let net = api
        .create(ALICE, "networks", "network", json!({"name": "small"}))
        .await;
    let net_id = net["id"].as_str().unwrap().to_owned();
    let sub = api
        .create(
            ALICE,
            "subnets",
            "subnet",
            json!({"network_id": net_id, "ip_version": 4, "cidr": "10.8.0.0/29"}),
        )
        .await;
    let sub_id = sub["id"].as_str().unwrap().to_owned();
    for _ in 0..4 {
        api.create(ALICE, "ports", "port", json!({"network_id": net_id}))
            .await;
    }
    let router = api
        .create(
            ALICE,
            "routers",
            "router",
            json!({"name": "r", "external_gateway_info": {"network_id": ext}}),
        )
        .await;
    let rid = router["id"].as_str().unwrap();
    let ports_before = api.keys("/isthmus/ports/").await.len();
    let claims_before = api.keys(&format!("/isthmus/ipam/{sub_id}/")).await.len();
    let (s, v) = put(
        &api,
        ALICE,
        &format!("/v2.0/routers/{rid}/add_router_interface"),
        json!({"subnet_id": sub_id}),
    )
    .await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(api.keys("/isthmus/ports/").await.len(), ports_before);
    assert_eq!(
        api.keys(&format!("/isthmus/ipam/{sub_id}/")).await.len(),
        claims_before
    );

    // A service port whose router is gone (a crash of an older controller) is swept once old.
    let (net_id, _) = api.network_with_subnet(ALICE, "10.9.0.0/24").await;
    let (s, orphan) = api
        .call(
            As::Anonymous,
            "POST",
            "/v2.0/ports",
            Some(json!({"port": {"network_id": net_id,
                "device_owner": "network:router_interface_distributed",
                "device_id": "5e7f4c2a-0000-4000-8000-000000000000"}})),
        )
        .await;
    assert_eq!(s, 201, "{orphan}");
    let service =
        isthmus_controller::Service::new(api.store.clone(), isthmus_controller::Config::default());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(
        service.sweep_router_ports(now, 3600).await.unwrap(),
        0,
        "too young"
    );
    assert_eq!(
        service.sweep_router_ports(now + 7200, 3600).await.unwrap(),
        1
    );
    let orphan_id = orphan["port"]["id"].as_str().unwrap();
    let (s, _) = api
        .call(
            As::Anonymous,
            "GET",
            &format!("/v2.0/ports/{orphan_id}"),
            None,
        )
        .await;
    assert_eq!(s, 404);
    // The router's own ports stay.
    assert_eq!(
        service.sweep_router_ports(now + 7200, 3600).await.unwrap(),
        0
    );
    let (s, _) = api
        .call(As::Anonymous, "GET", &format!("/v2.0/routers/{rid}"), None)
        .await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn a_floating_ip_takes_the_router_it_names() {
    let api = Api::memory();
    let (ext, _) = external(&api).await;
    let (net, sub) = api.network_with_subnet(ALICE, "10.4.0.0/24").await;
    let mut routers = Vec::new();
    for name in ["r1", "r2", "r3"] {
        let r = api
            .create(ALICE, "routers", "router", json!({"name": name}))
            .await;
        routers.push(r["id"].as_str().unwrap().to_owned());
    }
    // r1 holds the subnet's gateway, r2 another address of it; r3 only a gateway.
    let second = api
        .create(
            ALICE,
            "ports",
            "port",
            json!({"network_id": net, "fixed_ips": [{"subnet_id": sub, "ip_address": "10.4.0.254"}]}),
        )
        .await;
    for (router, body) in [
        (&routers[0], json!({"subnet_id": sub})),
        (&routers[1], json!({"port_id": second["id"]})),
    ] {
        let (s, v) = put(
            &api,
            ALICE,
            &format!("/v2.0/routers/{router}/add_router_interface"),
            body,
        )
        .await;
        assert_eq!(s, 200, "{v}");
    }
    for router in &routers {
        let (s, _) = put(
            &api,
            ALICE,
            &format!("/v2.0/routers/{router}"),
            json!({"router": {"external_gateway_info": {"network_id": ext}}}),
        )
        .await;
        assert_eq!(s, 200);
    }
    let vm = api
        .create(ALICE, "ports", "port", json!({"network_id": net}))
        .await;
    let fip = api
        .create(
            ALICE,
            "floatingips",
            "floatingip",
            json!({"floating_network_id": ext, "port_id": vm["id"], "router_id": routers[1]}),
        )
        .await;
    assert_eq!(fip["router_id"], json!(routers[1]));
    let path = format!("/v2.0/floatingips/{}", fip["id"].as_str().unwrap());

    // A router alone moves the association; the port stays.
    let (s, v) = put(
        &api,
        ALICE,
        &path,
        json!({"floatingip": {"router_id": routers[0]}}),
    )
    .await;
    assert_eq!(
        (
            s,
            v["floatingip"]["router_id"].clone(),
            v["floatingip"]["port_id"].clone()
        ),
        (200, json!(routers[0]), vm["id"].clone())
    );
    // A router that does not reach the port's subnet.
    let (s, v) = put(
        &api,
        ALICE,
        &path,
        json!({"floatingip": {"router_id": routers[2]}}),
    )
    .await;
    assert_eq!(
        (s, v["NeutronError"]["type"].clone()),
        (400, json!("HTTPBadRequest")),
        "{v}"
    );
    let (_, v) = api.call(ALICE, "GET", &path, None).await;
    assert_eq!(v["floatingip"]["router_id"], json!(routers[0]), "unchanged");
    // Unknown routers, other projects' routers.
    let (s, _) = put(
        &api,
        ALICE,
        &path,
        json!({"floatingip": {"router_id": "11111111-2222-3333-4444-555555555555"}}),
    )
    .await;
    assert_eq!(s, 404);
    let theirs = api
        .create(
            As::Member("mallory"),
            "routers",
            "router",
            json!({"name": "m"}),
        )
        .await;
    let (s, _) = put(
        &api,
        ALICE,
        &path,
        json!({"floatingip": {"router_id": theirs["id"]}}),
    )
    .await;
    assert_eq!(s, 404);
    // No port: nothing to route.
    let (s, v) = api
        .call(
            ALICE,
            "POST",
            "/v2.0/floatingips",
            Some(json!({"floatingip": {"floating_network_id": ext, "router_id": routers[0]}})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let (_, v) = put(&api, ALICE, &path, json!({"floatingip": {"port_id": null}})).await;
    assert_eq!(v["floatingip"]["router_id"], Value::Null);
    let (s, _) = put(
        &api,
        ALICE,
        &path,
        json!({"floatingip": {"router_id": routers[0]}}),
    )
    .await;
    assert_eq!(s, 400, "an unassociated floating IP has no port to route");
    // Without router_id the service still chooses.
    let (_, v) = put(
        &api,
        ALICE,
        &path,
        json!({"floatingip": {"port_id": vm["id"]}}),
    )
    .await;
    assert!(routers[..2].contains(&v["floatingip"]["router_id"].as_str().unwrap().to_owned()));
    let (_, v) = api.call(ALICE, "GET", "/v2.0/extensions", None).await;
    assert!(v["extensions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["alias"] == "floating-ip-router-writable"));
}
