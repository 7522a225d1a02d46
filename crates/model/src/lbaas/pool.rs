//! A pool: members and how connections are spread over them.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{admin_state, id_list, invalid_option, online, unsupported, Protocol, ACTIVE};
use crate::error::{Error, Result};
use crate::input::{as_uuid, Input, Method};
use crate::meta::Meta;
use crate::resource::{attr, Api, Definition, Rights};

/// How long a client sticks to its member under `SOURCE_IP` persistence when the body does
/// not say (Octavia's default `persistence_timeout`), seconds.
pub const DEFAULT_PERSISTENCE_TIMEOUT: u32 = 360;

/// The `pools` resource.
pub static DEFINITION: Definition<Pool> = Definition {
    collection: "pools",
    singular: "pool",
    plural: "pools",
    fault: "Pool",
    named: true,
    tagged: true,
    description: Some(Rights::ALL),
    updatable: true,
    api: Api::Octavia,
    attributes: &[
        attr("provisioning_status", Rights::READ, |p, _| {
            Some(json!(p.provisioning_status))
        }),
        attr("operating_status", Rights::READ, |p, _| {
            Some(json!(online(p.admin_state_up)))
        }),
        attr("admin_state_up", Rights::ALL, |p, _| {
            Some(json!(p.admin_state_up))
        }),
        attr("protocol", Rights::CREATE_QUERY, |p, _| {
            Some(json!(p.protocol.as_str()))
        }),
        attr("lb_algorithm", Rights::ALL, |p, _| {
            Some(json!(p.lb_algorithm.as_str()))
        }),
        attr(
            "session_persistence",
            Rights::CREATE.with(Rights::UPDATE),
            |p, _| {
                Some(match &p.session_persistence {
                    None => Value::Null,
                    Some(s) => json!({"type": "SOURCE_IP", "cookie_name": null,
                                  "persistence_timeout": s.timeout,
                                  "persistence_granularity": null}),
                })
            },
        ),
        attr(
            "loadbalancer_id",
            Rights::CREATE.with(Rights::FILTER_ONLY),
            |p, _| Some(json!(p.loadbalancer_id)),
        ),
        attr(
            "listener_id",
            Rights::CREATE.with(Rights::HIDDEN),
            |p, _| Some(json!(p.listeners.first())),
        ),
        attr("loadbalancers", Rights::READ, |p, _| {
            Some(id_list(std::slice::from_ref(&p.loadbalancer_id)))
        }),
        attr("listeners", Rights::READ, |p, _| {
            Some(id_list(&p.listeners))
        }),
        attr("members", Rights::READ, |p, _| Some(id_list(&p.members))),
        attr("healthmonitor_id", Rights::READ, |p, _| {
            Some(json!(p.healthmonitor_id))
        }),
        attr(
            "tls_enabled",
            Rights::CREATE.with(Rights::UPDATE),
            |_, _| Some(json!(false)),
        ),
        attr(
            "tls_container_ref",
            Rights::CREATE.with(Rights::UPDATE),
            |_, _| Some(Value::Null),
        ),
        attr(
            "ca_tls_container_ref",
            Rights::CREATE.with(Rights::UPDATE),
            |_, _| Some(Value::Null),
        ),
    ],
};

/// How a pool picks a member for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Algorithm {
    /// In turn, by weight.
    RoundRobin,
    /// By a hash of the client's address.
    SourceIp,
    /// By a hash of the client's address and port.
    SourceIpPort,
}

impl Algorithm {
    /// Octavia's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "ROUND_ROBIN",
            Algorithm::SourceIp => "SOURCE_IP",
            Algorithm::SourceIpPort => "SOURCE_IP_PORT",
        }
    }

    fn parse(value: &Value) -> Result<Algorithm> {
        match value.as_str().unwrap_or_default() {
            "ROUND_ROBIN" => Ok(Algorithm::RoundRobin),
            "SOURCE_IP" => Ok(Algorithm::SourceIp),
            "SOURCE_IP_PORT" => Ok(Algorithm::SourceIpPort),
            "LEAST_CONNECTIONS" => Err(unsupported(
                "lb_algorithm LEAST_CONNECTIONS (the kernel's choice is stateless per packet)",
            )),
            _ => Err(invalid_option(value, "lb_algorithm")),
        }
    }
}

/// `session_persistence` of type `SOURCE_IP`: a client's new connections go to the member its
/// last one went to, for `timeout` seconds after the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persistence {
    /// Seconds.
    pub timeout: u32,
}

fn read_persistence(value: Value) -> Result<Option<Persistence>> {
    let obj = match value {
        Value::Null => return Ok(None),
        Value::Object(obj) => obj,
        other => return Err(invalid_option(&other, "session_persistence")),
    };
    match obj.get("type").and_then(Value::as_str) {
        Some("SOURCE_IP") => {}
        Some(t @ ("HTTP_COOKIE" | "APP_COOKIE")) => {
            return Err(unsupported(&format!("session_persistence type {t}")))
        }
        _ => {
            return Err(invalid_option(
                obj.get("type").unwrap_or(&Value::Null),
                "session_persistence type",
            ))
        }
    }
    if obj.get("cookie_name").is_some_and(|c| !c.is_null()) {
        return Err(Error::fault(
            "ValidationException",
            400,
            "Validation failure: Field \"cookie_name\" can only be specified with session_persistence type \"APP_COOKIE\".",
        ));
    }
    let timeout = match obj.get("persistence_timeout") {
        None | Some(Value::Null) => DEFAULT_PERSISTENCE_TIMEOUT,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=u64::from(u32::MAX)).contains(&n) => n as u32,
            _ => return Err(invalid_option(v, "persistence_timeout")),
        },
    };
    Ok(Some(Persistence { timeout }))
}

/// A stored pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    /// Standard attributes.
    pub meta: Meta,
    /// Its load balancer.
    pub loadbalancer_id: String,
    /// Listeners whose default pool it is.
    pub listeners: Vec<String>,
    /// `admin_state_up`.
    pub admin_state_up: bool,
    /// `provisioning_status`: what the nodes have applied, computed on each read (never stored).
    #[serde(skip)]
    pub provisioning_status: String,
    /// Its protocol (its listeners').
    pub protocol: Protocol,
    /// `lb_algorithm`.
    pub lb_algorithm: Algorithm,
    /// `session_persistence`.
    pub session_persistence: Option<Persistence>,
    /// Its members' ids.
    pub members: Vec<String>,
    /// Its health monitor.
    pub healthmonitor_id: Option<String>,
}

crate::resource!(Pool, DEFINITION);

/// A pool create body, read: the pool and the listener it is to serve, if any.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    /// The pool (its `loadbalancer_id` empty when only `listener_id` was given).
    pub pool: Pool,
    /// `listener_id`.
    pub listener_id: Option<String>,
}

impl Pool {
    /// Reads a create body whose standard attributes are read into `meta`.
    pub fn read_create(meta: Meta, input: &mut Input) -> Result<CreateRequest> {
        let uuid = |input: &mut Input, key: &str| -> Result<Option<String>> {
            input.take(key).map(|v| as_uuid(key, &v)).transpose()
        };
        let loadbalancer_id = uuid(input, "loadbalancer_id")?;
        let listener_id = uuid(input, "listener_id")?;
        if loadbalancer_id.is_none() && listener_id.is_none() {
            return Err(super::validation(
                "loadbalancer_id or listener_id must be specified.",
            ));
        }
        let protocol = Protocol::parse(&Input::required("protocol", input.take("protocol"))?)?;
        let lb_algorithm = Algorithm::parse(&Input::required(
            "lb_algorithm",
            input.take("lb_algorithm"),
        )?)?;
        let mut pool = Pool {
            meta,
            loadbalancer_id: loadbalancer_id.unwrap_or_default(),
            listeners: Vec::new(),
            admin_state_up: true,
            provisioning_status: ACTIVE.to_owned(),
            protocol,
            lb_algorithm,
            session_persistence: None,
            members: Vec::new(),
            healthmonitor_id: None,
        };
        pool.apply(input)?;
        Ok(CreateRequest { pool, listener_id })
    }

    /// Applies the changeable attributes of a body (create or update).
    pub fn apply(&mut self, input: &mut Input) -> Result<()> {
        for key in ["tls_container_ref", "ca_tls_container_ref"] {
            if input.take(key).is_some_and(|v| !v.is_null()) {
                return Err(unsupported(key));
            }
        }
        if input.take("tls_enabled").is_some_and(|v| v == json!(true)) {
            return Err(unsupported("tls_enabled"));
        }
        self.admin_state_up = admin_state(input, self.admin_state_up)?;
        if let Some(v) = input.take("lb_algorithm") {
            self.lb_algorithm = Algorithm::parse(&v)?;
        }
        if let Some(v) = input.take("session_persistence") {
            self.session_persistence = read_persistence(v)?;
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

    fn read(body: Value) -> Result<CreateRequest> {
        let mut input = input(json!({ "pool": body }), Method::Create)?;
        Pool::read_create(Meta::new("p".into(), "p".into(), "t"), &mut input)
    }

    #[test]
    fn reads_algorithms_and_persistence() {
        let l = "5e2fb5f7-6cb9-4f6a-9d8e-0f8a4f1c2b3d";
        let r = read(
            json!({"listener_id": l, "protocol": "TCP", "lb_algorithm": "SOURCE_IP_PORT",
                            "session_persistence": {"type": "SOURCE_IP"}}),
        )
        .unwrap();
        assert_eq!(r.pool.lb_algorithm, Algorithm::SourceIpPort);
        assert_eq!(
            r.pool.session_persistence,
            Some(Persistence { timeout: 360 })
        );
        assert_eq!(r.listener_id.as_deref(), Some(l));
        let lc =
            read(json!({"listener_id": l, "protocol": "TCP", "lb_algorithm": "LEAST_CONNECTIONS"}));
        assert_eq!(lc.unwrap_err().status(), 501);
        let cookie = read(
            json!({"listener_id": l, "protocol": "TCP", "lb_algorithm": "ROUND_ROBIN",
                                 "session_persistence": {"type": "HTTP_COOKIE"}}),
        );
        assert_eq!(cookie.unwrap_err().status(), 501);
        let none = read(json!({"protocol": "TCP", "lb_algorithm": "ROUND_ROBIN"}));
        assert_eq!(none.unwrap_err().type_name(), "ValidationException");
    }
}
