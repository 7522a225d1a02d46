//! Trunks against the in-memory store: Neutron's trunk and trunk-details semantics, its
//! validation and in-use errors, subports following their parent's binding, and the status
//! their node's reports make.

mod common;

use common::{fault, Api, As};
use serde_json::{json, Value};

const P: &str = "11111111111111111111111111111111";

async fn port(api: &Api, who: As<'_>, net: &str, name: &str) -> String {
    api.create(
        who,
        "ports",
        "port",
        json!({"network_id": net, "name": name}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn show(api: &Api, path: &str) -> Value {
    let (s, v) = api.call(As::Anonymous, "GET", path, None).await;
    assert_eq!(s, 200, "{path}: {v}");
    v
}

fn sub(port_id: &str, vlan: u32) -> Value {
    json!({"port_id": port_id, "segmentation_type": "vlan", "segmentation_id": vlan})
}

#[tokio::test]
async fn a_trunk_carries_subports_that_follow_their_parent() {
    let api = Api::memory();
    let me = As::Member(P);
    let (parent_net, _) = api.network_with_subnet(me, "10.0.0.0/24").await;
    let (net_a, _) = api.network_with_subnet(me, "10.1.0.0/24").await;
    let (net_b, _) = api.network_with_subnet(me, "10.2.0.0/24").await;
    let parent = port(&api, me, &parent_net, "vm").await;
    let a = port(&api, me, &net_a, "pod-a").await;
    let b = port(&api, me, &net_b, "pod-b").await;

    let trunk = api
        .create(
            me,
            "trunks",
            "trunk",
            json!({"name": "t", "port_id": parent, "sub_ports": [sub(&a, 101)]}),
        )
        .await;
    let id = trunk["id"].as_str().unwrap().to_owned();
    assert_eq!(trunk["status"], "DOWN");
    assert_eq!(trunk["admin_state_up"], true);
    assert_eq!(trunk["sub_ports"], json!([sub(&a, 101)]));
    assert_eq!(trunk["revision_number"], 1);
    assert!(trunk["tags"].as_array().unwrap().is_empty());

    // The parent shows trunk_details with the subport's MAC; the subport is owned by the trunk.
    let parent_port = show(&api, &format!("/v2.0/ports/{parent}")).await["port"].clone();
    let a_port = show(&api, &format!("/v2.0/ports/{a}")).await["port"].clone();
    assert_eq!(parent_port["trunk_details"]["trunk_id"], id);
    assert_eq!(
        parent_port["trunk_details"]["sub_ports"][0]["mac_address"],
        a_port["mac_address"]
    );
    assert_eq!(a_port["device_owner"], "trunk:subport");
    assert!(a_port.get("trunk_details").is_none());

    // add_subports answers the unwrapped trunk; get_subports lists them.
    let (s, v) = api
        .call(
            me,
            "PUT",
            &format!("/v2.0/trunks/{id}/add_subports"),
            Some(json!({"sub_ports": [sub(&b, 102)]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["sub_ports"], json!([sub(&a, 101), sub(&b, 102)]));
    let (s, v) = api
        .call(me, "GET", &format!("/v2.0/trunks/{id}/get_subports"), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(v, json!({"sub_ports": [sub(&a, 101), sub(&b, 102)]}));

    // Binding the parent binds its subports to the same node; the status follows the reports.
    let (s, _) = api
        .call(
            As::Anonymous,
            "PUT",
            &format!("/v2.0/ports/{parent}"),
            Some(json!({"port": {"binding:host_id": "node1"}})),
        )
        .await;
    assert_eq!(s, 200);
    for p in [&a, &b] {
        let v = show(&api, &format!("/v2.0/ports/{p}")).await;
        assert_eq!(v["port"]["binding:host_id"], "node1");
    }
    let status = |api: Api, id: String| async move {
        show(&api, &format!("/v2.0/trunks/{id}")).await["trunk"]["status"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(status(api.clone(), id.clone()).await, "BUILD");
    let report = |port: String, state: &'static str| {
        let api = api.clone();
        async move {
            let (s, v) = api
                .call(
                    As::Anonymous,
                    "PUT",
                    &format!("/isthmus/v1/ports/{port}/status"),
                    Some(json!({"status": state, "node": "node1"})),
                )
                .await;
            assert_eq!(s, 200, "{v}");
        }
    };
    report(parent.clone(), "ACTIVE").await;
    report(a.clone(), "ACTIVE").await;
    assert_eq!(status(api.clone(), id.clone()).await, "BUILD");
    report(b.clone(), "ERROR").await;
    assert_eq!(status(api.clone(), id.clone()).await, "DEGRADED");
    report(b.clone(), "ACTIVE").await;
    assert_eq!(status(api.clone(), id.clone()).await, "ACTIVE");
    let (_, v) = api
        .call(me, "GET", "/v2.0/trunks?status=ACTIVE&fields=id", None)
        .await;
    assert_eq!(v["trunks"], json!([{"id": id}]));

    // A subport is not rebound on its own.
    let (s, v) = api
        .call(
            As::Anonymous,
            "PUT",
            &format!("/v2.0/ports/{a}"),
            Some(json!({"port": {"binding:host_id": "node2"}})),
        )
        .await;
    assert_eq!(s, 409, "{v}");

    // Ports in a trunk cannot be deleted; a trunk whose bound parent carries subports is in
    // use.
    for (p, kind) in [
        (&parent, "PortInUseAsTrunkParent"),
        (&a, "PortInUseAsSubPort"),
    ] {
        let (s, v) = api
            .call(me, "DELETE", &format!("/v2.0/ports/{p}"), None)
            .await;
        assert_eq!((s, fault(&v)), (409, kind), "{v}");
    }
    let (s, v) = api
        .call(me, "DELETE", &format!("/v2.0/trunks/{id}"), None)
        .await;
    assert_eq!((s, fault(&v)), (409, "TrunkInUse"));

    // remove_subports releases the port: unbound, no owner, deletable.
    let (s, v) = api
        .call(
            me,
            "PUT",
            &format!("/v2.0/trunks/{id}/remove_subports"),
            Some(json!({"sub_ports": [{"port_id": a}]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["sub_ports"], json!([sub(&b, 102)]));
    let a_port = show(&api, &format!("/v2.0/ports/{a}")).await["port"].clone();
    assert_eq!(a_port["device_owner"], "");
    assert_eq!(a_port["binding:host_id"], "");
    let parent_port = show(&api, &format!("/v2.0/ports/{parent}")).await["port"].clone();
    assert_eq!(
        parent_port["trunk_details"]["sub_ports"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let (s, v) = api
        .call(
            me,
            "PUT",
            &format!("/v2.0/trunks/{id}/remove_subports"),
            Some(json!({"sub_ports": [{"port_id": a}]})),
        )
        .await;
    assert_eq!((s, fault(&v)), (404, "SubPortNotFound"));
    let (s, _) = api
        .call(me, "DELETE", &format!("/v2.0/ports/{a}"), None)
        .await;
    assert_eq!(s, 204);

    // A disabled trunk cannot change; enabled again, its last subport leaves and it goes.
    let (s, v) = api
        .call(
            me,
            "PUT",
            &format!("/v2.0/trunks/{id}"),
            Some(json!({"trunk": {"admin_state_up": false, "name": "off"}})),
        )
        .await;
    assert_eq!((s, v["trunk"]["name"].as_str()), (200, Some("off")));
    let (s, v) = api
        .call(
            me,
            "PUT",
            &format!("/v2.0/trunks/{id}/remove_subports"),
            Some(json!({"sub_ports": [{"port_id": b}]})),
        )
        .await;
    assert_eq!((s, fault(&v)), (409, "TrunkDisabled"));
    api.call(
        me,
        "PUT",
        &format!("/v2.0/trunks/{id}"),
        Some(json!({"trunk": {"admin_state_up": true}})),
    )
    .await;
    let (s, _) = api
        .call(
            me,
            "PUT",
            &format!("/v2.0/trunks/{id}/remove_subports"),
            Some(json!({"sub_ports": [{"port_id": b}]})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = api
        .call(me, "DELETE", &format!("/v2.0/trunks/{id}"), None)
        .await;
    assert_eq!(s, 204);
    let parent_port = show(&api, &format!("/v2.0/ports/{parent}")).await["port"].clone();
    assert!(parent_port.get("trunk_details").is_none());
    for p in [&parent, &b] {
        let (s, _) = api
            .call(me, "DELETE", &format!("/v2.0/ports/{p}"), None)
            .await;
        assert_eq!(s, 204);
    }
}

#[tokio::test]
async fn bad_trunks_get_neutrons_errors_and_change_nothing() {
    let api = Api::memory();
    let me = As::Member(P);
    let (parent_net, _) = api.network_with_subnet(me, "10.0.0.0/24").await;
    let (net_a, _) = api.network_with_subnet(me, "10.1.0.0/24").await;
    let parent = port(&api, me, &parent_net, "vm").await;
    let a = port(&api, me, &net_a, "a").await;
    let b = port(&api, me, &net_a, "b").await;
    let attached = api
        .create(
            me,
            "ports",
            "port",
            json!({"network_id": net_a, "device_id": "some-vm"}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // A network with a larger MTU than the parent's.
    let big = api
        .create(
            As::Anonymous,
            "networks",
            "network",
            json!({"name": "big", "mtu": 1500, "provider:network_type": "flat", "provider:physical_network": "public"}),
        )
        .await;
    let big_net = big["id"].as_str().unwrap().to_owned();
    api.create(
        As::Anonymous,
        "subnets",
        "subnet",
        json!({"network_id": big_net, "ip_version": 4, "cidr": "10.9.0.0/24", "tenant_id": P}),
    )
    .await;
    let big_port = api
        .create(
            As::Anonymous,
            "ports",
            "port",
            json!({"network_id": big_net, "tenant_id": P}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let other_project = api
        .network_with_subnet(
            As::Member("22222222222222222222222222222222"),
            "10.5.0.0/24",
        )
        .await
        .0;
    let foreign = port(
        &api,
        As::Member("22222222222222222222222222222222"),
        &other_project,
        "x",
    )
    .await;

    let create = |body: Value| {
        let api = api.clone();
        async move {
            api.call(me, "POST", "/v2.0/trunks", Some(json!({"trunk": body})))
                .await
        }
    };
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({"name": "x"}), 400, "HTTPBadRequest"),
        (json!({"port_id": "nope"}), 400, "HTTPBadRequest"),
        (
            json!({"port_id": parent, "status": "ACTIVE"}),
            400,
            "HTTPBadRequest",
        ),
        (
            json!({"port_id": parent, "sub_ports": "x"}),
            400,
            "HTTPBadRequest",
        ),
        (
            json!({"port_id": parent, "sub_ports": [sub(&a, 5), sub(&b, 5)]}),
            400,
            "HTTPBadRequest",
        ),
        (
            json!({"port_id": parent, "sub_ports": [sub(&parent, 5)]}),
            409,
            "ParentPortInUse",
        ),
        (
            json!({"port_id": parent, "sub_ports": [sub(&a, 0)]}),
            400,
            "InvalidInput",
        ),
        (
            json!({"port_id": parent, "sub_ports": [sub(&a, 4095)]}),
            400,
            "InvalidInput",
        ),
        (
            json!({"port_id": parent, "sub_ports": [{"port_id": a, "segmentation_type": "inherit"}]}),
            400,
            "InvalidInput",
        ),
        (
            json!({"port_id": parent, "sub_ports": [{"port_id": a, "segmentation_type": "vxlan", "segmentation_id": 7}]}),
            400,
            "InvalidInput",
        ),
        (
            json!({"port_id": parent, "sub_ports": [{"port_id": a}]}),
            400,
            "InvalidInput",
        ),
        (
            json!({"port_id": parent, "sub_ports": [sub(&attached, 7)]}),
            409,
            "PortInUse",
        ),
        (
            json!({"port_id": parent, "sub_ports": [sub(&big_port, 7)]}),
            409,
            "SubPortMtuGreaterThanTrunkPortMtu",
        ),
        (
            json!({"port_id": parent, "sub_ports": [sub(&a, 7), sub(&foreign, 8)]}),
            404,
            "PortNotFound",
        ),
        (json!({"port_id": foreign}), 404, "PortNotFound"),
    ];
    for (body, status, kind) in cases {
        let (s, v) = create(body.clone()).await;
        assert_eq!((s, fault(&v)), (status, kind), "{body}: {v}");
    }
    // Nothing was left half-done: no trunk, and no port was taken.
    let (_, v) = api.call(me, "GET", "/v2.0/trunks", None).await;
    assert_eq!(v["trunks"], json!([]));
    for p in [&parent, &a, &b] {
        let v = show(&api, &format!("/v2.0/ports/{p}")).await;
        assert_eq!(v["port"]["device_owner"], "", "{v}");
        assert!(v["port"].get("trunk_details").is_none());
    }

    // One trunk per parent, one trunk per subport, one port per VLAN.
    let (s, v) = create(json!({"port_id": parent, "sub_ports": [sub(&a, 7)]})).await;
    assert_eq!(s, 201, "{v}");
    let id = v["trunk"]["id"].as_str().unwrap().to_owned();
    let (s, v) = create(json!({"port_id": parent})).await;
    assert_eq!((s, fault(&v)), (409, "ParentPortInUse"));
    let (s, v) = create(json!({"port_id": a})).await;
    assert_eq!((s, fault(&v)), (409, "TrunkPortInUse"));
    let (s, v) = create(json!({"port_id": b, "sub_ports": [sub(&a, 9)]})).await;
    assert_eq!((s, fault(&v)), (409, "TrunkPortInUse"));
    let add = |body: Value| {
        let api = api.clone();
        let id = id.clone();
        async move {
            api.call(
                me,
                "PUT",
                &format!("/v2.0/trunks/{id}/add_subports"),
                Some(body),
            )
            .await
        }
    };
    let (s, v) = add(json!({"sub_ports": [sub(&b, 7)]})).await;
    assert_eq!((s, fault(&v)), (409, "DuplicateSubPort"));
    let (s, v) = add(json!({"sub_ports": [sub(&b, 4095)]})).await;
    assert_eq!((s, fault(&v)), (400, "InvalidInput"));
    let (s, v) = add(json!({"sub_ports": "x"})).await;
    assert_eq!((s, fault(&v)), (400, "InvalidInput"));
    let (s, v) = add(json!({})).await;
    assert_eq!((s, fault(&v)), (400, "InvalidInput"));
    // Another project neither sees the trunk nor changes it.
    let other = As::Member("22222222222222222222222222222222");
    let (s, v) = api
        .call(other, "GET", &format!("/v2.0/trunks/{id}"), None)
        .await;
    assert_eq!((s, fault(&v)), (404, "TrunkNotFound"));
    let (s, _) = api
        .call(
            other,
            "PUT",
            &format!("/v2.0/trunks/{id}/add_subports"),
            Some(json!({"sub_ports": [sub(&foreign, 8)]})),
        )
        .await;
    assert_eq!(s, 404);
    let (s, _) = api
        .call(
            other,
            "GET",
            &format!("/v2.0/trunks/{id}/get_subports"),
            None,
        )
        .await;
    assert_eq!(s, 404);
    // Unknown member actions and reads are 404.
    let (s, _) = api
        .call(me, "GET", &format!("/v2.0/trunks/{id}/add_subports"), None)
        .await;
    assert_eq!(s, 404);
    let (s, _) = api
        .call(
            me,
            "GET",
            &format!("/v2.0/networks/{parent_net}/get_subports"),
            None,
        )
        .await;
    assert_eq!(s, 404);
    // An unbound parent's trunk goes with its subports, which are released.
    let (s, _) = api
        .call(me, "DELETE", &format!("/v2.0/trunks/{id}"), None)
        .await;
    assert_eq!(s, 204);
    let v = show(&api, &format!("/v2.0/ports/{a}")).await;
    assert_eq!(v["port"]["device_owner"], "");
}

#[tokio::test]
async fn nested_attachments_get_subports_on_the_lowest_free_vlan() {
    let api = Api::memory();
    let me = As::Member(P);
    let (vm_net, _) = api.network_with_subnet(me, "10.0.0.0/24").await;
    let (pods_net, _) = api.network_with_subnet(me, "10.1.0.0/24").await;
    let parent = port(&api, me, &vm_net, "vm").await;
    let lonely = port(&api, me, &vm_net, "no-trunk").await;
    let trunk = api
        .create(me, "trunks", "trunk", json!({"port_id": parent}))
        .await;
    let trunk_id = trunk["id"].as_str().unwrap().to_owned();
    let ask = |parent: String, container: &'static str, ifname: &'static str| {
        let api = api.clone();
        let net = pods_net.clone();
        async move {
            api.call(
                As::Anonymous,
                "POST",
                &format!("/isthmus/v1/ports/{parent}/subports"),
                Some(
                    json!({"subport": {"network": net, "container_id": container,
                    "ifname": ifname, "name": "demo/web"}}),
                ),
            )
            .await
        }
    };
    let (s, first) = ask(parent.clone(), "c1", "eth0").await;
    assert_eq!(s, 201, "{first}");
    assert_eq!(first["subport"]["segmentation_id"], 1);
    assert_eq!(first["subport"]["trunk_id"], trunk_id);
    let sub = first["subport"]["port"].clone();
    assert_eq!(sub["device_owner"], "trunk:subport");
    assert_eq!(sub["project_id"], P);
    assert_eq!(sub["name"], "demo/web");
    // The same attachment again is the same subport; another takes the next VLAN.
    let (s, again) = ask(parent.clone(), "c1", "eth0").await;
    assert_eq!((s, &again["subport"]["port"]["id"]), (200, &sub["id"]));
    let (s, second) = ask(parent.clone(), "c1", "net1").await;
    assert_eq!(
        (s, second["subport"]["segmentation_id"].clone()),
        (201, json!(2))
    );
    // Only trunk parents get subports, and only services ask.
    let (s, v) = ask(lonely, "c2", "eth0").await;
    assert_eq!(s, 409, "{v}");
    let (s, _) = api
        .call(
            me,
            "POST",
            &format!("/isthmus/v1/ports/{parent}/subports"),
            Some(json!({"subport": {"network": pods_net, "container_id": "c3", "ifname": "eth0"}})),
        )
        .await;
    assert_eq!(s, 403);
    let (s, v) = api
        .call(
            As::Anonymous,
            "POST",
            &format!("/isthmus/v1/ports/{parent}/subports"),
            Some(json!({"subport": {"network": "no-such-network", "container_id": "c4", "ifname": "eth0"}})),
        )
        .await;
    assert_eq!((s, fault(&v)), (404, "NetworkNotFound"));

    // Release: out of the trunk and deleted; twice is fine.
    for _ in 0..2 {
        let (s, _) = api
            .call(
                As::Anonymous,
                "DELETE",
                &format!("/isthmus/v1/ports/{parent}/subports/c1/eth0"),
                None,
            )
            .await;
        assert_eq!(s, 204);
    }
    let (s, _) = api
        .call(
            As::Anonymous,
            "GET",
            &format!("/v2.0/ports/{}", sub["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(s, 404);
    let v = show(&api, &format!("/v2.0/trunks/{trunk_id}")).await;
    assert_eq!(v["trunk"]["sub_ports"].as_array().unwrap().len(), 1);
    // The freed VLAN is the next one handed out.
    let (s, third) = ask(parent.clone(), "c5", "eth0").await;
    assert_eq!(
        (s, third["subport"]["segmentation_id"].clone()),
        (201, json!(1))
    );

    // Pools: a subport made ahead (container "isthmus-pool-...") is offered for an attachment
    // and becomes its; offered again for the same attachment it stays the pool's; a port that
    // is no pool subport is refused and a new subport made.
    let (s, pool) = ask(parent.clone(), "isthmus-pool-1", "pool").await;
    assert_eq!(s, 201);
    let pooled = pool["subport"]["port"]["id"].as_str().unwrap().to_owned();
    let (s, spare) = ask(parent.clone(), "isthmus-pool-2", "pool").await;
    assert_eq!(s, 201);
    let spare = spare["subport"]["port"]["id"].as_str().unwrap().to_owned();
    let offer = |container: &'static str, offered: String| {
        let api = api.clone();
        let (net, parent) = (pods_net.clone(), parent.clone());
        async move {
            api.call(
                As::Anonymous,
                "POST",
                &format!("/isthmus/v1/ports/{parent}/subports"),
                Some(
                    json!({"subport": {"network": net, "container_id": container,
                    "ifname": "eth0", "name": "demo/pooled", "pooled": offered}}),
                ),
            )
            .await
        }
    };
    let (s, taken) = offer("c7", pooled.clone()).await;
    assert_eq!(
        (s, taken["subport"]["pool"].as_str()),
        (200, Some("taken")),
        "{taken}"
    );
    assert_eq!(taken["subport"]["port"]["id"], pooled.as_str());
    assert_eq!(taken["subport"]["port"]["name"], "demo/pooled");
    assert_eq!(
        taken["subport"]["port"]["binding:profile"],
        json!({"cni_container_id": "c7", "cni_ifname": "eth0"})
    );
    let (s, kept) = offer("c7", spare.clone()).await;
    assert_eq!((s, kept["subport"]["pool"].as_str()), (200, Some("kept")));
    assert_eq!(kept["subport"]["port"]["id"], pooled.as_str());
    let (s, invalid) = offer("c8", pooled.clone()).await;
    assert_eq!(
        (s, invalid["subport"]["pool"].as_str()),
        (201, Some("invalid"))
    );
    assert_ne!(invalid["subport"]["port"]["id"], pooled.as_str());

    // The VM's project pays for its pods' ports: at its quota, no more subports.
    let (_, ports) = api
        .call(
            As::Anonymous,
            "GET",
            &format!("/v2.0/ports?project_id={P}"),
            None,
        )
        .await;
    let used = ports["ports"].as_array().unwrap().len();
    let (s, v) = api
        .call(
            As::Anonymous,
            "PUT",
            &format!("/v2.0/quotas/{P}"),
            Some(json!({"quota": {"port": used}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = ask(parent.clone(), "c6", "eth0").await;
    assert_eq!((s, fault(&v)), (409, "OverQuota"), "{v}");
    let v = show(&api, &format!("/v2.0/trunks/{trunk_id}")).await;
    assert_eq!(v["trunk"]["sub_ports"].as_array().unwrap().len(), 5);
}
