//! Port extensions: MAC regeneration, extra DHCP options, tags on bulk creation.

mod common;

use common::{Api, As};
use serde_json::json;

const A: As = As::Member("project-a");
/// Project A's admin: only admins give subnets service types.
const A_ADMIN: As = As::Admin("project-a");
/// Project A's manager: MACs change at a manager's (or an admin's) request.
const A_MANAGER: As = As::Manager("project-a");

#[tokio::test]
async fn mac_regeneration_dhcp_options_and_bulk_tags() {
    let api = Api::memory();
    let (net, _) = api.network_with_subnet(A, "10.0.0.0/24").await;
    let port = api
        .create(
            A,
            "ports",
            "port",
            json!({"network_id": net, "extra_dhcp_opts": [
            {"opt_name": "tftp-server", "opt_value": "10.0.0.9"},
            {"opt_name": "bootfile-name", "opt_value": "pxelinux.0"},
            {"opt_name": "dns-server", "opt_value": "2001:db8::53", "ip_version": 6}]}),
        )
        .await;
    let id = port["id"].as_str().unwrap().to_owned();
    let path = format!("/v2.0/ports/{id}");
    assert_eq!(port["extra_dhcp_opts"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        port["extra_dhcp_opts"][0],
        json!({"opt_name": "tftp-server", "opt_value": "10.0.0.9", "ip_version": 4})
    );

    // Update: a null value removes, a new value replaces, a new name adds.
    let (s, v) = api
        .call(
            A,
            "PUT",
            &path,
            Some(json!({"port": {"extra_dhcp_opts": [
            {"opt_name": "bootfile-name", "opt_value": null},
            {"opt_name": "tftp-server", "opt_value": "10.0.0.10"},
            {"opt_name": "mtu", "opt_value": "1400"}]}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let names: Vec<(String, String)> = v["port"]["extra_dhcp_opts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["opt_name"].as_str().unwrap().to_owned(),
                o["opt_value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(names.len(), 3);
    assert!(names.contains(&("tftp-server".into(), "10.0.0.10".into())));
    assert!(names.contains(&("mtu".into(), "1400".into())));
    assert!(!names.iter().any(|(n, _)| n == "bootfile-name"));
    for bad in [
        json!([{"opt_value": "x"}]),
        json!([{"opt_name": "", "opt_value": "x"}]),
        json!([{"opt_name": "a", "opt_value": "x", "ip_version": 5}]),
        json!([{"opt_name": "a", "opt_value": "x", "colour": 1}]),
        json!([{"opt_name": "a", "opt_value": "x"}, {"opt_name": "a", "opt_value": "y"}]),
    ] {
        let (s, _) = api
            .call(
                A,
                "PUT",
                &path,
                Some(json!({"port": {"extra_dhcp_opts": bad}})),
            )
            .await;
        assert_eq!(s, 400, "{bad}");
    }

    // port-mac-address-regenerate: null asks for a new one.
    let old_mac = port["mac_address"].as_str().unwrap().to_owned();
    let regenerate = json!({"port": {"mac_address": null}});
    let (s, _) = api.call(A, "PUT", &path, Some(regenerate.clone())).await;
    assert_eq!(s, 403, "update_port:mac_address is for managers");
    let (s, v) = api.call(A_MANAGER, "PUT", &path, Some(regenerate)).await;
    assert_eq!(s, 200, "{v}");
    let new_mac = v["port"]["mac_address"].as_str().unwrap().to_owned();
    assert_ne!(new_mac, old_mac);
    assert!(new_mac.starts_with("fa:16:3e:"), "{new_mac}");
    assert_eq!(
        api.keys(&format!("/isthmus/mac/{net}/{old_mac}"))
            .await
            .len(),
        0
    );
    assert_eq!(
        api.keys(&format!("/isthmus/mac/{net}/{new_mac}"))
            .await
            .len(),
        1
    );

    // tag-ports-during-bulk-creation.
    let (s, v) = api
        .call(
            A,
            "POST",
            "/v2.0/ports",
            Some(json!({"ports": [
            {"network_id": net, "tags": ["red", "blue"]},
            {"network_id": net, "tags": ["green"]}]})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["ports"][0]["tags"], json!(["blue", "red"]));
    assert_eq!(v["ports"][1]["tags"], json!(["green"]));
    let (_, v) = api.call(A, "GET", "/v2.0/ports?tags=green", None).await;
    assert_eq!(v["ports"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn subnet_service_types_steer_addresses() {
    let api = Api::memory();
    let net = api
        .create(A, "networks", "network", json!({"name": "n"}))
        .await;
    let net_id = net["id"].as_str().unwrap().to_owned();
    let typed = json!({"subnet": {"network_id": net_id, "ip_version": 4,
        "cidr": "10.0.0.0/24", "service_types": ["network:floatingip"]}});
    let (s, v) = api.call(A, "POST", "/v2.0/subnets", Some(typed)).await;
    assert_eq!(
        (s, v["NeutronError"]["type"].as_str()),
        (403, Some("PolicyNotAuthorized"))
    );
    let (s, v) = api
        .call(
            A_ADMIN,
            "POST",
            "/v2.0/subnets",
            Some(json!({"subnet": {"network_id": net_id, "ip_version": 4,
            "cidr": "10.0.0.0/24", "service_types": ["nonsense"]}})),
        )
        .await;
    assert_eq!(
        (s, v["NeutronError"]["type"].as_str()),
        (400, Some("InvalidSubnetServiceType"))
    );
    let fips = api
        .create(
            A_ADMIN,
            "subnets",
            "subnet",
            json!({"network_id": net_id, "ip_version": 4,
            "cidr": "10.0.0.0/24", "service_types": ["network:floatingip"]}),
        )
        .await;
    assert_eq!(fips["service_types"], json!(["network:floatingip"]));
    // Only the floating IP subnet: a VM port finds no subnet for it.
    let (s, v) = api
        .call(
            A,
            "POST",
            "/v2.0/ports",
            Some(json!({"port": {"network_id": net_id, "device_owner": "compute:nova"}})),
        )
        .await;
    assert_eq!(
        (s, v["NeutronError"]["type"].as_str()),
        (409, Some("IpAddressGenerationFailureNoMatchingSubnet"))
    );
    let vms = api
        .create(
            A,
            "subnets",
            "subnet",
            json!({"network_id": net_id, "ip_version": 4, "cidr": "10.1.0.0/24"}),
        )
        .await;
    let vm = api
        .create(
            A,
            "ports",
            "port",
            json!({"network_id": net_id, "device_owner": "compute:nova"}),
        )
        .await;
    assert_eq!(vm["fixed_ips"][0]["subnet_id"], vms["id"]);
    let fip = api
        .create(
            A,
            "ports",
            "port",
            json!({"network_id": net_id, "device_owner": "network:floatingip"}),
        )
        .await;
    assert_eq!(
        fip["fixed_ips"][0]["subnet_id"], fips["id"],
        "its own subnet first"
    );
    let (s, _) = api
        .call(
            A,
            "POST",
            "/v2.0/ports",
            Some(
                json!({"port": {"network_id": net_id, "device_owner": "compute:nova",
            "fixed_ips": [{"subnet_id": fips["id"]}]}}),
            ),
        )
        .await;
    assert_eq!(s, 400, "an explicit subnet must serve the owner too");
    // Service types change with an update (an admin's).
    let (s, v) = api
        .call(
            A_ADMIN,
            "PUT",
            &format!("/v2.0/subnets/{}", fips["id"].as_str().unwrap()),
            Some(json!({"subnet": {"service_types": ["network:floatingip", "compute:nova"]}})),
        )
        .await;
    assert_eq!(
        (s, v["subnet"]["service_types"].as_array().map(Vec::len)),
        (200, Some(2))
    );
}
