//! Security groups and their rules, with Neutron's defaults and validation.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::addr::{Cidr, IpVersion};
use crate::error::{Error, Result};
use crate::input::{as_string, as_uuid, show, Input, Method};
use crate::meta::{owner_project, Caller, Meta};
use crate::resource::{attr, Definition, Resource, Rights};

/// The `security-groups` resource.
pub static GROUP_DEFINITION: Definition<SecurityGroup> = Definition {
    collection: "security-groups",
    singular: "security_group",
    plural: "security_groups",
    fault: "SecurityGroup",
    named: true,
    tagged: true,
    description: Some(Rights::ALL),
    updatable: true,
    api: crate::resource::Api::Neutron,
    attributes: &[
        attr("security_group_rules", Rights::READ, |g, v| {
            Some(Value::Array(
                g.rules.iter().map(|r| Value::Object(r.render(v))).collect(),
            ))
        }),
        attr("stateful", Rights::ALL, |g, _| Some(json!(g.stateful))),
        attr("shared", Rights::READ, |_, _| Some(json!(false))),
    ],
};

/// The `security-group-rules` resource (rules cannot be updated and have no name or tags).
pub static RULE_DEFINITION: Definition<SecurityGroupRule> = Definition {
    collection: "security-group-rules",
    singular: "security_group_rule",
    plural: "security_group_rules",
    fault: "SecurityGroupRule",
    named: false,
    tagged: false,
    description: Some(Rights::CREATE_QUERY),
    updatable: false,
    api: crate::resource::Api::Neutron,
    attributes: &[
        attr("security_group_id", Rights::CREATE_QUERY, |r, _| {
            Some(json!(r.security_group_id))
        }),
        attr("direction", Rights::CREATE_QUERY, |r, _| {
            Some(json!(r.direction.as_str()))
        }),
        attr("ethertype", Rights::CREATE_QUERY, |r, _| {
            Some(json!(r.ethertype.ethertype()))
        }),
        attr("protocol", Rights::CREATE_QUERY, |r, _| {
            Some(json!(r.protocol))
        }),
        attr("port_range_min", Rights::CREATE_QUERY, |r, _| {
            Some(json!(r.port_range_min))
        }),
        attr("port_range_max", Rights::CREATE_QUERY, |r, _| {
            Some(json!(r.port_range_max))
        }),
        attr("remote_ip_prefix", Rights::CREATE_QUERY, |r, _| {
            Some(json!(r.remote_ip_prefix))
        }),
        attr("remote_group_id", Rights::CREATE_QUERY, |r, _| {
            Some(json!(r.remote_group_id))
        }),
        attr("remote_address_group_id", Rights::CREATE_QUERY, |r, _| {
            Some(json!(r.remote_address_group_id))
        }),
        attr("normalized_cidr", Rights::READ, |r, _| {
            Some(json!(r
                .remote_ip_prefix
                .as_deref()
                .and_then(Cidr::parse_lenient)
                .map(|c| c.to_string())))
        }),
        attr("belongs_to_default_sg", Rights::READ, |r, _| {
            Some(json!(r.in_default_group))
        }),
    ],
};

/// Name of each project's default group.
pub const DEFAULT_GROUP_NAME: &str = "default";

/// A stored security group (its rules are stored separately).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroup {
    /// Standard attributes.
    pub meta: Meta,
    /// Connection tracking on; a stateless group's rules alone decide, in both directions.
    pub stateful: bool,
    /// Whether this is the project's default group.
    pub is_default: bool,
    /// Its rules, read with it for the API and the watch (each rule is stored under its own
    /// key, never inside the group).
    #[serde(skip)]
    pub rules: Vec<SecurityGroupRule>,
}

/// Traffic direction relative to the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Into the port.
    Ingress,
    /// Out of the port.
    Egress,
}

impl Direction {
    /// Neutron's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// A stored rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroupRule {
    /// Standard attributes (name and tags unused).
    pub meta: Meta,
    /// The group it belongs to.
    pub security_group_id: String,
    /// Direction.
    pub direction: Direction,
    /// Address family.
    pub ethertype: IpVersion,
    /// Protocol as given (name or number), `None` = any.
    pub protocol: Option<String>,
    /// Low port, or ICMP type.
    pub port_range_min: Option<u32>,
    /// High port, or ICMP code.
    pub port_range_max: Option<u32>,
    /// Remote prefix, as given.
    pub remote_ip_prefix: Option<String>,
    /// Remote group.
    pub remote_group_id: Option<String>,
    /// Remote address group (`address-group`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_address_group_id: Option<String>,
    /// Whether its group is a default group (`belongs_to_default_sg`), read with the rule for
    /// the API (the group decides it; never stored with the rule).
    #[serde(skip)]
    pub in_default_group: bool,
}

/// Protocol names Neutron accepts, with their numbers.
const PROTOCOLS: &[(&str, u8)] = &[
    ("ah", 51),
    ("dccp", 33),
    ("egp", 8),
    ("esp", 50),
    ("gre", 47),
    ("hopopt", 0),
    ("icmp", 1),
    ("igmp", 2),
    ("ipip", 4),
    ("ipv6-encap", 41),
    ("ipv6-frag", 44),
    ("ipv6-icmp", 58),
    ("icmpv6", 58),
    ("ipv6-nonxt", 59),
    ("ipv6-opts", 60),
    ("ipv6-route", 43),
    ("ospf", 89),
    ("pgm", 113),
    ("rsvp", 46),
    ("sctp", 132),
    ("tcp", 6),
    ("udp", 17),
    ("udplite", 136),
    ("vrrp", 112),
];

/// The IP protocol number of a rule's protocol string.
pub fn protocol_number(protocol: &str) -> Option<u8> {
    PROTOCOLS
        .iter()
        .find(|(n, _)| *n == protocol)
        .map(|(_, v)| *v)
        .or_else(|| protocol.parse().ok())
}

impl SecurityGroup {
    /// Parses a create body. Every new group gets Neutron's two default egress rules (the
    /// service creates them).
    pub fn parse_create(
        body: Value,
        caller: &Caller,
        id: String,
        now: &str,
    ) -> Result<SecurityGroup> {
        let mut input = Input::for_kind(body, &GROUP_DEFINITION, Method::Create)?;
        let project_id = owner_project(&mut input, caller)?;
        let mut meta = Meta::new(id, project_id, now);
        meta.read_common(&mut input)?;
        if meta.name == DEFAULT_GROUP_NAME {
            return Err(Error::Conflict(
                "Default security group already exists.".to_owned(),
            ));
        }
        let stateful = input.boolean("stateful")?.unwrap_or(true);
        Ok(SecurityGroup {
            meta,
            stateful,
            is_default: false,
            rules: Vec::new(),
        })
    }

    /// The default group of `project_id`.
    pub fn default_for(project_id: &str, id: String, now: &str) -> SecurityGroup {
        let mut meta = Meta::new(id, project_id.to_owned(), now);
        meta.name = DEFAULT_GROUP_NAME.to_owned();
        meta.description = "Default security group".to_owned();
        SecurityGroup {
            meta,
            stateful: true,
            is_default: true,
            rules: Vec::new(),
        }
    }

    /// Applies an update body and records a new revision.
    pub fn apply_update(&mut self, body: Value, now: &str) -> Result<()> {
        let mut input = Input::for_kind(body, &GROUP_DEFINITION, Method::Update)?;
        let old_name = self.meta.name.clone();
        self.meta.read_common(&mut input)?;
        if self.is_default && self.meta.name != old_name {
            return Err(Error::Conflict(
                "Updating default security group not allowed.".to_owned(),
            ));
        }
        if let Some(stateful) = input.boolean("stateful")? {
            self.stateful = stateful;
        }
        self.meta.touch(now);
        Ok(())
    }

    /// The group with its rules, each knowing it belongs to this group.
    pub fn with_rules(mut self, rules: Vec<SecurityGroupRule>) -> SecurityGroup {
        let is_default = self.is_default;
        self.rules = rules
            .into_iter()
            .map(|r| SecurityGroupRule {
                in_default_group: is_default,
                ..r
            })
            .collect();
        self
    }
}

impl SecurityGroupRule {
    /// Parses and validates a create body (the group's existence is the service's check).
    pub fn parse_create(
        body: Value,
        caller: &Caller,
        id: String,
        now: &str,
    ) -> Result<SecurityGroupRule> {
        let mut input = Input::for_kind(body, &RULE_DEFINITION, Method::Create)?;
        let project_id = owner_project(&mut input, caller)?;
        let mut meta = Meta::new(id, project_id, now);
        meta.read_common(&mut input)?;
        let security_group_id = as_uuid(
            "security_group_id",
            &Input::required("security_group_id", input.take("security_group_id"))?,
        )?;
        let direction = match input.string("direction", 16)?.as_deref() {
            Some("ingress") => Direction::Ingress,
            Some("egress") => Direction::Egress,
            Some(other) => {
                return Err(Error::invalid_attr(
                    "direction",
                    format!("'{other}' is not in ['ingress', 'egress']"),
                ))
            }
            None => {
                return Err(Error::BadRequest(
                    "Failed to parse request. Required attribute 'direction' not specified"
                        .to_owned(),
                ))
            }
        };
        let ethertype = match input.nullable_string("ethertype", 8)?.flatten() {
            None => IpVersion::V4,
            Some(e) if e.eq_ignore_ascii_case("ipv4") => IpVersion::V4,
            Some(e) if e.eq_ignore_ascii_case("ipv6") => IpVersion::V6,
            Some(e) => {
                return Err(Error::invalid_attr(
                    "ethertype",
                    format!("'{e}' is not in ['IPv4', 'IPv6']"),
                ))
            }
        };
        let protocol = match input.take("protocol") {
            None | Some(Value::Null) => None,
            Some(v) => {
                let p = match &v {
                    Value::Number(n) => n.to_string(),
                    other => as_string("protocol", other, 32)?.to_ascii_lowercase(),
                };
                match p.as_str() {
                    "" | "any" => None,
                    _ if protocol_number(&p).is_some() => Some(p),
                    _ => {
                        return Err(Error::BadRequest(format!(
                            "Security group rule protocol {p} not supported. Only protocol values [None, {}] and integer representations [0 to 255] are supported.",
                            PROTOCOLS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                        )))
                    }
                }
            }
        };
        let port = |input: &mut Input, key: &str| -> Result<Option<u32>> {
            match input.nullable_integer(key)?.flatten() {
                None => Ok(None),
                Some(n) if (0..=65535).contains(&n) => Ok(Some(n as u32)),
                Some(n) => Err(Error::BadRequest(format!("Invalid value for port {n}"))),
            }
        };
        let port_range_min = port(&mut input, "port_range_min")?;
        let port_range_max = port(&mut input, "port_range_max")?;
        let remote_ip_prefix = input.nullable_string("remote_ip_prefix", 64)?.flatten();
        let remote_group_id = input
            .take("remote_group_id")
            .filter(|v| !v.is_null())
            .map(|v| as_uuid("remote_group_id", &v))
            .transpose()?;
        let remote_address_group_id = input
            .take("remote_address_group_id")
            .filter(|v| !v.is_null())
            .map(|v| as_uuid("remote_address_group_id", &v))
            .transpose()?;
        let remotes = [
            remote_ip_prefix.is_some(),
            remote_group_id.is_some(),
            remote_address_group_id.is_some(),
        ];
        if remotes.iter().filter(|r| **r).count() > 1 {
            return Err(Error::BadRequest(
                "Only one of remote_ip_prefix, remote_group_id and remote_address_group_id may be provided.".to_owned(),
            ));
        }
        if let Some(prefix) = &remote_ip_prefix {
            let cidr = Cidr::parse_lenient(prefix).ok_or_else(|| {
                Error::invalid_attr(
                    "remote_ip_prefix",
                    format!("'{prefix}' is not a valid IP subnet"),
                )
            })?;
            if cidr.version() != ethertype {
                return Err(Error::BadRequest(format!(
                    "Conflicting value ethertype {} for CIDR {prefix}",
                    ethertype.ethertype()
                )));
            }
        }
        let rule = SecurityGroupRule {
            meta,
            security_group_id,
            direction,
            ethertype,
            protocol,
            port_range_min,
            port_range_max,
            remote_ip_prefix,
            remote_group_id,
            remote_address_group_id,
            in_default_group: false,
        };
        rule.check_ports()?;
        Ok(rule)
    }

    fn check_ports(&self) -> Result<()> {
        let (min, max) = (self.port_range_min, self.port_range_max);
        if min.is_none() && max.is_none() {
            return Ok(());
        }
        let Some(protocol) = self.protocol.as_deref() else {
            return Err(Error::BadRequest(
                "Must also specify protocol if port range is given.".to_owned(),
            ));
        };
        match protocol_number(protocol) {
            Some(6) | Some(17) | Some(33) | Some(132) | Some(136) => {
                let (Some(min), Some(max)) = (min, max) else {
                    // Neutron fills a missing bound with the other one.
                    let one = min.or(max).unwrap_or(0);
                    if one == 0 {
                        return Err(Error::BadRequest(format!("Invalid value for port {one}")));
                    }
                    return Ok(());
                };
                if min == 0 || max == 0 {
                    return Err(Error::BadRequest("Invalid value for port 0".to_owned()));
                }
                if min > max {
                    return Err(Error::BadRequest(
                        "For TCP/UDP protocols, port_range_min must be <= port_range_max".to_owned(),
                    ));
                }
                Ok(())
            }
            Some(1) | Some(58) => {
                if min.is_some_and(|t| t > 255) {
                    return Err(Error::BadRequest(format!(
                        "Invalid value for ICMP field (port_range_min) type: {}",
                        min.unwrap_or_default()
                    )));
                }
                if max.is_some_and(|c| c > 255) {
                    return Err(Error::BadRequest(format!(
                        "Invalid value for ICMP field (port_range_max) code: {}",
                        max.unwrap_or_default()
                    )));
                }
                if min.is_none() && max.is_some() {
                    return Err(Error::BadRequest(
                        "ICMP code (port-range-max) is provided but ICMP type (port-range-min) is missing.".to_owned(),
                    ));
                }
                Ok(())
            }
            _ => Err(Error::BadRequest(format!(
                "Invalid protocol {protocol} for port range: only TCP, UDP, UDP-Lite, SCTP, DCCP and ICMP rules take ports"
            ))),
        }
    }

    /// Whether two rules are the same rule (what Neutron calls a duplicate).
    pub fn same_rule(&self, other: &SecurityGroupRule) -> bool {
        let norm_proto = |p: &Option<String>| p.as_deref().and_then(protocol_number);
        let norm_prefix = |p: &Option<String>| {
            p.as_deref()
                .and_then(Cidr::parse_lenient)
                // 0.0.0.0/0 and ::/0 mean "any", the same as no prefix.
                .filter(|c| c.prefix != 0)
        };
        let ports = |r: &SecurityGroupRule| match (r.port_range_min, r.port_range_max) {
            (Some(a), None) | (None, Some(a)) => (Some(a), Some(a)),
            other => other,
        };
        self.security_group_id == other.security_group_id
            && self.direction == other.direction
            && self.ethertype == other.ethertype
            && norm_proto(&self.protocol) == norm_proto(&other.protocol)
            && ports(self) == ports(other)
            && norm_prefix(&self.remote_ip_prefix) == norm_prefix(&other.remote_ip_prefix)
            && self.remote_group_id == other.remote_group_id
            && self.remote_address_group_id == other.remote_address_group_id
    }
}

crate::resource!(SecurityGroup, GROUP_DEFINITION);

crate::resource!(SecurityGroupRule, RULE_DEFINITION);

/// The `default-security-group-rules` resource (`security-groups-default-rules`): the
/// template new groups take their rules from. Admins change it; it has no name or tags and
/// cannot be updated.
pub static DEFAULT_RULE_DEFINITION: Definition<DefaultRule> = Definition {
    collection: "default-security-group-rules",
    singular: "default_security_group_rule",
    plural: "default_security_group_rules",
    fault: "DefaultSecurityGroupRule",
    named: false,
    tagged: false,
    description: Some(Rights::CREATE_QUERY),
    updatable: false,
    api: crate::resource::Api::Neutron,
    attributes: &[
        attr("direction", Rights::CREATE_QUERY, |r, _| {
            Some(json!(r.direction.as_str()))
        }),
        attr("ethertype", Rights::CREATE_QUERY, |r, _| {
            Some(json!(r.ethertype.ethertype()))
        }),
        attr("protocol", Rights::CREATE_QUERY, |r, _| {
            Some(json!(r.protocol))
        }),
        attr("port_range_min", Rights::CREATE_QUERY, |r, _| {
            Some(json!(r.port_range_min))
        }),
        attr("port_range_max", Rights::CREATE_QUERY, |r, _| {
            Some(json!(r.port_range_max))
        }),
        attr("remote_ip_prefix", Rights::CREATE_QUERY, |r, _| {
            Some(json!(r.remote_ip_prefix))
        }),
        attr("remote_group_id", Rights::CREATE_QUERY, |r, _| {
            Some(json!(r.remote_parent.then_some(PARENT)))
        }),
        attr("remote_address_group_id", Rights::CREATE_QUERY, |r, _| {
            Some(json!(r.remote_address_group_id))
        }),
        attr("used_in_default_sg", Rights::CREATE_QUERY, |r, _| {
            Some(json!(r.used_in_default_sg))
        }),
        attr("used_in_non_default_sg", Rights::CREATE_QUERY, |r, _| {
            Some(json!(r.used_in_non_default_sg))
        }),
    ],
};

/// `remote_group_id` of a template rule whose remote is the group it is copied into.
pub const PARENT: &str = "PARENT";

/// A rule of the template new security groups are built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefaultRule {
    /// Standard attributes (no name or tags).
    pub meta: Meta,
    /// Direction.
    pub direction: Direction,
    /// Address family.
    pub ethertype: IpVersion,
    /// Protocol as given, `None` = any.
    pub protocol: Option<String>,
    /// Low port, or ICMP type.
    pub port_range_min: Option<u32>,
    /// High port, or ICMP code.
    pub port_range_max: Option<u32>,
    /// Remote prefix.
    pub remote_ip_prefix: Option<String>,
    /// The remote is the group the rule is copied into (`PARENT`).
    pub remote_parent: bool,
    /// Remote address group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_address_group_id: Option<String>,
    /// Copied into each project's default group.
    pub used_in_default_sg: bool,
    /// Copied into every other new group.
    pub used_in_non_default_sg: bool,
}

crate::resource!(DefaultRule, DEFAULT_RULE_DEFINITION, {
    /// Every project reads the template (admins change it).
    fn visible_to(&self, _caller: &Caller) -> bool {
        true
    }
});

/// A placeholder group id that template rules are validated against.
const TEMPLATE_GROUP: &str = "00000000-0000-0000-0000-000000000000";

impl DefaultRule {
    /// Parses a create body (admins only) with a rule's validation; `remote_group_id` may only
    /// be `PARENT`.
    pub fn parse_create(body: Value, caller: &Caller, meta: Meta) -> Result<DefaultRule> {
        let input = Input::for_kind(body, &DEFAULT_RULE_DEFINITION, Method::Create)?;
        let mut map = input.into_map();
        let flag = |map: &mut Map<String, Value>, key: &str, default: bool| -> Result<bool> {
            map.remove(key)
                .filter(|v| !v.is_null())
                .map_or(Ok(default), |v| crate::input::as_bool(key, &v))
        };
        let used_in_default_sg = flag(&mut map, "used_in_default_sg", false)?;
        let used_in_non_default_sg = flag(&mut map, "used_in_non_default_sg", true)?;
        let remote_parent = match map.remove("remote_group_id") {
            None | Some(Value::Null) => false,
            Some(Value::String(s)) if s == PARENT => true,
            Some(other) => {
                return Err(Error::invalid_attr(
                    "remote_group_id",
                    format!("'{}' is not '{PARENT}' or null", show(&other)),
                ))
            }
        };
        map.insert("security_group_id".into(), json!(TEMPLATE_GROUP));
        if remote_parent {
            map.insert("remote_group_id".into(), json!(TEMPLATE_GROUP));
        }
        let rule = SecurityGroupRule::parse_create(
            json!({ "security_group_rule": map }),
            caller,
            meta.id.clone(),
            &meta.created_at,
        )?;
        Ok(DefaultRule {
            meta,
            direction: rule.direction,
            ethertype: rule.ethertype,
            protocol: rule.protocol,
            port_range_min: rule.port_range_min,
            port_range_max: rule.port_range_max,
            remote_ip_prefix: rule.remote_ip_prefix,
            remote_address_group_id: rule.remote_address_group_id,
            remote_parent,
            used_in_default_sg,
            used_in_non_default_sg,
        })
    }

    /// Neutron's template: egress anywhere (both families) for every group, ingress from the
    /// group itself (both families) for default groups.
    pub fn builtin(ids: [String; 4], project_id: &str, now: &str) -> Vec<DefaultRule> {
        let [a, b, c, d] = ids;
        [
            (a, Direction::Egress, IpVersion::V4),
            (b, Direction::Egress, IpVersion::V6),
            (c, Direction::Ingress, IpVersion::V4),
            (d, Direction::Ingress, IpVersion::V6),
        ]
        .into_iter()
        .map(|(id, direction, ethertype)| DefaultRule {
            meta: Meta::new(id, project_id.to_owned(), now),
            direction,
            ethertype,
            protocol: None,
            port_range_min: None,
            port_range_max: None,
            remote_ip_prefix: None,
            remote_parent: direction == Direction::Ingress,
            remote_address_group_id: None,
            used_in_default_sg: true,
            used_in_non_default_sg: direction == Direction::Egress,
        })
        .collect()
    }

    /// This template rule as a rule of `group`, if it applies to that kind of group.
    pub fn instantiate(
        &self,
        group: &SecurityGroup,
        id: String,
        now: &str,
    ) -> Option<SecurityGroupRule> {
        let applies = if group.is_default {
            self.used_in_default_sg
        } else {
            self.used_in_non_default_sg
        };
        applies.then(|| self.as_rule(group, id, now))
    }

    fn as_rule(&self, group: &SecurityGroup, id: String, now: &str) -> SecurityGroupRule {
        SecurityGroupRule {
            meta: Meta::new(id, group.meta.project_id.clone(), now),
            security_group_id: group.meta.id.clone(),
            direction: self.direction,
            ethertype: self.ethertype,
            protocol: self.protocol.clone(),
            port_range_min: self.port_range_min,
            port_range_max: self.port_range_max,
            remote_ip_prefix: self.remote_ip_prefix.clone(),
            remote_group_id: self.remote_parent.then(|| group.meta.id.clone()),
            remote_address_group_id: self.remote_address_group_id.clone(),
            in_default_group: group.is_default,
        }
    }

    /// Whether two template rules match the same traffic for the same kinds of group
    /// (`DuplicateDefaultSgRule`).
    pub fn same_rule(&self, other: &DefaultRule) -> bool {
        let group = SecurityGroup::default_for("", TEMPLATE_GROUP.to_owned(), "");
        self.used_in_default_sg == other.used_in_default_sg
            && self.used_in_non_default_sg == other.used_in_non_default_sg
            && self
                .as_rule(&group, String::new(), "")
                .same_rule(&other.as_rule(&group, String::new(), ""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SG: &str = "11111111-2222-3333-4444-555555555555";

    fn user() -> Caller {
        Caller::member("p")
    }
    fn rule(extra: Value) -> Result<SecurityGroupRule> {
        let mut body = json!({"security_group_id": SG, "direction": "ingress"});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        SecurityGroupRule::parse_create(
            json!({"security_group_rule": body}),
            &user(),
            "r".into(),
            "t",
        )
    }

    #[test]
    fn defaults() {
        let g = SecurityGroup::default_for("p", "g".into(), "t");
        let template = DefaultRule::builtin(["a", "b", "c", "d"].map(String::from), "p", "t");
        let all: Vec<SecurityGroupRule> = template
            .iter()
            .filter_map(|t| t.instantiate(&g, format!("r-{}", t.meta.id), "t"))
            .collect();
        assert_eq!(
            all.len(),
            4,
            "a default group takes the whole builtin template"
        );
        let ingress: Vec<&SecurityGroupRule> = all
            .iter()
            .filter(|r| r.direction == Direction::Ingress)
            .collect();
        assert_eq!(ingress[1].remote_group_id.as_deref(), Some("g"));
        assert_eq!(ingress[1].ethertype, IpVersion::V6);
        let custom = SecurityGroup {
            is_default: false,
            ..g.clone()
        };
        assert_eq!(
            template
                .iter()
                .filter_map(|t| t.instantiate(&custom, "x".into(), "t"))
                .count(),
            2,
            "other groups take the egress rules only"
        );
        let wire = g
            .clone()
            .with_rules(all)
            .render(crate::resource::Viewer::ADMIN);
        assert_eq!(wire["security_group_rules"].as_array().unwrap().len(), 4);
    }

    #[test]
    fn validation() {
        assert!(
            rule(json!({"protocol": "tcp", "port_range_min": 22, "port_range_max": 22})).is_ok()
        );
        assert!(
            rule(json!({"protocol": "tcp", "port_range_min": 23, "port_range_max": 22})).is_err()
        );
        assert!(
            rule(json!({"port_range_min": 22})).is_err(),
            "ports need a protocol"
        );
        assert!(
            rule(json!({"protocol": "icmp", "port_range_min": 8, "port_range_max": 0})).is_ok()
        );
        assert!(rule(json!({"protocol": "icmp", "port_range_min": 300})).is_err());
        assert!(
            rule(json!({"protocol": "gre", "port_range_min": 1, "port_range_max": 2})).is_err()
        );
        assert!(rule(json!({"protocol": "bogus"})).is_err());
        assert!(rule(json!({"protocol": 6})).is_ok());
        assert!(
            rule(json!({"remote_ip_prefix": "2001:db8::/64"})).is_err(),
            "ethertype mismatch"
        );
        assert!(rule(json!({"remote_ip_prefix": "2001:db8::/64", "ethertype": "IPv6"})).is_ok());
        assert!(rule(json!({"remote_ip_prefix": "10.0.0.0/8", "remote_group_id": SG})).is_err());
        assert!(rule(json!({"direction": "sideways"})).is_err());
    }

    #[test]
    fn duplicates() {
        let a =
            rule(json!({"protocol": "tcp", "port_range_min": 80, "port_range_max": 80})).unwrap();
        let b = rule(json!({"protocol": "6", "port_range_min": 80, "port_range_max": 80, "description": "x"})).unwrap();
        assert!(a.same_rule(&b));
        let c =
            rule(json!({"protocol": "tcp", "port_range_min": 81, "port_range_max": 81})).unwrap();
        assert!(!a.same_rule(&c));
        let any = rule(json!({})).unwrap();
        let zero = rule(json!({"remote_ip_prefix": "0.0.0.0/0"})).unwrap();
        assert!(any.same_rule(&zero));
    }
}
