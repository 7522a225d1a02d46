//! The controller as a real OpenStack endpoint: a real Keystone (PyPI, uWSGI, fernet tokens),
//! tokens validated and cached, Neutron's policy enforced for every role, and the real
//! `openstack` CLI authenticating with a password through Keystone's catalog.

mod cloud;
mod keystone;
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use isthmus_model::policy::{self, Roles, Target};
use isthmus_model::Caller;
use keystone::Keystone;
use serde_json::{json, Value};
use support::{free_port, request_full, Controller};

/// A controller validating tokens with Keystone (its service user `isthmus`), caching them for
/// `cache_seconds`.
fn controller(ks: &Keystone, data: &std::path::Path, cache_seconds: u64) -> Controller {
    ks.user("isthmus", "service", "service");
    let password = ks.password_file("isthmus.pw", "isthmus-secret");
    let url = ks.url();
    Controller::start(
        free_port(),
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--auth",
            "keystone",
            "--keystone-url",
            &url,
            "--keystone-user",
            "isthmus",
            "--keystone-password-file",
            password.to_str().unwrap(),
            "--keystone-project",
            "service",
            "--token-cache-seconds",
            &cache_seconds.to_string(),
        ],
    )
}

/// A request with a token (or none).
fn call(
    c: &Controller,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Vec<(String, String)>, Value) {
    let headers: Vec<(&str, &str)> = token.map(|t| ("X-Auth-Token", t)).into_iter().collect();
    request_full(c.port, method, path, body.as_ref(), &headers).unwrap()
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn created(c: &Controller, token: &str, collection: &str, body: Value) -> Value {
    let (s, _, v) = call(
        c,
        Some(token),
        "POST",
        &format!("/v2.0/{collection}"),
        Some(body),
    );
    assert_eq!(s, 201, "POST {collection}: {v}");
    v.as_object().unwrap().values().next().unwrap().clone()
}

#[test]
fn keystone_tokens_identify_callers_and_neutron_policy_decides() {
    let Some(ks) = Keystone::start() else { return };
    let project_a = ks.project("project-a");
    let project_b = ks.project("project-b");
    ks.user("alice", "project-a", "member");
    ks.user("rita", "project-a", "reader");
    ks.user("bob", "project-b", "member");
    ks.user("nova", "service", "service");
    let data = tempfile::tempdir().unwrap();
    let c = controller(&ks, data.path(), 3);
    let alice = ks.token("alice", "alice-secret", "project-a");
    let expiring = (
        Instant::now(),
        ks.token("alice", "alice-secret", "project-a"),
    );

    // No token, a garbage token: 401 in Neutron's format, with the challenge and a request id.
    for token in [None, Some("garbage"), Some("")] {
        let (s, headers, v) = call(&c, token, "GET", "/v2.0/networks", None);
        assert_eq!(s, 401, "{token:?}: {v}");
        assert_eq!(v["NeutronError"]["type"], "HTTPUnauthorized");
        assert_eq!(
            header(&headers, "www-authenticate"),
            Some(format!("Keystone uri=\"{}\"", ks.url()).as_str())
        );
        assert!(header(&headers, "x-openstack-request-id").is_some_and(|id| id.starts_with("req-")));
    }
    // Version discovery needs no token.
    assert_eq!(call(&c, None, "GET", "/", None).0, 200);
    // A valid token without a project (system scope) may do nothing here.
    let system = ks.token_scoped("admin", "admin-secret", json!({"system": {"all": true}}));
    let (s, _, v) = call(&c, Some(&system), "GET", "/v2.0/networks", None);
    assert_eq!(
        (s, v["NeutronError"]["type"].as_str()),
        (403, Some("PolicyNotAuthorized"))
    );

    // A member of A makes a network, a subnet and a port: they belong to A.
    let net = created(
        &c,
        &alice,
        "networks",
        json!({"network": {"name": "a-net"}}),
    );
    assert_eq!(net["project_id"], project_a.as_str());
    let net_id = net["id"].as_str().unwrap().to_owned();
    created(
        &c,
        &alice,
        "subnets",
        json!({"subnet": {"network_id": net_id, "ip_version": 4, "cidr": "10.7.0.0/24"}}),
    );
    let port = created(&c, &alice, "ports", json!({"port": {"network_id": net_id}}));
    assert_eq!(port["project_id"], project_a.as_str());
    // Identity headers are ignored: the token says who this is.
    let (s, _, v) = request_full(
        c.port,
        "POST",
        "/v2.0/networks",
        Some(&json!({"network": {"name": "spoof"}})),
        &[
            ("X-Auth-Token", &alice),
            ("X-Project-Id", &project_b),
            ("X-Roles", "admin"),
        ],
    )
    .unwrap();
    assert_eq!(
        (s, v["network"]["project_id"].as_str()),
        (201, Some(project_a.as_str()))
    );

    // B sees nothing of A's and changes nothing.
    let bob = ks.token("bob", "bob-secret", "project-b");
    let net_path = format!("/v2.0/networks/{net_id}");
    for (method, body) in [
        ("GET", None),
        ("PUT", Some(json!({"network": {"name": "stolen"}}))),
        ("DELETE", None),
    ] {
        assert_eq!(
            call(&c, Some(&bob), method, &net_path, body).0,
            404,
            "{method} as B"
        );
    }
    let (_, _, listed) = call(&c, Some(&bob), "GET", "/v2.0/ports", None);
    assert_eq!(listed["ports"].as_array().unwrap().len(), 0);

    // A reader of A reads but does not write.
    let rita = ks.token("rita", "rita-secret", "project-a");
    assert_eq!(call(&c, Some(&rita), "GET", &net_path, None).0, 200);
    let (s, _, v) = call(
        &c,
        Some(&rita),
        "POST",
        "/v2.0/networks",
        Some(json!({"network": {"name": "r"}})),
    );
    assert_eq!(
        (s, v["NeutronError"]["type"].as_str()),
        (403, Some("PolicyNotAuthorized"))
    );
    let (s, _, _) = call(
        &c,
        Some(&rita),
        "PUT",
        &net_path,
        Some(json!({"network": {"name": "x"}})),
    );
    assert_eq!(s, 403);

    // The admin sees both projects' networks.
    created(&c, &bob, "networks", json!({"network": {"name": "b-net"}}));
    let admin = ks.token("admin", "admin-secret", "admin");
    let (_, _, all) = call(&c, Some(&admin), "GET", "/v2.0/networks", None);
    let owners: Vec<&str> = all["networks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["project_id"].as_str())
        .collect();
    assert!(owners.contains(&project_a.as_str()) && owners.contains(&project_b.as_str()));

    // Nova's service user binds A's port; members do not see the binding, services do.
    let nova = ks.token("nova", "nova-secret", "service");
    let port_path = format!("/v2.0/ports/{}", port["id"].as_str().unwrap());
    let (s, _, v) = call(
        &c,
        Some(&nova),
        "PUT",
        &port_path,
        Some(json!({"port": {"binding:host_id": "compute-1", "binding:profile": {"x": 1}}})),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["port"]["binding:host_id"], "compute-1");
    let (_, _, seen) = call(&c, Some(&alice), "GET", &port_path, None);
    assert!(seen["port"].get("binding:host_id").is_none(), "{seen}");
    let (s, _, _) = call(
        &c,
        Some(&alice),
        "PUT",
        &port_path,
        Some(json!({"port": {"binding:host_id": "elsewhere"}})),
    );
    assert_eq!(s, 403);
    // The native API is for admins and services.
    assert_eq!(
        call(&c, Some(&alice), "GET", "/isthmus/v1/nodes", None).0,
        403
    );
    assert_eq!(
        call(&c, Some(&nova), "GET", "/isthmus/v1/nodes", None).0,
        200
    );

    // A revoked token keeps working only until its cache entry expires (3 s here).
    let revoked = ks.token("alice", "alice-secret", "project-a");
    assert_eq!(call(&c, Some(&revoked), "GET", &net_path, None).0, 200);
    ks.revoke(&revoked);
    assert_eq!(
        call(&c, Some(&revoked), "GET", &net_path, None).0,
        200,
        "cached"
    );
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(
        call(&c, Some(&revoked), "GET", &net_path, None).0,
        401,
        "revoked"
    );

    // An expired token is refused (the cache never outlives the token).
    let (issued, token) = expiring;
    let expiry = issued + Duration::from_secs(keystone::TOKEN_LIFETIME + 2);
    std::thread::sleep(expiry.saturating_duration_since(Instant::now()));
    assert_eq!(
        call(&c, Some(&token), "GET", &net_path, None).0,
        401,
        "expired"
    );
}

/// The roles a matrix caller may have, by user; `observer` is a role Neutron's policy does not
/// know (the "none" row).
const ROLES: [(&str, &str, Roles); 5] = [
    ("m-admin", "admin", Roles::ADMIN),
    ("m-member", "member", Roles::MEMBER),
    ("m-reader", "reader", Roles::READER),
    ("m-service", "service", Roles::SERVICE),
    ("m-none", "observer", Roles::NONE),
];

#[test]
fn the_policy_table_holds_for_every_role_operation_and_owner() {
    let Some(ks) = Keystone::start() else { return };
    let mine = ks.project("matrix-mine");
    ks.project("matrix-theirs");
    for (user, role, _) in ROLES {
        ks.user(user, "matrix-mine", role);
    }
    ks.user("m-owner", "matrix-theirs", "admin");
    let data = tempfile::tempdir().unwrap();
    let c = controller(&ks, data.path(), 300);
    let owner = ks.token("m-owner", "m-owner-secret", "matrix-theirs");
    let admin_mine = ks.token("m-admin", "m-admin-secret", "matrix-mine");

    // Objects of each relation: mine, theirs, theirs but shared with everyone.
    let make = |token: &str, collection: &str, body: Value| created(&c, token, collection, body);
    let mut objects: Vec<(&str, &str, &str, Value)> = Vec::new();
    for (relation, token, shared) in [
        ("mine", &admin_mine, false),
        ("theirs", &owner, false),
        ("shared", &owner, true),
    ] {
        let net = make(
            token,
            "networks",
            json!({"network": {"name": relation, "shared": shared}}),
        );
        let net_id = net["id"].as_str().unwrap().to_owned();
        make(
            token,
            "subnets",
            json!({"subnet": {"network_id": net_id, "ip_version": 4,
                              "cidr": format!("10.{}.0.0/24", objects.len() + 1)}}),
        );
        let port = make(token, "ports", json!({"port": {"network_id": net_id}}));
        let router = make(token, "routers", json!({"router": {"name": relation}}));
        let group = make(
            token,
            "security-groups",
            json!({"security_group": {"name": relation}}),
        );
        if shared {
            make(
                token,
                "rbac-policies",
                json!({"rbac_policy": {"object_type": "security_group",
                       "object_id": group["id"], "action": "access_as_shared",
                       "target_tenant": "*"}}),
            );
        }
        objects.push((relation, "networks", "network", net));
        objects.push((relation, "ports", "port", port));
        objects.push((relation, "routers", "router", router));
        objects.push((relation, "security-groups", "security_group", group));
    }

    let mut wrong = Vec::new();
    for (index, (user, _, roles)) in ROLES.into_iter().enumerate() {
        let token = ks.token(user, &format!("{user}-secret"), "matrix-mine");
        let caller = Caller::new(&mine, roles);
        for (relation, collection, singular, obj) in &objects {
            let id = obj["id"].as_str().unwrap();
            let owner_project = obj["project_id"].as_str().unwrap();
            let shared = *relation == "shared";
            let mut target = Target::owned_by(owner_project)
                .with("network:project_id", owner_project)
                .with("networks:shared", shared && *singular != "port")
                .with("security_groups:shared", shared);
            if *singular == "port" {
                target = target.with("port:device_owner", "");
            }
            // What the database lets a caller see: its own, shared ones, and everything for
            // admins and services; the `get_*` rule then decides.
            let scoped = *relation == "mine"
                || caller.is_privileged()
                || (shared && *singular != "port" && *singular != "router");
            let readable = scoped && policy::allows(&format!("get_{singular}"), &caller, &target);
            let path = format!("/v2.0/{collection}/{id}");
            let (s, _, _) = call(&c, Some(&token), "GET", &path, None);
            let expected = if readable { 200 } else { 404 };
            if s != expected {
                wrong.push(format!(
                    "{user} GET {relation} {singular}: {s}, expected {expected}"
                ));
            }
            let (_, _, list) = call(
                &c,
                Some(&token),
                "GET",
                &format!("/v2.0/{collection}"),
                None,
            );
            let listed = list[collection.replace('-', "_")]
                .as_array()
                .is_some_and(|l| l.iter().any(|o| o["id"] == id));
            if listed != readable {
                wrong.push(format!(
                    "{user} lists {relation} {singular}: {listed}, expected {readable}"
                ));
            }
            let update_ok = policy::allows(&format!("update_{singular}"), &caller, &target);
            let expected = match (readable, update_ok) {
                (false, _) => 404,
                (true, false) => 403,
                (true, true) => 200,
            };
            let (s, _, v) = call(
                &c,
                Some(&token),
                "PUT",
                &path,
                Some(json!({ *singular: {"description": format!("by {user}")} })),
            );
            if s != expected {
                wrong.push(format!(
                    "{user} PUT {relation} {singular}: {s} {v}, expected {expected}"
                ));
            }
            // Deleting is checked without doing it (the objects serve every caller): a
            // wrong If-Match answers 412 only once the delete rule passed.
            let delete_ok = policy::allows(&format!("delete_{singular}"), &caller, &target);
            let expected = match (readable, delete_ok) {
                (false, _) => 404,
                (true, false) => 403,
                (true, true) => 412,
            };
            let (s, _, _) = request_full(
                c.port,
                "DELETE",
                &path,
                None,
                &[
                    ("X-Auth-Token", &token),
                    ("If-Match", "revision_number=999999"),
                ],
            )
            .unwrap();
            if s != expected {
                wrong.push(format!(
                    "{user} DELETE {relation} {singular}: {s}, expected {expected}"
                ));
            }
        }
        // Creating: a network of its own, and attribute rules.
        let own = Target::owned_by(&mine).with("network:project_id", &mine);
        for (collection, body, rules) in [
            (
                "networks",
                json!({"network": {"name": "n"}}),
                &["create_network"][..],
            ),
            (
                "networks",
                json!({"network": {"name": "s", "shared": true}}),
                &["create_network", "create_network:shared"][..],
            ),
            (
                "routers",
                json!({"router": {"name": "r", "ha": true}}),
                &["create_router", "create_router:ha"][..],
            ),
        ] {
            let action = rules.last().unwrap();
            let allowed = rules.iter().all(|rule| policy::allows(rule, &caller, &own));
            let (s, _, v) = call(
                &c,
                Some(&token),
                "POST",
                &format!("/v2.0/{collection}"),
                Some(body),
            );
            let expected = if allowed { 201 } else { 403 };
            if s != expected {
                wrong.push(format!("{user} {action}: {s} {v}, expected {expected}"));
            }
        }
        // Ports on someone else's shared network, with and without a chosen address.
        let shared_net = objects
            .iter()
            .find(|(r, _, s, _)| *r == "shared" && *s == "network")
            .map(|(_, _, _, o)| o["id"].as_str().unwrap().to_owned())
            .unwrap();
        let on_shared = Target::owned_by(&mine)
            .with("network:project_id", "theirs")
            .with("networks:shared", true);
        let allowed = policy::allows("create_port", &caller, &on_shared);
        let (s, _, v) = call(
            &c,
            Some(&token),
            "POST",
            "/v2.0/ports",
            Some(json!({"port": {"network_id": shared_net}})),
        );
        let expected = if allowed { 201 } else { 403 };
        if s != expected {
            wrong.push(format!(
                "{user} create_port on a shared network: {s} {v}, expected {expected}"
            ));
        }
        let allowed =
            allowed && policy::allows("create_port:fixed_ips:ip_address", &caller, &on_shared);
        let (s, _, v) = call(
            &c,
            Some(&token),
            "POST",
            "/v2.0/ports",
            Some(json!({"port": {"network_id": shared_net,
                                 "fixed_ips": [{"ip_address": format!("10.9.0.{}", 70 + index)}]}})),
        );
        let expected = if allowed { 201 } else { 403 };
        if s != expected {
            wrong.push(format!(
                "{user} create_port:fixed_ips:ip_address: {s} {v}, expected {expected}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_openstack_cli_authenticates_through_keystones_catalog() {
    let Some(ks) = Keystone::start() else { return };
    let Some(bin) = cloud::openstack() else {
        isthmus_lab::skip("no openstack CLI (./test.sh installs python-openstackclient in .venv)");
        return;
    };
    ks.user("carol", "demo", "member");
    ks.user("dave", "other", "member");
    let data = tempfile::tempdir().unwrap();
    let c = controller(&ks, data.path(), 300);
    ks.register_network(&format!("http://127.0.0.1:{}", c.port));
    // The CLI with password auth through the catalog: (success, stdout, stderr).
    let cli = |user: &str, project: &str, args: &[&str]| {
        let out = Command::new(&bin)
            .args(["--os-auth-url", &ks.url(), "--os-identity-api-version", "3"])
            .args([
                "--os-username",
                user,
                "--os-password",
                &format!("{user}-secret"),
            ])
            .args([
                "--os-project-name",
                project,
                "--os-region-name",
                "RegionOne",
            ])
            .args([
                "--os-user-domain-name",
                "Default",
                "--os-project-domain-name",
                "Default",
            ])
            .args(args)
            .output()
            .expect("run openstack");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };
    let run = |user: &str, project: &str, args: &[&str]| -> Value {
        let mut all = args.to_vec();
        all.extend(["-f", "json"]);
        let (ok, out, err) = cli(user, project, &all);
        assert!(
            ok,
            "openstack {args:?} as {user}: {err}\nKeystone's log:\n{}",
            ks.log_tail()
        );
        serde_json::from_str(&out).unwrap_or(Value::Null)
    };
    let admin = |args: &[&str]| run("admin", "admin", args);
    let carol = |args: &[&str]| run("carol", "demo", args);
    // The README's flow, as a member of a project and (for the external network) an admin.
    let net = carol(&["network", "create", "demo"]);
    carol(&[
        "subnet",
        "create",
        "--network",
        "demo",
        "--subnet-range",
        "192.168.100.0/24",
        "demo-v4",
    ]);
    let port = carol(&[
        "port",
        "create",
        "--network",
        "demo",
        "--dns-name",
        "hello",
        "vm1",
    ]);
    assert_eq!(port["project_id"], net["project_id"]);
    carol(&[
        "security",
        "group",
        "rule",
        "create",
        "--ingress",
        "--protocol",
        "tcp",
        "--dst-port",
        "22",
        "default",
    ]);
    admin(&[
        "network",
        "create",
        "--external",
        "--provider-network-type",
        "flat",
        "--provider-physical-network",
        "public",
        "public",
    ]);
    admin(&[
        "subnet",
        "create",
        "--network",
        "public",
        "--subnet-range",
        "172.24.4.0/24",
        "public-v4",
    ]);
    carol(&["router", "create", "r1"]);
    for args in [
        &["router", "add", "subnet", "r1", "demo-v4"][..],
        &["router", "set", "--external-gateway", "public", "r1"][..],
    ] {
        let (ok, _, err) = cli("carol", "demo", args);
        assert!(ok, "openstack {args:?}: {err}");
    }
    let fip = carol(&["floating", "ip", "create", "--port", "vm1", "public"]);
    assert!(fip["floating_ip_address"]
        .as_str()
        .unwrap()
        .starts_with("172.24.4."));
    assert_eq!(fip["project_id"], net["project_id"]);
    // What the member cannot do, the CLI reports.
    let (ok, _, err) = cli(
        "carol",
        "demo",
        &["network", "create", "--share", "everyone"],
    );
    assert!(!ok);
    assert!(
        err.contains("disallowed by policy"),
        "{err}\nKeystone's log:\n{}",
        ks.log_tail()
    );

    // With an identity API the CLI resolves project names: a grant to one project, and quotas.
    let dave = |args: &[&str]| run("dave", "other", args);
    let net_id = net["id"].as_str().unwrap();
    let (ok, _, _) = cli("dave", "other", &["network", "show", net_id]);
    assert!(!ok, "not shared yet");
    let grant = admin(&[
        "network",
        "rbac",
        "create",
        "--target-project",
        "other",
        "--action",
        "access_as_shared",
        "--type",
        "network",
        net_id,
    ]);
    assert_eq!(dave(&["network", "show", net_id])["id"], net["id"]);
    dave(&["port", "create", "--network", net_id, "dave-port"]);
    let grant_id = grant["id"].as_str().unwrap();
    let (ok, _, err) = cli("admin", "admin", &["network", "rbac", "delete", grant_id]);
    assert!(
        !ok && err.contains("cannot be removed because other objects depend on it"),
        "{err}"
    );
    let (ok, _, err) = cli("dave", "other", &["port", "delete", "dave-port"]);
    assert!(ok, "{err}");
    let (ok, _, err) = cli("admin", "admin", &["network", "rbac", "delete", grant_id]);
    assert!(ok, "{err}");
    let (ok, _, err) = cli("admin", "admin", &["quota", "set", "--ports", "7", "other"]);
    assert!(ok, "{err}");
    // `quota show` lists {Resource, Limit} rows.
    let ports = |rows: Value| {
        rows.as_array()
            .and_then(|rows| rows.iter().find(|r| r["Resource"] == "ports"))
            .map(|r| r["Limit"].clone())
    };
    assert_eq!(ports(admin(&["quota", "show", "other"])), Some(json!(7)));
    assert_eq!(ports(dave(&["quota", "show"])), Some(json!(7)), "its own");
}

/// A token from Keystone at `url`, asked from inside the lab's fabric.
fn fabric_token(lab: &isthmus_lab::Lab, url: &str, user: &str, project: &str) -> String {
    let body = json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"id": "default"}, "password": format!("{user}-secret")}}},
        "scope": {"project": {"name": project, "domain": {"id": "default"}}}}})
    .to_string();
    let headers = lab
        .fabric
        .exec(
            "curl",
            &[
                "-s",
                "-D",
                "-",
                "-o",
                "/dev/null",
                "-H",
                "Content-Type: application/json",
                "-d",
                &body,
                &format!("{url}/auth/tokens"),
            ],
        )
        .expect("curl Keystone");
    headers
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("x-subject-token"))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no token for {user}@{project}: {headers}"))
}

#[test]
fn agents_with_keystone_credentials_register_and_wire_vms() {
    if !isthmus_lab::runnable() {
        return;
    }
    let Some(mut ks) = Keystone::start() else {
        return;
    };
    ks.user("isthmus", "service", "service");
    ks.user("isthmus-agent", "service", "service");
    ks.user("carol", "demo", "member");
    let controller_pw = ks.password_file("isthmus.pw", "isthmus-secret");
    let agent_pw = ks.password_file("agent.pw", "isthmus-agent-secret");
    let lab = isthmus_lab::Lab::new(2).unwrap();
    // Keystone moves into the fabric, where the controller and the nodes reach it.
    let fabric_ip = isthmus_lab::CONTROLLER_ADDR.split(':').next().unwrap();
    let listen = format!("{fabric_ip}:5000");
    let url = format!("http://{listen}/v3");
    ks.move_to(
        |uwsgi| lab.fabric.command(uwsgi.to_str().unwrap()),
        &listen,
        || {
            lab.fabric
                .exec(
                    "curl",
                    &["-s", "-o", "/dev/null", "-w", "%{http_code}", &url],
                )
                .is_ok_and(|code| code.trim() == "200")
        },
    );
    let data = tempfile::tempdir().unwrap();
    let _controller = lab
        .start_controller_with(
            cloud::BIN,
            data.path(),
            &[
                "--auth",
                "keystone",
                "--keystone-url",
                &url,
                "--keystone-user",
                "isthmus",
                "--keystone-password-file",
                controller_pw.to_str().unwrap(),
            ],
        )
        .unwrap();
    let agent_args = [
        "--keystone-url",
        url.as_str(),
        "--keystone-user",
        "isthmus-agent",
        "--keystone-password-file",
        agent_pw.to_str().unwrap(),
    ];
    let _agents: Vec<_> = (0..2)
        .map(|i| lab.start_agent_with(cloud::BIN, i, &agent_args).unwrap())
        .collect();
    // Without a token the controller answers nothing but 401.
    assert_eq!(lab.api("GET", "/v2.0/networks", None).0, 401);

    let admin = format!(
        "X-Auth-Token: {}",
        fabric_token(&lab, &url, "admin", "admin")
    );
    cloud::wait_for(
        "2 agents registered with their tokens",
        Duration::from_secs(30),
        || {
            lab.api_with("GET", "/v2.0/agents", None, &[&admin]).1["agents"]
                .as_array()
                .is_some_and(|a| a.len() == 2)
        },
    );
    let carol = format!(
        "X-Auth-Token: {}",
        fabric_token(&lab, &url, "carol", "demo")
    );
    let (s, net) = lab.api_with(
        "POST",
        "/v2.0/networks",
        Some(&json!({"network": {"name": "demo"}})),
        &[&carol],
    );
    assert_eq!(s, 201, "{net}");
    let net_id = net["network"]["id"].as_str().unwrap().to_owned();
    let (s, v) = lab.api_with(
        "POST",
        "/v2.0/subnets",
        Some(
            &json!({"subnet": {"network_id": net_id, "ip_version": 4, "cidr": "192.168.50.0/24"}}),
        ),
        &[&carol],
    );
    assert_eq!(s, 201, "{v}");
    let mut vms = Vec::new();
    let mut port_ids = Vec::new();
    for (node, host) in [(0, "node1"), (1, "node2")] {
        // Carol makes the port; the admin binds it, as Nova does with its service token.
        let (s, port) = lab.api_with(
            "POST",
            "/v2.0/ports",
            Some(
                &json!({"port": {"network_id": net_id, "device_owner": "compute:nova",
                                  "port_security_enabled": false}}),
            ),
            &[&carol],
        );
        assert_eq!(s, 201, "{port}");
        let id = port["port"]["id"].as_str().unwrap().to_owned();
        let (s, bound) = lab.api_with(
            "PUT",
            &format!("/v2.0/ports/{id}"),
            Some(&json!({"port": {"binding:host_id": host}})),
            &[&admin],
        );
        assert_eq!(s, 200, "{bound}");
        vms.push(
            lab.add_vm_for_port(node, &bound["port"], 24, None, 1450)
                .unwrap(),
        );
        port_ids.push(id);
    }
    for id in &port_ids {
        cloud::wait_for(
            "the agent to report the port ACTIVE",
            Duration::from_secs(30),
            || {
                lab.api_with("GET", &format!("/v2.0/ports/{id}"), None, &[&carol])
                    .1["port"]["status"]
                    == "ACTIVE"
            },
        );
    }
    cloud::wait_for(
        "VM1 to ping VM2 across nodes",
        Duration::from_secs(20),
        || {
            vms[0]
                .ns
                .exec("ping", &["-c", "1", "-W", "1", "192.168.50.3"])
                .is_ok()
        },
    );
}
