//! A listener: a protocol and port on its load balancer's VIP, with the pool it forwards to.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{admin_state, bounded, id_list, online, unsupported, Protocol, ACTIVE};
use crate::addr::Cidr;
use crate::error::{Error, Result};
use crate::input::{as_string, as_uuid, show, Input, Method};
use crate::meta::Meta;
use crate::resource::{attr, Api, Definition, Rights};

/// Octavia's default timeouts, milliseconds.
pub const DEFAULT_TIMEOUT_DATA: i64 = 50_000;
/// Octavia's default member connect timeout, milliseconds.
pub const DEFAULT_TIMEOUT_CONNECT: i64 = 5_000;
/// Longest timeout Octavia accepts (24 hours), milliseconds.
pub const MAX_TIMEOUT: i64 = 86_400_000;

/// The `listeners` resource.
pub static DEFINITION: Definition<Listener> = Definition {
    collection: "listeners",
    singular: "listener",
    plural: "listeners",
    fault: "Listener",
    named: true,
    tagged: true,
    description: Some(Rights::ALL),
    updatable: true,
    api: Api::Octavia,
    attributes: &[
        attr("provisioning_status", Rights::READ, |l, _| {
            Some(json!(l.provisioning_status))
        }),
        attr("operating_status", Rights::READ, |l, _| {
            Some(json!(online(l.admin_state_up)))
        }),
        attr("admin_state_up", Rights::ALL, |l, _| {
            Some(json!(l.admin_state_up))
        }),
        attr("protocol", Rights::CREATE_QUERY, |l, _| {
            Some(json!(l.protocol.as_str()))
        }),
        attr("protocol_port", Rights::CREATE_QUERY, |l, _| {
            Some(json!(l.protocol_port))
        }),
        attr("connection_limit", Rights::ALL, |l, _| {
            Some(json!(l.connection_limit))
        }),
        attr("default_pool_id", Rights::ALL, |l, _| {
            Some(json!(l.default_pool_id))
        }),
        attr(
            "loadbalancer_id",
            Rights::CREATE.with(Rights::FILTER_ONLY),
            |l, _| Some(json!(l.loadbalancer_id)),
        ),
        attr("loadbalancers", Rights::READ, |l, _| {
            Some(id_list(std::slice::from_ref(&l.loadbalancer_id)))
        }),
        attr(
            "allowed_cidrs",
            Rights::CREATE.with(Rights::UPDATE),
            |l, _| {
                Some(if l.allowed_cidrs.is_empty() {
                    Value::Null
                } else {
                    json!(l
                        .allowed_cidrs
                        .iter()
                        .map(Cidr::to_string)
                        .collect::<Vec<_>>())
                })
            },
        ),
        attr("timeout_client_data", Rights::ALL, |l, _| {
            Some(json!(l.timeout_client_data))
        }),
        attr("timeout_member_connect", Rights::ALL, |l, _| {
            Some(json!(l.timeout_member_connect))
        }),
        attr("timeout_member_data", Rights::ALL, |l, _| {
            Some(json!(l.timeout_member_data))
        }),
        attr("timeout_tcp_inspect", Rights::ALL, |l, _| {
            Some(json!(l.timeout_tcp_inspect))
        }),
        attr("l7policies", Rights::CREATE, |_, _| Some(json!([]))),
        attr(
            "insert_headers",
            Rights::CREATE.with(Rights::UPDATE),
            |_, _| Some(json!({})),
        ),
        attr(
            "default_tls_container_ref",
            Rights::CREATE.with(Rights::UPDATE),
            |_, _| Some(Value::Null),
        ),
        attr(
            "sni_container_refs",
            Rights::CREATE.with(Rights::UPDATE),
            |_, _| Some(json!([])),
        ),
        attr(
            "client_authentication",
            Rights::CREATE.with(Rights::UPDATE),
            |_, _| Some(json!("NONE")),
        ),
    ],
};

/// A stored listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listener {
    /// Standard attributes.
    pub meta: Meta,
    /// Its load balancer.
    pub loadbalancer_id: String,
    /// `admin_state_up`: down, it forwards nothing.
    pub admin_state_up: bool,
    /// `provisioning_status`: what the nodes have applied, computed on each read (never stored).
    #[serde(skip)]
    pub provisioning_status: String,
    /// TCP, UDP or SCTP.
    pub protocol: Protocol,
    /// The VIP port it listens on.
    pub protocol_port: u16,
    /// Most concurrent connections (per node: each node balances its own clients), -1 for
    /// no limit.
    pub connection_limit: i64,
    /// The pool it forwards to.
    pub default_pool_id: Option<String>,
    /// Clients allowed to connect (none: everyone).
    pub allowed_cidrs: Vec<Cidr>,
    /// `timeout_client_data`, ms.
    pub timeout_client_data: i64,
    /// `timeout_member_connect`, ms.
    pub timeout_member_connect: i64,
    /// `timeout_member_data`, ms.
    pub timeout_member_data: i64,
    /// `timeout_tcp_inspect`, ms.
    pub timeout_tcp_inspect: i64,
}

crate::resource!(Listener, DEFINITION);

/// Refuses the TLS and HTTP options of a body (they need a proxy).
fn refuse_proxy_options(input: &mut Input) -> Result<()> {
    for key in ["default_tls_container_ref", "client_authentication"] {
        match input.take(key) {
            Some(Value::Null) | None => {}
            Some(Value::String(s)) if s == "NONE" => {}
            Some(_) => return Err(unsupported(key)),
        }
    }
    for key in ["sni_container_refs", "l7policies"] {
        if input
            .take(key)
            .is_some_and(|v| v != json!([]) && !v.is_null())
        {
            return Err(unsupported(key));
        }
    }
    if input
        .take("insert_headers")
        .is_some_and(|v| v != json!({}) && !v.is_null())
    {
        return Err(unsupported("insert_headers"));
    }
    Ok(())
}

fn read_cidrs(value: Value) -> Result<Vec<Cidr>> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => {
            let mut cidrs = items
                .iter()
                .map(|v| {
                    let s = as_string("allowed_cidrs", v, 64)?;
                    Cidr::parse_lenient(&s).ok_or_else(|| {
                        Error::fault(
                            "InvalidInput",
                            400,
                            format!("Invalid input for field/attribute allowed_cidrs. Value: '{s}'. Value should be IPv4 or IPv6 CIDR format"),
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            cidrs.sort_by_key(|c| (c.version().number(), c.first(), c.prefix));
            cidrs.dedup();
            Ok(cidrs)
        }
        other => Err(Error::fault(
            "InvalidInput",
            400,
            format!(
                "Invalid input for field/attribute allowed_cidrs. Value: '{}'. Value should be a list",
                show(&other)
            ),
        )),
    }
}

impl Listener {
    /// Reads a create body whose standard attributes are read into `meta`.
    pub fn from_input(meta: Meta, input: &mut Input) -> Result<Listener> {
        refuse_proxy_options(input)?;
        let loadbalancer_id = Input::required("loadbalancer_id", input.take("loadbalancer_id"))
            .and_then(|v| as_uuid("loadbalancer_id", &v))?;
        let protocol = Protocol::parse(&Input::required("protocol", input.take("protocol"))?)?;
        let protocol_port = super::required_port(input, "protocol_port")?;
        let mut listener = Listener {
            meta,
            loadbalancer_id,
            admin_state_up: true,
            provisioning_status: ACTIVE.to_owned(),
            protocol,
            protocol_port,
            connection_limit: -1,
            default_pool_id: None,
            allowed_cidrs: Vec::new(),
            timeout_client_data: DEFAULT_TIMEOUT_DATA,
            timeout_member_connect: DEFAULT_TIMEOUT_CONNECT,
            timeout_member_data: DEFAULT_TIMEOUT_DATA,
            timeout_tcp_inspect: 0,
        };
        listener.apply(input)?;
        Ok(listener)
    }

    /// Applies the changeable attributes of a body (create or update).
    pub fn apply(&mut self, input: &mut Input) -> Result<()> {
        refuse_proxy_options(input)?;
        self.admin_state_up = admin_state(input, self.admin_state_up)?;
        if let Some(n) = bounded(input, "connection_limit", -1, i64::from(i32::MAX))? {
            self.connection_limit = n;
        }
        if let Some(v) = input.take("default_pool_id") {
            self.default_pool_id = match v {
                Value::Null => None,
                v => Some(as_uuid("default_pool_id", &v)?),
            };
        }
        if let Some(v) = input.take("allowed_cidrs") {
            self.allowed_cidrs = read_cidrs(v)?;
        }
        for (key, slot) in [
            ("timeout_client_data", &mut self.timeout_client_data),
            ("timeout_member_connect", &mut self.timeout_member_connect),
            ("timeout_member_data", &mut self.timeout_member_data),
            ("timeout_tcp_inspect", &mut self.timeout_tcp_inspect),
        ] {
            if let Some(n) = bounded(input, key, 0, MAX_TIMEOUT)? {
                *slot = n;
            }
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

    fn read(body: Value) -> Result<Listener> {
        let mut input = input(json!({ "listener": body }), Method::Create)?;
        Listener::from_input(Meta::new("l".into(), "p".into(), "t"), &mut input)
    }

    #[test]
    fn reads_octavia_listener_bodies() {
        let lb = "5e2fb5f7-6cb9-4f6a-9d8e-0f8a4f1c2b3d";
        let l = read(
            json!({"loadbalancer_id": lb, "protocol": "TCP", "protocol_port": 80,
                            "allowed_cidrs": ["10.0.0.0/8", "192.168.1.7"], "connection_limit": 5}),
        )
        .unwrap();
        assert_eq!(l.protocol_port, 80);
        assert_eq!(l.allowed_cidrs.len(), 2);
        assert_eq!(l.connection_limit, 5);
        let http = read(json!({"loadbalancer_id": lb, "protocol": "HTTP", "protocol_port": 80}));
        assert_eq!(http.unwrap_err().status(), 501);
        let bad = read(json!({"loadbalancer_id": lb, "protocol": "TCP", "protocol_port": 0}));
        assert_eq!(bad.unwrap_err().status(), 400);
        let bad = read(json!({"loadbalancer_id": lb, "protocol": "FTP", "protocol_port": 21}));
        assert_eq!(bad.unwrap_err().type_name(), "InvalidOption");
        let tls = read(
            json!({"loadbalancer_id": lb, "protocol": "TCP", "protocol_port": 1,
                             "default_tls_container_ref": "x"}),
        );
        assert_eq!(tls.unwrap_err().status(), 501);
    }
}
