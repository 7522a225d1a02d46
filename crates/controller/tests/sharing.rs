//! RBAC policies, address scopes and subnet pools through the API, with Neutron's status
//! codes and fault types for what it refuses.

mod common;

use common::{fault, Api, As};
use serde_json::{json, Value};

const A: As = As::Member("project-a");
const B: As = As::Member("project-b");
const ADMIN: As = As::Admin("admin");

async fn policy(api: &Api, who: As<'_>, body: Value) -> (u16, Value) {
    api.call(
        who,
        "POST",
        "/v2.0/rbac-policies",
        Some(json!({ "rbac_policy": body })),
    )
    .await
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_network_shared_with_one_project_through_rbac() {
    let api = Api::memory();
    let (net, _) = api.network_with_subnet(A, "10.0.0.0/24").await;
    let path = format!("/v2.0/networks/{net}");
    assert_eq!(api.call(B, "GET", &path, None).await.0, 404);
    let (_, v) = api.call(B, "GET", "/v2.0/networks", None).await;
    assert_eq!(v["networks"], json!([]));
    let port_body = json!({"port": {"network_id": net}});
    let (s, v) = api
        .call(B, "POST", "/v2.0/ports", Some(port_body.clone()))
        .await;
    assert_eq!((s, fault(&v)), (404, "NetworkNotFound"));

    // Only the owner shares it.
    let share = json!({"object_type": "network", "object_id": net,
                       "action": "access_as_shared", "target_tenant": "project-b"});
    let (s, v) = policy(&api, B, share.clone()).await;
    assert_eq!((s, fault(&v)), (404, "NetworkNotFound"));
    let (s, v) = policy(&api, A, share.clone()).await;
    assert_eq!(s, 201, "{v}");
    let rbac = v["rbac_policy"].clone();
    assert_eq!(rbac["project_id"], "project-a");
    assert_eq!(rbac["target_tenant"], "project-b");
    let (s, v) = policy(&api, A, share.clone()).await;
    assert_eq!((s, fault(&v)), (409, "DuplicateRbacPolicy"));

    // Now B sees it, lists it (with its subnet) and attaches a port.
    assert_eq!(api.call(B, "GET", &path, None).await.0, 200);
    let (_, v) = api.call(B, "GET", "/v2.0/networks", None).await;
    assert_eq!(v["networks"].as_array().unwrap().len(), 1);
    let (_, v) = api.call(B, "GET", "/v2.0/subnets", None).await;
    assert_eq!(v["subnets"].as_array().unwrap().len(), 1);
    let (s, v) = api
        .call(B, "POST", "/v2.0/ports", Some(port_body.clone()))
        .await;
    assert_eq!(s, 201, "{v}");
    let port = id(&v["port"]);
    // A third project still sees nothing.
    assert_eq!(
        api.call(As::Member("project-c"), "GET", &path, None)
            .await
            .0,
        404
    );

    // The grant cannot go, nor move, while B's port uses it.
    let policy_path = format!("/v2.0/rbac-policies/{}", id(&rbac));
    let (s, v) = api.call(A, "DELETE", &policy_path, None).await;
    assert_eq!((s, fault(&v)), (409, "RbacPolicyInUse"));
    let (s, v) = api
        .call(
            A,
            "PUT",
            &policy_path,
            Some(json!({"rbac_policy": {"target_tenant": "project-c"}})),
        )
        .await;
    assert_eq!((s, fault(&v)), (409, "RbacPolicyInUse"));
    // B does not see the policy; A does, and filters it.
    assert_eq!(api.call(B, "GET", &policy_path, None).await.0, 404);
    let (_, v) = api
        .call(
            A,
            "GET",
            &format!("/v2.0/rbac-policies?object_id={net}&action=access_as_shared"),
            None,
        )
        .await;
    assert_eq!(v["rbac_policies"].as_array().unwrap().len(), 1);

    assert_eq!(
        api.call(B, "DELETE", &format!("/v2.0/ports/{port}"), None)
            .await
            .0,
        204
    );
    let (s, v) = api
        .call(
            A,
            "PUT",
            &policy_path,
            Some(json!({"rbac_policy": {"target_tenant": "project-c"}})),
        )
        .await;
    assert_eq!(
        (s, v["rbac_policy"]["target_tenant"].clone()),
        (200, json!("project-c"))
    );
    assert_eq!(api.call(B, "GET", &path, None).await.0, 404);
    assert_eq!(api.call(A, "DELETE", &policy_path, None).await.0, 204);
    assert_eq!(
        api.call(As::Member("project-c"), "GET", &path, None)
            .await
            .0,
        404
    );

    // A wildcard grant reaches everyone (only admins make one); deleting the network takes
    // its policies along.
    let wildcard = json!({"object_type": "network", "object_id": net,
                          "action": "access_as_external", "target_tenant": "*"});
    assert_eq!(policy(&api, A, wildcard).await.0, 403);
    let (s, _) = policy(
        &api,
        As::Admin("project-a"),
        json!({"object_type": "network", "object_id": net,
                                        "action": "access_as_external", "target_tenant": "*"}),
    )
    .await;
    assert_eq!(s, 201);
    assert_eq!(
        api.call(As::Member("anyone"), "GET", &path, None).await.0,
        200
    );
    assert_eq!(api.call(A, "DELETE", &path, None).await.0, 204);
    assert!(api.keys("/isthmus/rbac").await.is_empty());
    assert!(api.keys("/isthmus/index/rbac-objects/").await.is_empty());
}

#[tokio::test]
async fn shared_is_the_wildcard_policy() {
    let api = Api::memory();
    let admin = As::Admin("project-a");
    let (s, v) = api
        .call(
            admin,
            "POST",
            "/v2.0/networks",
            Some(json!({"network": {"name": "pub", "shared": true}})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let net = id(&v["network"]);
    let path = format!("/v2.0/networks/{net}");
    let wildcards = || async {
        let (_, v) = api
            .call(
                admin,
                "GET",
                &format!("/v2.0/rbac-policies?object_id={net}&target_tenant=*"),
                None,
            )
            .await;
        v["rbac_policies"].as_array().unwrap().clone()
    };
    // Neutron shows a shared network's sharing as its policy.
    let made = wildcards().await;
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!(made[0]["action"], "access_as_shared");
    assert_eq!(made[0]["project_id"], "project-a");

    // B uses it; neither unsharing nor deleting the policy may cut B off.
    let (s, _) = api
        .call(
            admin,
            "POST",
            "/v2.0/subnets",
            Some(json!({"subnet": {"network_id": net, "cidr": "10.9.0.0/24", "ip_version": 4}})),
        )
        .await;
    assert_eq!(s, 201);
    let (s, v) = api
        .call(
            B,
            "POST",
            "/v2.0/ports",
            Some(json!({"port": {"network_id": net}})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let port = id(&v["port"]);
    let (s, v) = api
        .call(
            admin,
            "PUT",
            &path,
            Some(json!({"network": {"shared": false}})),
        )
        .await;
    assert_eq!((s, fault(&v)), (409, "InvalidSharedSetting"));
    let policy_path = format!("/v2.0/rbac-policies/{}", id(&made[0]));
    let (s, v) = api.call(admin, "DELETE", &policy_path, None).await;
    assert_eq!((s, fault(&v)), (409, "RbacPolicyInUse"));
    assert_eq!(api.call(B, "GET", &path, None).await.0, 200);

    // Once B is gone, deleting the policy unshares the network.
    assert_eq!(
        api.call(B, "DELETE", &format!("/v2.0/ports/{port}"), None)
            .await
            .0,
        204
    );
    assert_eq!(api.call(admin, "DELETE", &policy_path, None).await.0, 204);
    let (_, v) = api.call(admin, "GET", &path, None).await;
    assert_eq!(v["network"]["shared"], false);
    assert_eq!(api.call(B, "GET", &path, None).await.0, 404);

    // A wildcard policy shares it again, and `shared` says so; the flag removes it again.
    let (s, v) = policy(
        &api,
        admin,
        json!({"object_type": "network", "object_id": net,
               "action": "access_as_shared", "target_tenant": "*"}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (_, v) = api.call(B, "GET", &path, None).await;
    assert_eq!(v["network"]["shared"], true);
    let (s, v) = api
        .call(
            admin,
            "PUT",
            &path,
            Some(json!({"network": {"shared": false}})),
        )
        .await;
    assert_eq!((s, v["network"]["shared"].clone()), (200, json!(false)));
    assert!(wildcards().await.is_empty());
    let (s, _) = api
        .call(
            admin,
            "PUT",
            &path,
            Some(json!({"network": {"shared": true}})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(wildcards().await.len(), 1);
    // Retargeting the wildcard to one project unshares it for the others.
    let wildcard = id(&wildcards().await[0]);
    let (s, _) = api
        .call(
            admin,
            "PUT",
            &format!("/v2.0/rbac-policies/{wildcard}"),
            Some(json!({"rbac_policy": {"target_tenant": "project-b"}})),
        )
        .await;
    assert_eq!(s, 200);
    let (_, v) = api.call(admin, "GET", &path, None).await;
    assert_eq!(v["network"]["shared"], false);
    assert_eq!(api.call(B, "GET", &path, None).await.0, 200);
    assert_eq!(
        api.call(As::Member("project-c"), "GET", &path, None)
            .await
            .0,
        404
    );
    assert_eq!(api.call(admin, "DELETE", &path, None).await.0, 204);
    assert!(api.keys("/isthmus/rbac").await.is_empty());
}

#[tokio::test]
async fn rbac_refuses_what_neutron_refuses() {
    let api = Api::memory();
    let (net, _) = api.network_with_subnet(A, "10.0.0.0/24").await;
    for (body, status, wanted) in [
        (
            json!({"object_type": "router", "object_id": net, "action": "access_as_shared", "target_tenant": "b"}),
            400,
            "HTTPBadRequest",
        ),
        (
            json!({"object_type": "network", "object_id": net, "action": "access_as_nothing", "target_tenant": "b"}),
            400,
            "InvalidActionForType",
        ),
        (
            json!({"object_type": "security_group", "object_id": net, "action": "access_as_external", "target_tenant": "b"}),
            400,
            "InvalidActionForType",
        ),
        (
            json!({"object_type": "network", "object_id": net, "action": "access_as_shared"}),
            400,
            "HTTPBadRequest",
        ),
        (
            json!({"object_type": "network", "object_id": "not-a-uuid", "action": "access_as_shared", "target_tenant": "b"}),
            400,
            "HTTPBadRequest",
        ),
        (
            json!({"object_type": "network", "object_id": "11111111-2222-3333-4444-555555555555", "action": "access_as_shared", "target_tenant": "b"}),
            404,
            "NetworkNotFound",
        ),
    ] {
        let (s, v) = policy(&api, A, body).await;
        assert_eq!((s, fault(&v)), (status, wanted), "{v}");
    }
    let (_, v) = policy(
        &api,
        A,
        json!({"object_type": "network", "object_id": net,
                                        "action": "access_as_shared", "target_tenant": "b"}),
    )
    .await;
    let path = format!("/v2.0/rbac-policies/{}", id(&v["rbac_policy"]));
    let (s, v) = api
        .call(
            A,
            "PUT",
            &path,
            Some(json!({"rbac_policy": {"action": "access_as_external"}})),
        )
        .await;
    assert_eq!((s, fault(&v)), (400, "HTTPBadRequest"));
}

#[tokio::test]
async fn a_security_group_shared_through_rbac() {
    let api = Api::memory();
    let group = api
        .create(
            A,
            "security-groups",
            "security_group",
            json!({"name": "web"}),
        )
        .await;
    let group = id(&group);
    let (b_net, _) = api.network_with_subnet(B, "10.1.0.0/24").await;
    let port = json!({"port": {"network_id": b_net, "security_groups": [group]}});
    let (s, v) = api.call(B, "POST", "/v2.0/ports", Some(port.clone())).await;
    assert_eq!((s, fault(&v)), (404, "SecurityGroupNotFound"));
    let (s, v) = policy(&api, A, json!({"object_type": "security_group", "object_id": group,
                                        "action": "access_as_shared", "target_tenant": "project-b"}))
        .await;
    assert_eq!(s, 201, "{v}");
    let policy_path = format!("/v2.0/rbac-policies/{}", id(&v["rbac_policy"]));
    assert_eq!(
        api.call(B, "GET", &format!("/v2.0/security-groups/{group}"), None)
            .await
            .0,
        200
    );
    let (s, v) = api.call(B, "POST", "/v2.0/ports", Some(port)).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = api.call(A, "DELETE", &policy_path, None).await;
    assert_eq!((s, fault(&v)), (409, "RbacPolicyInUse"));
}

#[tokio::test]
async fn address_scopes() {
    let api = Api::memory();
    let (s, v) = api
        .call(
            A,
            "POST",
            "/v2.0/address-scopes",
            Some(json!({"address_scope": {"name": "s4", "ip_version": 4}})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let scope = v["address_scope"].clone();
    assert_eq!(
        (scope["shared"].clone(), scope["ip_version"].clone()),
        (json!(false), json!(4))
    );
    for (body, status, wanted) in [
        (json!({"name": "x", "ip_version": 5}), 400, "HTTPBadRequest"),
        (json!({"name": "x"}), 400, "HTTPBadRequest"),
        (
            json!({"name": "x", "ip_version": 4, "shared": true}),
            403,
            "PolicyNotAuthorized",
        ),
    ] {
        let (s, v) = api
            .call(
                A,
                "POST",
                "/v2.0/address-scopes",
                Some(json!({ "address_scope": body })),
            )
            .await;
        assert_eq!((s, fault(&v)), (status, wanted), "{v}");
    }
    let path = format!("/v2.0/address-scopes/{}", id(&scope));
    let (s, v) = api
        .call(
            A,
            "PUT",
            &path,
            Some(json!({"address_scope": {"name": "renamed"}})),
        )
        .await;
    assert_eq!(
        (s, v["address_scope"]["name"].clone()),
        (200, json!("renamed"))
    );
    let (s, _) = api
        .call(
            A,
            "PUT",
            &path,
            Some(json!({"address_scope": {"ip_version": 6}})),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(api.call(B, "GET", &path, None).await.0, 404);

    // Pools in it: same family, unique prefixes; the scope stays while they do.
    let pool = |name: &str, prefix: &str| json!({"subnetpool": {"name": name, "prefixes": [prefix], "address_scope_id": id(&scope)}});
    let (s, v) = api
        .call(
            A,
            "POST",
            "/v2.0/subnetpools",
            Some(pool("p1", "10.0.0.0/16")),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let p1 = id(&v["subnetpool"]);
    let (s, v) = api
        .call(
            A,
            "POST",
            "/v2.0/subnetpools",
            Some(pool("p2", "10.0.128.0/17")),
        )
        .await;
    assert_eq!((s, fault(&v)), (409, "AddressScopePrefixConflict"));
    let (s, v) = api
        .call(
            A,
            "POST",
            "/v2.0/subnetpools",
            Some(pool("p3", "2001:db8::/48")),
        )
        .await;
    assert_eq!(
        (s, fault(&v)),
        (400, "IllegalSubnetPoolIpVersionAssociationToAddressScope")
    );
    let (s, v) = api
        .call(
            B,
            "POST",
            "/v2.0/subnetpools",
            Some(pool("p4", "10.9.0.0/16")),
        )
        .await;
    assert_eq!((s, fault(&v)), (404, "AddressScopeNotFound"));
    let (s, v) = api.call(A, "DELETE", &path, None).await;
    assert_eq!((s, fault(&v)), (409, "AddressScopeInUse"));
    // Shared with B through RBAC, B's pools may join it.
    let (s, _) = policy(&api, A, json!({"object_type": "address_scope", "object_id": id(&scope),
                                        "action": "access_as_shared", "target_tenant": "project-b"}))
        .await;
    assert_eq!(s, 201);
    let (s, v) = api
        .call(
            B,
            "POST",
            "/v2.0/subnetpools",
            Some(pool("p4", "10.9.0.0/16")),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let p4 = id(&v["subnetpool"]);
    for p in [&p1, &p4] {
        let who = if p == &p1 { A } else { B };
        assert_eq!(
            api.call(who, "DELETE", &format!("/v2.0/subnetpools/{p}"), None)
                .await
                .0,
            204
        );
    }
    assert_eq!(api.call(A, "DELETE", &path, None).await.0, 204);
}

#[tokio::test]
async fn subnet_pools_allocate_prefixes() {
    let api = Api::memory();
    let (s, v) = api
        .call(
            A,
            "POST",
            "/v2.0/subnetpools",
            Some(json!({"subnetpool": {
            "name": "pool", "prefixes": ["10.10.0.0/16"], "min_prefixlen": 20,
            "default_prefixlen": 24, "max_prefixlen": 28}})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let pool = v["subnetpool"].clone();
    assert_eq!(pool["prefixes"], json!(["10.10.0.0/16"]));
    assert_eq!(pool["ip_version"], 4);
    let pool_id = id(&pool);
    let (net, _) = {
        let net = api
            .create(A, "networks", "network", json!({"name": "n"}))
            .await;
        (id(&net), ())
    };
    let subnet = |extra: Value| {
        let mut body = json!({"network_id": net, "ip_version": 4, "subnetpool_id": pool_id});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        json!({ "subnet": body })
    };
    let (s, v) = api
        .call(A, "POST", "/v2.0/subnets", Some(subnet(json!({}))))
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["subnet"]["cidr"], "10.10.0.0/24");
    assert_eq!(v["subnet"]["subnetpool_id"], json!(pool_id));
    assert_eq!(v["subnet"]["gateway_ip"], "10.10.0.1");
    let first = id(&v["subnet"]);
    let (s, v) = api
        .call(
            A,
            "POST",
            "/v2.0/subnets",
            Some(subnet(json!({"prefixlen": 26}))),
        )
        .await;
    assert_eq!(
        (s, v["subnet"]["cidr"].clone()),
        (201, json!("10.10.1.0/26"))
    );
    let (s, v) = api
        .call(
            A,
            "POST",
            "/v2.0/subnets",
            Some(subnet(json!({"cidr": "10.10.0.0/25"}))),
        )
        .await;
    assert_eq!((s, fault(&v)), (409, "SubnetAllocationError"));
    for (extra, status, wanted) in [
        (
            json!({"prefixlen": 30}),
            400,
            "MaxPrefixSubnetAllocationError",
        ),
        (
            json!({"prefixlen": 16}),
            400,
            "MinPrefixSubnetAllocationError",
        ),
        (
            json!({"cidr": "10.10.8.0/24", "prefixlen": 24}),
            400,
            "HTTPBadRequest",
        ),
        (json!({"ip_version": 6}), 400, "HTTPBadRequest"),
        (
            json!({"cidr": "192.168.0.0/24"}),
            409,
            "SubnetAllocationError",
        ),
    ] {
        let (s, v) = api
            .call(A, "POST", "/v2.0/subnets", Some(subnet(extra)))
            .await;
        assert_eq!((s, fault(&v)), (status, wanted), "{v}");
    }
    let (s, v) = api
        .call(
            A,
            "POST",
            "/v2.0/subnets",
            Some(subnet(json!({"cidr": "10.10.8.0/24"}))),
        )
        .await;
    assert_eq!(
        (s, v["subnet"]["cidr"].clone()),
        (201, json!("10.10.8.0/24"))
    );
    // A subnet of another pool (or none) on the same network and family is refused.
    let (s, v) = api
        .call(
            A,
            "POST",
            "/v2.0/subnets",
            Some(json!({"subnet": {
            "network_id": net, "ip_version": 4, "cidr": "192.168.5.0/24"}})),
        )
        .await;
    assert_eq!((s, fault(&v)), (400, "NetworkSubnetPoolAffinityError"));

    // Prefix operations.
    let pool_path = format!("/v2.0/subnetpools/{pool_id}");
    let (s, v) = api
        .call(
            A,
            "PUT",
            &format!("{pool_path}/add_prefixes"),
            Some(json!({"prefixes": ["10.11.0.0/16"]})),
        )
        .await;
    assert_eq!((s, v), (200, json!({"prefixes": ["10.10.0.0/15"]})));
    let (s, v) = api
        .call(
            A,
            "PUT",
            &format!("{pool_path}/remove_prefixes"),
            Some(json!({"prefixes": ["10.10.0.0/16"]})),
        )
        .await;
    assert_eq!((s, fault(&v)), (400, "IllegalSubnetPoolPrefixUpdate"));
    let (s, v) = api
        .call(
            A,
            "PUT",
            &format!("{pool_path}/remove_prefixes"),
            Some(json!({"prefixes": ["10.11.0.0/16"]})),
        )
        .await;
    assert_eq!((s, v), (200, json!({"prefixes": ["10.10.0.0/16"]})));
    let (s, v) = api
        .call(
            A,
            "PUT",
            &pool_path,
            Some(json!({"subnetpool": {"prefixes": ["10.12.0.0/16"]}})),
        )
        .await;
    assert_eq!((s, fault(&v)), (400, "IllegalSubnetPoolPrefixUpdate"));

    // In use until its subnets go.
    let (s, v) = api.call(A, "DELETE", &pool_path, None).await;
    assert_eq!((s, fault(&v)), (409, "SubnetPoolInUse"));
    assert_eq!(
        api.call(A, "DELETE", &format!("/v2.0/networks/{net}"), None)
            .await
            .0,
        204
    );
    assert!(api.keys("/isthmus/index/pool-subnets/").await.is_empty());
    assert_eq!(api.call(A, "DELETE", &pool_path, None).await.0, 204);
    let _ = first;
}

#[tokio::test]
async fn default_pools_quotas_and_sharing() {
    let api = Api::memory();
    let default_pool = json!({"subnetpool": {"name": "default", "prefixes": ["172.16.0.0/12"],
                                             "is_default": true, "default_prefixlen": 26,
                                             "default_quota": 128}});
    let (s, v) = api
        .call(A, "POST", "/v2.0/subnetpools", Some(default_pool.clone()))
        .await;
    assert_eq!((s, fault(&v)), (403, "PolicyNotAuthorized"));
    let (s, v) = api
        .call(
            ADMIN,
            "POST",
            "/v2.0/subnetpools",
            Some(default_pool.clone()),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let pool_id = id(&v["subnetpool"]);
    let (s, v) = api
        .call(ADMIN, "POST", "/v2.0/subnetpools", Some(default_pool))
        .await;
    assert_eq!((s, fault(&v)), (400, "InvalidInput"));

    // The default pool is the admin's: B uses it only once it is shared with B.
    let net = id(&api
        .create(B, "networks", "network", json!({"name": "n"}))
        .await);
    let body =
        json!({"subnet": {"network_id": net, "ip_version": 4, "use_default_subnetpool": true}});
    let (s, v) = api
        .call(B, "POST", "/v2.0/subnets", Some(body.clone()))
        .await;
    assert_eq!((s, fault(&v)), (404, "SubnetPoolNotFound"));
    let (s, v) = policy(&api, ADMIN, json!({"object_type": "subnetpool", "object_id": pool_id,
                                            "action": "access_as_shared", "target_tenant": "project-b"}))
        .await;
    assert_eq!(s, 201, "{v}");
    let policy_path = format!("/v2.0/rbac-policies/{}", id(&v["rbac_policy"]));
    let (s, v) = api
        .call(B, "POST", "/v2.0/subnets", Some(body.clone()))
        .await;
    assert_eq!(
        (s, v["subnet"]["cidr"].clone()),
        (201, json!("172.16.0.0/26"))
    );
    let subnet = id(&v["subnet"]);
    // 128 addresses of quota: a second /26 fits, a third does not.
    let net2 = id(&api
        .create(B, "networks", "network", json!({"name": "n2"}))
        .await);
    let body2 =
        json!({"subnet": {"network_id": net2, "ip_version": 4, "use_default_subnetpool": true}});
    assert_eq!(
        api.call(B, "POST", "/v2.0/subnets", Some(body2)).await.0,
        201
    );
    let net3 = id(&api
        .create(B, "networks", "network", json!({"name": "n3"}))
        .await);
    let body3 =
        json!({"subnet": {"network_id": net3, "ip_version": 4, "use_default_subnetpool": true}});
    let (s, v) = api.call(B, "POST", "/v2.0/subnets", Some(body3)).await;
    assert_eq!((s, fault(&v)), (409, "SubnetPoolQuotaExceeded"));
    let (s, v) = api.call(ADMIN, "DELETE", &policy_path, None).await;
    assert_eq!((s, fault(&v)), (409, "RbacPolicyInUse"));
    assert_eq!(
        api.call(B, "DELETE", &format!("/v2.0/subnets/{subnet}"), None)
            .await
            .0,
        204
    );
    let v6 =
        json!({"subnet": {"network_id": net, "ip_version": 6, "use_default_subnetpool": true}});
    let (s, v) = api.call(B, "POST", "/v2.0/subnets", Some(v6)).await;
    assert_eq!((s, fault(&v)), (400, "HTTPBadRequest"));
}

#[tokio::test]
async fn quotas_limit_what_a_project_creates() {
    let api = Api::memory();
    let (s, v) = api.call(A, "GET", "/v2.0/quotas/project-a", None).await;
    assert_eq!(
        (s, v["quota"]["port"].clone(), v["quota"]["router"].clone()),
        (200, json!(500), json!(10))
    );
    let (s, v) = api.call(B, "GET", "/v2.0/quotas/project-a", None).await;
    assert_eq!((s, fault(&v)), (403, "PolicyNotAuthorized"));
    let (s, v) = api
        .call(
            A,
            "PUT",
            "/v2.0/quotas/project-a",
            Some(json!({"quota": {"network": 1}})),
        )
        .await;
    assert_eq!((s, fault(&v)), (403, "PolicyNotAuthorized"));
    for (body, wanted) in [
        (json!({"quota": {"network": -2}}), "HTTPBadRequest"),
        (json!({"quota": {"widget": 1}}), "HTTPBadRequest"),
        (json!({"quota": {"network": "many"}}), "HTTPBadRequest"),
        (json!({"network": 1}), "HTTPBadRequest"),
    ] {
        let (s, v) = api
            .call(ADMIN, "PUT", "/v2.0/quotas/project-a", Some(body))
            .await;
        assert_eq!((s, fault(&v)), (400, wanted), "{v}");
    }
    let (s, v) = api
        .call(
            ADMIN,
            "PUT",
            "/v2.0/quotas/project-a",
            Some(json!({"quota": {"network": 2, "port": 2, "security_group": -1}})),
        )
        .await;
    assert_eq!((s, v["quota"]["network"].clone()), (200, json!(2)));

    // Two networks fit, the third is over quota; bulk creates count item by item.
    let (net, _) = api.network_with_subnet(A, "10.0.0.0/24").await;
    api.create(A, "networks", "network", json!({"name": "second"}))
        .await;
    let (s, v) = api
        .call(
            A,
            "POST",
            "/v2.0/networks",
            Some(json!({"network": {"name": "third"}})),
        )
        .await;
    assert_eq!((s, fault(&v)), (409, "OverQuota"));
    assert_eq!(
        v["NeutronError"]["message"],
        "Quota exceeded for resources: ['network']."
    );
    let (s, v) = api
        .call(
            A,
            "POST",
            "/v2.0/ports",
            Some(json!({"ports": [{"network_id": net}, {"network_id": net}]})),
        )
        .await;
    assert_eq!((s, fault(&v)), (409, "OverQuota"));
    // The network's DHCP port counts, as in Neutron: one port is left.
    let (_, v) = api.call(A, "GET", "/v2.0/ports", None).await;
    assert_eq!(
        v["ports"].as_array().unwrap().len(),
        1,
        "a refused bulk leaves nothing"
    );
    assert_eq!(v["ports"][0]["device_owner"], "network:dhcp");
    let port = api
        .create(A, "ports", "port", json!({"network_id": net}))
        .await;
    // A limit under what is used is refused unless forced (quota-check-limit-default);
    // `check_limit` is accepted, as the CLI sends it.
    let (s, v) = api
        .call(
            ADMIN,
            "PUT",
            "/v2.0/quotas/project-a",
            Some(json!({"quota": {"port": 1, "check_limit": true}})),
        )
        .await;
    assert_eq!((s, fault(&v)), (400, "HTTPBadRequest"), "{v}");
    assert_eq!(
        v["NeutronError"]["message"],
        "Quota limit 1 for port must be greater than or equal to already used 2"
    );
    let (s, v) = api
        .call(
            ADMIN,
            "PUT",
            "/v2.0/quotas/project-a",
            Some(json!({"quota": {"port": 1, "force": true}})),
        )
        .await;
    assert_eq!((s, v["quota"]["port"].clone()), (200, json!(1)));
    let (s, _) = api
        .call(
            ADMIN,
            "PUT",
            "/v2.0/quotas/project-a",
            Some(json!({"quota": {"port": 2, "check_limit": true}})),
        )
        .await;
    assert_eq!(s, 200);
    // Another project is not affected; an admin creating for project-a is counted there.
    let (b_net, _) = api.network_with_subnet(B, "10.1.0.0/24").await;
    assert_eq!(
        api.call(
            B,
            "POST",
            "/v2.0/ports",
            Some(json!({"port": {"network_id": b_net}}))
        )
        .await
        .0,
        201
    );
    let (s, v) = api
        .call(
            ADMIN,
            "POST",
            "/v2.0/ports",
            Some(json!({"port": {"network_id": net, "project_id": "project-a"}})),
        )
        .await;
    assert_eq!((s, fault(&v)), (409, "OverQuota"));

    // Details: limit, use, reservations.
    let (s, v) = api
        .call(A, "GET", "/v2.0/quotas/project-a/details.json", None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        v["quota"]["network"],
        json!({"limit": 2, "used": 2, "reserved": 0})
    );
    assert_eq!(
        v["quota"]["port"],
        json!({"limit": 2, "used": 2, "reserved": 0})
    );
    assert_eq!(v["quota"]["subnet"]["used"], 1);
    let (_, v) = api.call(ADMIN, "GET", "/v2.0/quotas", None).await;
    assert_eq!(v["quotas"].as_array().unwrap().len(), 1);
    assert_eq!(v["quotas"][0]["project_id"], "project-a");
    let (_, v) = api
        .call(A, "GET", "/v2.0/quotas/project-a/default", None)
        .await;
    assert_eq!(v["quota"]["network"], 100);
    assert_eq!(api.call(A, "GET", "/v2.0/quotas", None).await.0, 403);

    // Freed use counts again; deleting the quota restores the defaults.
    let port_id = port["id"].as_str().unwrap();
    assert_eq!(
        api.call(A, "DELETE", &format!("/v2.0/ports/{port_id}"), None)
            .await
            .0,
        204
    );
    assert_eq!(
        api.call(
            A,
            "POST",
            "/v2.0/ports",
            Some(json!({"port": {"network_id": net}}))
        )
        .await
        .0,
        201
    );
    assert_eq!(
        api.call(ADMIN, "DELETE", "/v2.0/quotas/project-a", None)
            .await
            .0,
        204
    );
    let (s, v) = api
        .call(ADMIN, "DELETE", "/v2.0/quotas/project-a", None)
        .await;
    assert_eq!((s, fault(&v)), (404, "TenantQuotaNotFound"));
    assert_eq!(
        api.call(
            A,
            "POST",
            "/v2.0/networks",
            Some(json!({"network": {"name": "third"}}))
        )
        .await
        .0,
        201
    );
}

#[tokio::test]
async fn the_default_rules_template_shapes_new_groups() {
    let api = Api::memory();
    let (s, v) = api
        .call(A, "GET", "/v2.0/default-security-group-rules", None)
        .await;
    assert_eq!(s, 200);
    let builtin = v["default_security_group_rules"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(builtin.len(), 4);
    assert_eq!(
        builtin
            .iter()
            .filter(|r| r["remote_group_id"] == "PARENT")
            .count(),
        2,
        "ingress from the group itself, in default groups only"
    );
    let ssh = json!({"default_security_group_rule": {"direction": "ingress", "protocol": "tcp",
        "port_range_min": 22, "port_range_max": 22, "used_in_non_default_sg": true}});
    let (s, v) = api
        .call(
            A,
            "POST",
            "/v2.0/default-security-group-rules",
            Some(ssh.clone()),
        )
        .await;
    assert_eq!((s, fault(&v)), (403, "PolicyNotAuthorized"));
    let (s, v) = api
        .call(
            ADMIN,
            "POST",
            "/v2.0/default-security-group-rules",
            Some(ssh.clone()),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let ssh_id = id(&v["default_security_group_rule"]);
    assert_eq!(
        v["default_security_group_rule"]["used_in_default_sg"],
        false
    );
    let (s, v) = api
        .call(
            ADMIN,
            "POST",
            "/v2.0/default-security-group-rules",
            Some(ssh),
        )
        .await;
    assert_eq!((s, fault(&v)), (409, "DuplicateDefaultSgRule"));
    for bad in [
        json!({"direction": "ingress", "remote_group_id": "11111111-2222-3333-4444-555555555555"}),
        json!({"direction": "sideways"}),
        json!({"direction": "ingress", "protocol": "tcp", "port_range_min": 90, "port_range_max": 80}),
    ] {
        let (s, _) = api
            .call(
                ADMIN,
                "POST",
                "/v2.0/default-security-group-rules",
                Some(json!({ "default_security_group_rule": bad })),
            )
            .await;
        assert_eq!(s, 400);
    }
    let path = format!("/v2.0/default-security-group-rules/{ssh_id}");
    let (s, _) = api
        .call(
            A,
            "PUT",
            &path,
            Some(json!({"default_security_group_rule": {"description": "x"}})),
        )
        .await;
    assert_eq!(s, 400, "template rules cannot be updated");

    // A new group gets the egress rules and SSH; a new project's default group gets the
    // builtin four only.
    let group = api
        .create(
            A,
            "security-groups",
            "security_group",
            json!({"name": "web"}),
        )
        .await;
    let rules = group["security_group_rules"].as_array().unwrap();
    assert_eq!(rules.len(), 3, "{rules:?}");
    assert!(rules
        .iter()
        .any(|r| r["protocol"] == "tcp" && r["port_range_min"] == 22));
    let (_, v) = api
        .call(
            As::Member("project-new"),
            "GET",
            "/v2.0/security-groups?name=default",
            None,
        )
        .await;
    let default_rules = v["security_groups"][0]["security_group_rules"]
        .as_array()
        .unwrap();
    assert_eq!(default_rules.len(), 4);
    let own = v["security_groups"][0]["id"].clone();
    assert!(default_rules
        .iter()
        .any(|r| r["direction"] == "ingress" && r["remote_group_id"] == own));

    let (s, v) = api.call(A, "DELETE", &path, None).await;
    assert_eq!((s, fault(&v)), (403, "PolicyNotAuthorized"));
    assert_eq!(api.call(ADMIN, "DELETE", &path, None).await.0, 204);
    let group = api
        .create(
            A,
            "security-groups",
            "security_group",
            json!({"name": "db"}),
        )
        .await;
    assert_eq!(group["security_group_rules"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn address_groups_and_the_rules_naming_them() {
    let api = Api::memory();
    let (s, v) = api
        .call(
            A,
            "POST",
            "/v2.0/address-groups",
            Some(json!({"address_group": {
            "name": "admins", "addresses": ["10.0.0.1", "10.1.0.0/24"]}})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        v["address_group"]["addresses"],
        json!(["10.0.0.1/32", "10.1.0.0/24"])
    );
    let ag = id(&v["address_group"]);
    let path = format!("/v2.0/address-groups/{ag}");
    let (s, v) = api
        .call(
            A,
            "PUT",
            &format!("{path}/add_addresses"),
            Some(json!({"addresses": ["10.0.0.2"]})),
        )
        .await;
    assert_eq!(
        (s, v["address_group"]["addresses"].as_array().map(Vec::len)),
        (200, Some(3))
    );
    let (s, v) = api
        .call(
            A,
            "PUT",
            &format!("{path}/add_addresses"),
            Some(json!({"addresses": ["10.0.0.2"]})),
        )
        .await;
    assert_eq!((s, fault(&v)), (400, "AddressesAlreadyExist"));
    let (s, v) = api
        .call(
            A,
            "PUT",
            &format!("{path}/remove_addresses"),
            Some(json!({"addresses": ["10.9.9.9"]})),
        )
        .await;
    assert_eq!((s, fault(&v)), (400, "AddressesNotFound"));
    let (s, _) = api
        .call(
            A,
            "PUT",
            &path,
            Some(json!({"address_group": {"addresses": ["10.0.0.3"]}})),
        )
        .await;
    assert_eq!(s, 400, "addresses change through the actions only");
    let (s, v) = api
        .call(
            A,
            "PUT",
            &path,
            Some(json!({"address_group": {"name": "ops"}})),
        )
        .await;
    assert_eq!((s, v["address_group"]["name"].clone()), (200, json!("ops")));
    assert_eq!(api.call(B, "GET", &path, None).await.0, 404);

    // A rule naming it; it cannot go while the rule is there.
    let group = api
        .create(A, "security-groups", "security_group", json!({"name": "g"}))
        .await;
    let rule_body = |extra: Value| {
        let mut body = json!({"security_group_id": group["id"], "direction": "ingress",
                              "protocol": "tcp", "port_range_min": 22, "port_range_max": 22});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        json!({ "security_group_rule": body })
    };
    let (s, v) = api
        .call(
            A,
            "POST",
            "/v2.0/security-group-rules",
            Some(rule_body(
                json!({"remote_address_group_id": ag, "remote_ip_prefix": "10.0.0.0/8"}),
            )),
        )
        .await;
    assert_eq!((s, fault(&v)), (400, "HTTPBadRequest"));
    let (s, v) = api
        .call(
            B,
            "POST",
            "/v2.0/security-group-rules",
            Some(rule_body(json!({"remote_address_group_id": ag}))),
        )
        .await;
    assert_eq!(s, 404, "{v}");
    let (s, v) = api
        .call(
            A,
            "POST",
            "/v2.0/security-group-rules",
            Some(rule_body(json!({"remote_address_group_id": ag}))),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        v["security_group_rule"]["remote_address_group_id"],
        json!(ag)
    );
    let rule = id(&v["security_group_rule"]);
    let (s, v) = api
        .call(
            A,
            "POST",
            "/v2.0/security-group-rules",
            Some(rule_body(json!({"remote_address_group_id": ag}))),
        )
        .await;
    assert_eq!((s, fault(&v)), (409, "SecurityGroupRuleExists"));
    let (s, v) = api.call(A, "DELETE", &path, None).await;
    assert_eq!((s, fault(&v)), (409, "AddressGroupInUse"));
    assert_eq!(
        api.call(
            A,
            "DELETE",
            &format!("/v2.0/security-group-rules/{rule}"),
            None
        )
        .await
        .0,
        204
    );
    assert_eq!(api.call(A, "DELETE", &path, None).await.0, 204);
    assert!(api
        .keys("/isthmus/index/address-group-rules/")
        .await
        .is_empty());
}

#[tokio::test]
async fn networks_show_the_address_scopes_of_their_subnets() {
    let api = Api::memory();
    let scope = api
        .create(
            A,
            "address-scopes",
            "address_scope",
            json!({"name": "s", "ip_version": 4}),
        )
        .await;
    let pool = api
        .create(
            A,
            "subnetpools",
            "subnetpool",
            json!({"name": "p", "prefixes": ["10.30.0.0/16"], "address_scope_id": scope["id"]}),
        )
        .await;
    let net = api
        .create(A, "networks", "network", json!({"name": "n"}))
        .await;
    assert_eq!(net["ipv4_address_scope"], Value::Null);
    let net_id = id(&net);
    api.create(A, "subnets", "subnet",
               json!({"network_id": net_id, "ip_version": 4, "subnetpool_id": pool["id"], "prefixlen": 24}))
        .await;
    let (_, v) = api
        .call(A, "GET", &format!("/v2.0/networks/{net_id}"), None)
        .await;
    assert_eq!(v["network"]["ipv4_address_scope"], scope["id"]);
    assert_eq!(v["network"]["ipv6_address_scope"], Value::Null);
    let (_, v) = api.call(A, "GET", "/v2.0/networks", None).await;
    assert_eq!(v["networks"][0]["ipv4_address_scope"], scope["id"]);
}
