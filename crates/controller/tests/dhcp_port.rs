//! The network's DHCP port (`network:dhcp`): made with the first subnet with DHCP, one
//! address per such subnet, following `enable_dhcp`, gone with its subnets and network, and
//! repaired by the sweep.

mod common;

use common::{fault, Api, As};
use serde_json::{json, Value};

fn addresses(port: &Value) -> Vec<String> {
    let mut out: Vec<String> = port["fixed_ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["ip_address"].as_str().unwrap().to_owned())
        .collect();
    out.sort();
    out
}

async fn subnet(api: &Api, net: &str, cidr: &str, dhcp: bool) -> String {
    let s = api
        .create(
            As::Member("p"),
            "subnets",
            "subnet",
            json!({"network_id": net, "ip_version": 4, "cidr": cidr, "enable_dhcp": dhcp}),
        )
        .await;
    s["id"].as_str().unwrap().to_owned()
}

async fn put_subnet(api: &Api, id: &str, body: Value) {
    let (s, v) = api
        .call(
            As::Member("p"),
            "PUT",
            &format!("/v2.0/subnets/{id}"),
            Some(json!({ "subnet": body })),
        )
        .await;
    assert_eq!(s, 200, "{v}");
}

async fn delete(api: &Api, path: &str) -> (u16, Value) {
    api.call(As::Member("p"), "DELETE", path, None).await
}

#[tokio::test]
async fn one_dhcp_port_per_network_follows_its_subnets() {
    let api = Api::memory();
    let net = api
        .create(As::Member("p"), "networks", "network", json!({}))
        .await;
    let net = net["id"].as_str().unwrap().to_owned();
    // No subnet with DHCP, no port.
    let quiet = subnet(&api, &net, "10.9.0.0/24", false).await;
    assert!(api.dhcp_ports(&net).await.is_empty());

    // The first subnet with DHCP: the port takes its first address, before any instance.
    let a = subnet(&api, &net, "10.1.0.0/24", true).await;
    let ports = api.dhcp_ports(&net).await;
    assert_eq!(ports.len(), 1);
    let port = &ports[0];
    assert_eq!(addresses(port), ["10.1.0.2"]);
    assert_eq!(port["status"], "ACTIVE");
    assert_eq!(
        port["project_id"], "p",
        "the network owner's, as in Neutron"
    );
    assert_eq!(port["device_id"], format!("dhcp-{net}"));
    assert_eq!(
        port["binding:host_id"], "",
        "served by every node, bound to none"
    );
    let id = port["id"].as_str().unwrap().to_owned();
    let vm = api
        .create(
            As::Member("p"),
            "ports",
            "port",
            json!({"network_id": net, "fixed_ips": [{"subnet_id": a}]}),
        )
        .await;
    assert_eq!(vm["fixed_ips"][0]["ip_address"], "10.1.0.3");

    // A second subnet with DHCP adds an address to the same port; DHCP on the quiet one too.
    let b = subnet(&api, &net, "10.2.0.0/24", true).await;
    put_subnet(&api, &quiet, json!({"enable_dhcp": true})).await;
    let ports = api.dhcp_ports(&net).await;
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0]["id"], id.as_str());
    assert_eq!(addresses(&ports[0]), ["10.1.0.2", "10.2.0.2", "10.9.0.2"]);
    // DHCP off: the address goes back to the pool.
    put_subnet(&api, &a, json!({"enable_dhcp": false})).await;
    assert_eq!(
        addresses(&api.dhcp_ports(&net).await[0]),
        ["10.2.0.2", "10.9.0.2"]
    );
    let claims = api.keys(&format!("/isthmus/ipam/{a}/")).await;
    assert_eq!(claims.len(), 1, "only the instance's: {claims:?}");

    // A subnet whose only user is the DHCP port deletes, taking its address with it; the
    // port stays for the subnet still served.
    let (s, v) = delete(&api, &format!("/v2.0/subnets/{b}")).await;
    assert_eq!(s, 204, "{v}");
    assert_eq!(addresses(&api.dhcp_ports(&net).await[0]), ["10.9.0.2"]);
    assert!(api.keys(&format!("/isthmus/ipam/{b}/")).await.is_empty());
    // A subnet with an instance on it is still in use.
    let (s, v) = delete(&api, &format!("/v2.0/subnets/{a}")).await;
    assert_eq!((s, fault(&v)), (409, "SubnetInUse"));
    // So is the network; without the instance, it goes with its DHCP port.
    let (s, v) = delete(&api, &format!("/v2.0/networks/{net}")).await;
    assert_eq!((s, fault(&v)), (409, "NetworkInUse"));
    let (s, _) = delete(&api, &format!("/v2.0/ports/{}", vm["id"].as_str().unwrap())).await;
    assert_eq!(s, 204);
    let (s, v) = delete(&api, &format!("/v2.0/networks/{net}")).await;
    assert_eq!(s, 204, "{v}");
    for prefix in [
        "/isthmus/ports/",
        "/isthmus/ipam/",
        "/isthmus/mac/",
        "/isthmus/subnets/",
        "/isthmus/index/network-ports/",
    ] {
        assert_eq!(api.keys(prefix).await, Vec::<String>::new(), "{prefix}");
    }
}

#[tokio::test]
async fn the_last_dhcp_subnet_takes_the_port_and_the_sweep_repairs_it() {
    let api = Api::memory();
    let (net, sub) = api
        .network_with_subnet(As::Member("p"), "10.4.0.0/24")
        .await;
    let id = api.dhcp_ports(&net).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Deleted by hand (Neutron lets an admin do it; its agent makes a new one).
    let (s, _) = api
        .call(As::Anonymous, "DELETE", &format!("/v2.0/ports/{id}"), None)
        .await;
    assert_eq!(s, 204);
    assert!(api.dhcp_ports(&net).await.is_empty());
    let service =
        isthmus_controller::Service::new(api.store.clone(), isthmus_controller::Config::default());
    assert_eq!(service.sweep_dhcp_ports().await.unwrap(), 1);
    let ports = api.dhcp_ports(&net).await;
    assert_eq!(
        ports[0]["id"],
        id.as_str(),
        "the same id, derived from the network"
    );
    assert_eq!(addresses(&ports[0]), ["10.4.0.2"]);
    assert_eq!(
        service.sweep_dhcp_ports().await.unwrap(),
        0,
        "nothing left to do"
    );

    // The network's last subnet with DHCP: the port goes with it.
    let (s, v) = delete(&api, &format!("/v2.0/subnets/{sub}")).await;
    assert_eq!(s, 204, "{v}");
    assert!(api.dhcp_ports(&net).await.is_empty());
    assert!(api.keys("/isthmus/ports/").await.is_empty());
    assert!(api.keys("/isthmus/index/network-ports/").await.is_empty());
}
