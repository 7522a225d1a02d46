//! A member: one backend address and port of a pool.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{admin_state, bounded, operating, ACTIVE};
use crate::error::Result;
use crate::input::{as_bool, as_ip, as_uuid, Input, Method};
use crate::meta::Meta;
use crate::resource::{attr, Api, Definition, Rights};

/// The `members` resource (served under `/pools/{pool_id}/members`).
pub static DEFINITION: Definition<Member> = Definition {
    collection: "members",
    singular: "member",
    plural: "members",
    fault: "Member",
    named: true,
    tagged: true,
    description: None,
    updatable: true,
    api: Api::Octavia,
    attributes: &[
        attr("provisioning_status", Rights::READ, |m, _| {
            Some(json!(m.provisioning_status))
        }),
        attr("operating_status", Rights::READ, |m, _| {
            Some(json!(m.shown_status()))
        }),
        attr("admin_state_up", Rights::ALL, |m, _| {
            Some(json!(m.admin_state_up))
        }),
        attr("address", Rights::CREATE_QUERY, |m, _| {
            Some(json!(m.address.to_string()))
        }),
        attr("protocol_port", Rights::CREATE_QUERY, |m, _| {
            Some(json!(m.protocol_port))
        }),
        attr("weight", Rights::ALL, |m, _| Some(json!(m.weight))),
        attr("backup", Rights::ALL, |m, _| Some(json!(m.backup))),
        attr("subnet_id", Rights::CREATE_QUERY, |m, _| {
            Some(json!(m.subnet_id))
        }),
        attr("monitor_address", Rights::ALL, |m, _| {
            Some(json!(m.monitor_address.map(|a| a.to_string())))
        }),
        attr("monitor_port", Rights::ALL, |m, _| {
            Some(json!(m.monitor_port))
        }),
        attr(
            "pool_id",
            Rights::CREATE.with(Rights::FILTER_ONLY),
            |m, _| Some(json!(m.pool_id)),
        ),
        attr("vnic_type", Rights::READ, |_, _| Some(json!("normal"))),
    ],
};

/// A stored member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Standard attributes.
    pub meta: Meta,
    /// Its pool.
    pub pool_id: String,
    /// `admin_state_up`: down, it gets no new connection (open ones finish).
    pub admin_state_up: bool,
    /// `provisioning_status`: what the nodes have applied, computed on each read (never stored).
    #[serde(skip)]
    pub provisioning_status: String,
    /// `operating_status`: `NO_MONITOR` without a health monitor, else what the last probes
    /// found.
    pub operating_status: String,
    /// Its address.
    pub address: IpAddr,
    /// Its port.
    pub protocol_port: u16,
    /// Its share of new connections relative to the pool's other members (0: none).
    pub weight: u16,
    /// Used only when no other member is up.
    pub backup: bool,
    /// The subnet its address is on, if given.
    pub subnet_id: Option<String>,
    /// Where health probes go instead of `address`.
    pub monitor_address: Option<IpAddr>,
    /// Where health probes go instead of `protocol_port`.
    pub monitor_port: Option<u16>,
}

crate::resource!(Member, DEFINITION);

impl Member {
    /// Reads a create body whose standard attributes are read into `meta` (the API puts the
    /// `pool_id` of the URL into it).
    pub fn from_input(meta: Meta, input: &mut Input) -> Result<Member> {
        let pool_id = as_uuid(
            "pool_id",
            &Input::required("pool_id", input.take("pool_id"))?,
        )?;
        let address = as_ip(
            "address",
            &Input::required("address", input.take("address"))?,
        )?;
        let protocol_port = super::required_port(input, "protocol_port")?;
        let subnet_id = input
            .take("subnet_id")
            .filter(|v| !v.is_null())
            .map(|v| as_uuid("subnet_id", &v))
            .transpose()?;
        let mut member = Member {
            meta,
            pool_id,
            admin_state_up: true,
            provisioning_status: ACTIVE.to_owned(),
            operating_status: operating::NO_MONITOR.to_owned(),
            address,
            protocol_port,
            weight: 1,
            backup: false,
            subnet_id,
            monitor_address: None,
            monitor_port: None,
        };
        member.apply(input)?;
        Ok(member)
    }

    /// Its `operating_status` as shown: OFFLINE while disabled, else what the probes found.
    pub fn shown_status(&self) -> &str {
        if self.admin_state_up {
            &self.operating_status
        } else {
            operating::OFFLINE
        }
    }

    /// Applies the changeable attributes of a body (create or update).
    pub fn apply(&mut self, input: &mut Input) -> Result<()> {
        self.admin_state_up = admin_state(input, self.admin_state_up)?;
        if let Some(w) = bounded(input, "weight", 0, 256)? {
            self.weight = w as u16;
        }
        if let Some(v) = input.take("backup") {
            self.backup = as_bool("backup", &v)?;
        }
        if let Some(v) = input.take("monitor_address") {
            self.monitor_address = match v {
                Value::Null => None,
                v => Some(as_ip("monitor_address", &v)?),
            };
        }
        if input.has("monitor_port") {
            self.monitor_port = match input.take("monitor_port") {
                Some(Value::Null) | None => None,
                Some(v) => {
                    let mut one = Input::from_map(
                        serde_json::Map::from_iter([("monitor_port".to_owned(), v)]),
                        Method::Create,
                        &["monitor_port"].as_slice(),
                    )?;
                    bounded(&mut one, "monitor_port", 1, 65_535)?.map(|p| p as u16)
                }
            };
        }
        Ok(())
    }
}

/// Polices a create or update body.
pub fn input(body: Value, method: Method) -> Result<Input> {
    Input::for_kind(body, &DEFINITION, method)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(mut body: Value) -> Result<Member> {
        body["pool_id"] = json!("5e2fb5f7-6cb9-4f6a-9d8e-0f8a4f1c2b3d");
        let mut input = input(json!({ "member": body }), Method::Create)?;
        Member::from_input(Meta::new("m".into(), "p".into(), "t"), &mut input)
    }

    #[test]
    fn reads_member_bodies() {
        let m = read(
            json!({"address": "10.0.0.5", "protocol_port": 8080, "weight": 2,
                            "backup": true, "monitor_port": 9000}),
        )
        .unwrap();
        assert_eq!((m.weight, m.backup, m.monitor_port), (2, true, Some(9000)));
        assert_eq!(m.operating_status, "NO_MONITOR");
        let mut off = m.clone();
        off.admin_state_up = false;
        assert_eq!(off.shown_status(), "OFFLINE");
        assert!(
            read(json!({"address": "10.0.0.5", "protocol_port": 8080, "weight": 257})).is_err()
        );
        assert!(read(json!({"address": "nope", "protocol_port": 8080})).is_err());
        assert!(read(json!({"address": "10.0.0.5"})).is_err());
        assert!(
            read(json!({"address": "10.0.0.5", "protocol_port": 1, "monitor_port": 0})).is_err()
        );
    }
}
