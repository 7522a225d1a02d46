use serde_json::json;

use super::*;

#[test]
fn every_row_of_the_pinned_table_parses() {
    assert_eq!(unparsable_rows(), Vec::<(String, String)>::new());
    assert!(rule_names().count() > 300);
    for name in [
        "create_network",
        "get_port:binding:host_id",
        "default",
        "shared",
    ] {
        assert!(has_rule(name), "{name}");
    }
}

#[test]
fn the_language_follows_oslo_policy() {
    // `and` binds tighter than `or`; `not` tighter than both.
    let check = parse("not role:reader or role:admin and role:member").unwrap();
    assert_eq!(
        check,
        Check::Or(vec![
            Check::Not(Box::new(Check::Role(Roles::READER))),
            Check::And(vec![Check::Role(Roles::ADMIN), Check::Role(Roles::MEMBER)]),
        ])
    );
    assert_eq!(parse("").unwrap(), Check::Always);
    assert_eq!(parse("@").unwrap(), Check::Always);
    assert_eq!(parse("!").unwrap(), Check::Never);
    assert_eq!(parse("((role:admin))").unwrap(), Check::Role(Roles::ADMIN));
    assert_eq!(
        parse("project_id:%(network:project_id)s").unwrap(),
        Check::Generic {
            credential: Credential::Project,
            target: Operand::Key("network:project_id".into())
        }
    );
    assert!(parse("role:admin or").is_err());
    assert!(parse("(role:admin").is_err());
    assert!(parse("role:nobody").is_err());
    assert!(parse("field:port:device_owner=~^net.*").is_err());
    assert!(parse("http://example/check").is_err());
}

#[test]
fn keystone_role_implications() {
    assert_eq!(
        Roles::ADMIN.implied(),
        Roles::ADMIN | Roles::MANAGER | Roles::MEMBER | Roles::READER
    );
    assert_eq!(Roles::MEMBER.implied(), Roles::MEMBER | Roles::READER);
    assert_eq!(Roles::SERVICE.implied(), Roles::SERVICE);
    assert_eq!(
        Roles::from_names(["Member", "bogus", "reader"]),
        Roles::MEMBER | Roles::READER
    );
}

const ROLES: [(&str, Roles); 5] = [
    ("admin", Roles::ADMIN),
    ("member", Roles::MEMBER),
    ("reader", Roles::READER),
    ("service", Roles::SERVICE),
    ("none", Roles::NONE),
];

/// The three relations a caller of project `me` has with a target: its own (on its own
/// network, in its own group), another project's, another project's shared with everyone.
fn targets() -> [Target; 3] {
    let owned_by = |project: &str, shared: bool| {
        let mut target = Target::owned_by(project)
            .with("network:project_id", project)
            .with("ext_parent:project_id", project)
            .with("security_group:project_id", project);
        for field in [
            "networks:shared",
            "security_groups:shared",
            "subnetpools:shared",
            "address_scopes:shared",
            "address_groups:shared",
        ] {
            target = target.with(field, shared);
        }
        target
    };
    [
        owned_by("me", false),
        owned_by("them", false),
        owned_by("them", true),
    ]
}

/// Row, then per role (admin, member, reader, service, none) whether it is allowed on an
/// own, another project's and a shared target. Read off `neutron.tsv` by hand.
const EXPECTED: &[(&str, &str)] = &[
    ("create_network", "YYY YNN NNN NNN NNN"),
    ("get_network", "YYY YNY YNY YYY NNY"),
    ("update_network", "YYY YNN NNN NNN NNN"),
    ("delete_network", "YYY YNN NNN NNN NNN"),
    ("create_network:shared", "YYY NNN NNN NNN NNN"),
    ("create_network:router:external", "YYY NNN NNN NNN NNN"),
    (
        "create_network:provider:network_type",
        "YYY NNN NNN NNN NNN",
    ),
    (
        "get_network:provider:segmentation_id",
        "YYY NNN NNN NNN NNN",
    ),
    ("update_network:shared", "YYY NNN NNN NNN NNN"),
    (
        "create_network:port_security_enabled",
        "YYY YNN NNN NNN NNN",
    ),
    ("create_subnet", "YYY YNN NNN NNN NNN"),
    ("get_subnet", "YYY YNY YNY YYY NNY"),
    ("update_subnet", "YYY YNN NNN NNN NNN"),
    ("delete_subnet", "YYY YNN NNN NNN NNN"),
    ("create_subnet:service_types", "YYY NNN NNN NNN NNN"),
    ("create_port", "YYY YNY NNY YYY NNY"),
    ("get_port", "YYY YNN YNN YYY NNN"),
    ("update_port", "YYY YNN NNN YYY NNN"),
    ("delete_port", "YYY YNN NNN YYY NNN"),
    ("create_port:binding:host_id", "YYY NNN NNN YYY NNN"),
    ("create_port:binding:profile", "NNN NNN NNN YYY NNN"),
    ("get_port:binding:host_id", "YYY NNN NNN YYY NNN"),
    ("get_port:binding:vif_details", "YYY NNN NNN YYY NNN"),
    ("update_port:binding:host_id", "YYY NNN NNN YYY NNN"),
    ("create_port:mac_address", "YYY YNN NNN YYY NNN"),
    ("create_port:fixed_ips:ip_address", "YYY YNN NNN YYY NNN"),
    ("create_port:fixed_ips:subnet_id", "YYY YNY NNY YYY NNY"),
    ("create_port:port_security_enabled", "YYY YNN NNN YYY NNN"),
    ("create_port:allowed_address_pairs", "YYY YNN NNN YYY NNN"),
    ("update_port:mac_address", "YYY NNN NNN YYY NNN"),
    ("create_security_group", "YYY YNN NNN NNN NNN"),
    ("get_security_group", "YYY YNY YNY NNY NNY"),
    ("update_security_group", "YYY YNN NNN NNN NNN"),
    ("delete_security_group", "YYY YNN NNN NNN NNN"),
    ("create_security_group_rule", "YYY YNN NNN NNN NNN"),
    ("get_security_group_rule", "YYY YNN YNN NNN NNN"),
    ("delete_security_group_rule", "YYY YNN NNN NNN NNN"),
    ("create_router", "YYY YNN NNN NNN NNN"),
    ("get_router", "YYY YNN YNN NNN NNN"),
    ("update_router", "YYY YNN NNN NNN NNN"),
    ("delete_router", "YYY YNN NNN NNN NNN"),
    ("create_router:distributed", "YYY NNN NNN NNN NNN"),
    ("create_router:ha", "YYY NNN NNN NNN NNN"),
    ("get_router:distributed", "YYY NNN NNN NNN NNN"),
    ("create_router:external_gateway_info", "YYY YNN NNN NNN NNN"),
    (
        "create_router:external_gateway_info:enable_snat",
        "YYY NNN NNN NNN NNN",
    ),
    (
        "create_router:external_gateway_info:external_fixed_ips",
        "YYY NNN NNN NNN NNN",
    ),
    ("add_router_interface", "YYY YNN NNN NNN NNN"),
    ("remove_router_interface", "YYY YNN NNN NNN NNN"),
    ("add_extraroutes", "YYY YNN NNN NNN NNN"),
    ("create_floatingip", "YYY YNN NNN NNN NNN"),
    ("get_floatingip", "YYY YNN YNN NNN NNN"),
    ("update_floatingip", "YYY YNN NNN NNN NNN"),
    ("delete_floatingip", "YYY YNN NNN NNN NNN"),
    (
        "create_floatingip:floating_ip_address",
        "YYY NNN NNN NNN NNN",
    ),
    ("create_address_scope", "YYY YNN NNN NNN NNN"),
    ("get_address_scope", "YYY YNY YNY NNY NNY"),
    ("create_address_scope:shared", "YYY NNN NNN NNN NNN"),
    ("create_subnetpool", "YYY YNN NNN NNN NNN"),
    ("get_subnetpool", "YYY YNY YNY NNY NNY"),
    ("create_subnetpool:is_default", "YYY NNN NNN NNN NNN"),
    ("add_prefixes", "YYY YNN NNN NNN NNN"),
    ("create_address_group", "YYY YNN NNN NNN NNN"),
    ("get_address_group", "YYY YNY YNY NNY NNY"),
    ("add_addresses", "YYY YNN NNN NNN NNN"),
    ("create_rbac_policy", "YYY YNN NNN NNN NNN"),
    ("get_rbac_policy", "YYY YNN YNN NNN NNN"),
    ("delete_rbac_policy", "YYY YNN NNN NNN NNN"),
    ("create_default_security_group_rule", "YYY NNN NNN NNN NNN"),
    ("get_default_security_group_rule", "YYY YYY YYY NNN NNN"),
    ("get_quota", "YYY NNN NNN NNN NNN"),
    ("update_quota", "YYY NNN NNN NNN NNN"),
    ("delete_quota", "YYY NNN NNN NNN NNN"),
    ("get_agent", "YYY NNN NNN NNN NNN"),
    ("get_network_ip_availability", "YYY NNN NNN YYY NNN"),
    ("get_availability_zone", "YYY YYY YYY NNN NNN"),
    ("get_floatingip_pool", "YYY YNN YNN NNN NNN"),
    ("create_node", "YYY NNN NNN YYY NNN"),
    ("watch_node", "YYY NNN NNN YYY NNN"),
    ("delete_node", "YYY NNN NNN NNN NNN"),
    ("update_port:status", "YYY NNN NNN YYY NNN"),
    ("update_namespace_binding", "YYY NNN NNN YYY NNN"),
];

#[test]
fn the_table_row_by_row_for_every_role_and_relation() {
    let targets = targets();
    let mut wrong = Vec::new();
    for (rule, expected) in EXPECTED {
        assert!(has_rule(rule), "{rule} is not in the table");
        let got: Vec<String> = ROLES
            .iter()
            .map(|(_, roles)| {
                let caller = Caller::new("me", *roles);
                targets
                    .iter()
                    .map(|t| if allows(rule, &caller, t) { 'Y' } else { 'N' })
                    .collect()
            })
            .collect();
        let got = got.join(" ");
        if got != *expected {
            wrong.push(format!("{rule}: expected {expected}, got {got}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn managers_and_field_checks() {
    let [own, other, _] = targets();
    let manager = Caller::new("me", Roles::MANAGER);
    assert!(allows("get_quota", &manager, &own));
    assert!(!allows("get_quota", &manager, &other));
    assert!(allows(
        "create_floatingip:floating_ip_address",
        &manager,
        &own
    ));
    assert!(allows("create_network", &manager, &own));

    // Only admins share with everyone.
    let member = Caller::member("me");
    let wildcard = Target::owned_by("me").with("rbac_policy:target_tenant", "*");
    let one = Target::owned_by("me").with("rbac_policy:target_tenant", "them");
    assert!(!allows(
        "create_rbac_policy:target_tenant",
        &member,
        &wildcard
    ));
    assert!(allows("create_rbac_policy:target_tenant", &member, &one));
    assert!(allows(
        "create_rbac_policy:target_tenant",
        &Caller::admin("me"),
        &wildcard
    ));

    // `network:*` device owners belong to network owners, admins and services.
    let router_port = |net_owner: &str| {
        Target::owned_by("me")
            .with("network:project_id", net_owner)
            .with("port:device_owner", "network:router_interface")
    };
    assert!(allows(
        "create_port:device_owner",
        &member,
        &router_port("me")
    ));
    assert!(!allows(
        "create_port:device_owner",
        &member,
        &router_port("them")
    ));
    let vm_port = Target::owned_by("me")
        .with("network:project_id", "them")
        .with("port:device_owner", "compute:nova");
    assert!(allows("create_port:device_owner", &member, &vm_port));
}

#[test]
fn unknown_actions_fall_back_to_the_default_rule() {
    let [own, other, _] = targets();
    // `default` is `rule:admin_or_owner`.
    assert!(allows(
        "frobnicate_widget",
        &Caller::new("me", Roles::NONE),
        &own
    ));
    assert!(!allows("frobnicate_widget", &Caller::member("me"), &other));
    assert!(allows("frobnicate_widget", &Caller::admin("me"), &other));
}

#[test]
fn bodies_check_what_they_set_to_other_than_the_default() {
    let member = Caller::member("me");
    let own = Target::owned_by("me").with("network:project_id", "me");
    let defaults = |name: &str| match name {
        "shared" => Some(json!(false)),
        _ => None,
    };
    let body = |v: serde_json::Value| v.as_object().cloned().unwrap();
    // Setting `shared` to its default is not a use of it.
    authorize_body(
        "create",
        "network",
        &body(json!({"shared": false, "name": "n"})),
        defaults,
        &member,
        &own,
    )
    .unwrap();
    let err = authorize_body(
        "create",
        "network",
        &body(json!({"shared": true})),
        defaults,
        &member,
        &own,
    )
    .unwrap_err();
    assert_eq!(
        err,
        Error::PolicyNotAuthorized("rule:create_network:shared".into())
    );
    // An update names what it changes, default or not.
    assert!(authorize_body(
        "update",
        "network",
        &body(json!({"shared": false})),
        defaults,
        &member,
        &own
    )
    .is_err());
    // Items of a list are checked key by key.
    let other_net = Target::owned_by("me")
        .with("network:project_id", "them")
        .with("networks:shared", true);
    authorize_body(
        "create",
        "port",
        &body(json!({"fixed_ips": [{"subnet_id": "s"}]})),
        |_| None,
        &member,
        &other_net,
    )
    .unwrap();
    let err = authorize_body(
        "create",
        "port",
        &body(json!({"fixed_ips": [{"subnet_id": "s", "ip_address": "10.0.0.9"}]})),
        |_| None,
        &member,
        &other_net,
    )
    .unwrap_err();
    assert_eq!(
        err,
        Error::PolicyNotAuthorized("rule:create_port:fixed_ips:ip_address".into())
    );
    let err = authorize_body(
        "create",
        "router",
        &body(json!({"external_gateway_info": {"network_id": "n", "enable_snat": false}})),
        |_| None,
        &member,
        &own,
    )
    .unwrap_err();
    assert_eq!(
        err,
        Error::PolicyNotAuthorized("rule:create_router:external_gateway_info:enable_snat".into())
    );
}

#[test]
fn attributes_hidden_by_role() {
    assert!(!attribute_visible(
        "port",
        "binding:host_id",
        Roles::MEMBER.implied()
    ));
    assert!(attribute_visible("port", "binding:host_id", Roles::SERVICE));
    assert!(attribute_visible(
        "port",
        "binding:vnic_type",
        Roles::READER
    ));
    assert!(!attribute_visible(
        "network",
        "provider:network_type",
        Roles::MEMBER.implied()
    ));
    assert!(attribute_visible("network", "name", Roles::NONE));
    assert!(attribute_visible("network", "tags", Roles::READER));
}
