//! A health monitor: how the nodes hosting a pool's members probe them.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{admin_state, bounded, id_list, invalid_option, online, unsupported, ACTIVE};
use crate::error::{Error, Result};
use crate::input::{as_string, as_uuid, Input, Method};
use crate::meta::Meta;
use crate::resource::{attr, Api, Definition, Rights};

/// The `healthmonitors` resource.
pub static DEFINITION: Definition<HealthMonitor> = Definition {
    collection: "healthmonitors",
    singular: "healthmonitor",
    plural: "healthmonitors",
    fault: "Health Monitor",
    named: true,
    tagged: true,
    description: None,
    updatable: true,
    api: Api::Octavia,
    attributes: &[
        attr("provisioning_status", Rights::READ, |h, _| {
            Some(json!(h.provisioning_status))
        }),
        attr("operating_status", Rights::READ, |h, _| {
            Some(json!(online(h.admin_state_up)))
        }),
        attr("admin_state_up", Rights::ALL, |h, _| {
            Some(json!(h.admin_state_up))
        }),
        attr("type", Rights::CREATE_QUERY, |h, _| {
            Some(json!(h.kind.as_str()))
        }),
        attr("delay", Rights::ALL, |h, _| Some(json!(h.delay))),
        attr("timeout", Rights::ALL, |h, _| Some(json!(h.timeout))),
        attr("max_retries", Rights::ALL, |h, _| {
            Some(json!(h.max_retries))
        }),
        attr("max_retries_down", Rights::ALL, |h, _| {
            Some(json!(h.max_retries_down))
        }),
        attr("http_method", Rights::ALL, |h, _| {
            Some(json!(h.http().map(|_| "GET")))
        }),
        attr("url_path", Rights::ALL, |h, _| {
            Some(json!(h.http().map(|x| &x.url_path)))
        }),
        attr("expected_codes", Rights::ALL, |h, _| {
            Some(json!(h.http().map(|x| &x.expected_codes)))
        }),
        attr("http_version", Rights::ALL, |h, _| {
            Some(json!(h.http().map(|_| 1.0)))
        }),
        attr("domain_name", Rights::ALL, |_, _| Some(Value::Null)),
        attr(
            "pool_id",
            Rights::CREATE.with(Rights::FILTER_ONLY),
            |h, _| Some(json!(h.pool_id)),
        ),
        attr("pools", Rights::READ, |h, _| {
            Some(id_list(std::slice::from_ref(&h.pool_id)))
        }),
    ],
};

/// What a probe does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING-KEBAB-CASE")]
pub enum Kind {
    /// ICMP echo.
    Ping,
    /// A TCP connection opened and closed.
    Tcp,
    /// A UDP datagram not answered by ICMP port unreachable.
    UdpConnect,
    /// An HTTP GET answered with an expected code.
    Http,
}

impl Kind {
    /// Octavia's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ping => "PING",
            Kind::Tcp => "TCP",
            Kind::UdpConnect => "UDP-CONNECT",
            Kind::Http => "HTTP",
        }
    }

    fn parse(value: &Value) -> Result<Kind> {
        match value.as_str().unwrap_or_default() {
            "PING" => Ok(Kind::Ping),
            "TCP" => Ok(Kind::Tcp),
            "UDP-CONNECT" => Ok(Kind::UdpConnect),
            "HTTP" => Ok(Kind::Http),
            t @ ("HTTPS" | "TLS-HELLO" | "SCTP") => {
                Err(unsupported(&format!("health monitor type {t}")))
            }
            _ => Err(invalid_option(value, "type")),
        }
    }
}

/// An HTTP monitor's request and what it accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpCheck {
    /// `url_path`.
    pub url_path: String,
    /// `expected_codes`: `200`, `200,202`, `200-204`.
    pub expected_codes: String,
}

impl HttpCheck {
    /// Whether `code` is one of the expected ones.
    pub fn expects(&self, code: u16) -> bool {
        expects(&self.expected_codes, code)
    }
}

/// Whether the HTTP status `code` is among `expected` (`200`, `200,202`, `200-204`).
pub fn expects(expected: &str, code: u16) -> bool {
    expected.split(',').any(|part| match part.split_once('-') {
        Some((a, b)) => matches!((a.trim().parse::<u16>(), b.trim().parse::<u16>()),
                                 (Ok(a), Ok(b)) if (a..=b).contains(&code)),
        None => part.trim().parse::<u16>() == Ok(code),
    })
}

fn valid_codes(codes: &str) -> bool {
    let code = |s: &str| {
        s.trim()
            .parse::<u16>()
            .is_ok_and(|c| (100..=599).contains(&c))
    };
    !codes.is_empty()
        && codes.split(',').all(|part| match part.split_once('-') {
            Some((a, b)) => code(a) && code(b),
            None => code(part),
        })
}

/// A stored health monitor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthMonitor {
    /// Standard attributes.
    pub meta: Meta,
    /// Its pool.
    pub pool_id: String,
    /// `admin_state_up`: down, members are not probed (and count as up).
    pub admin_state_up: bool,
    /// `provisioning_status`: what the nodes have applied, computed on each read (never stored).
    #[serde(skip)]
    pub provisioning_status: String,
    /// `type`.
    pub kind: Kind,
    /// Seconds between probes.
    pub delay: u32,
    /// Seconds a probe may take.
    pub timeout: u32,
    /// Successes in a row that bring a member up.
    pub max_retries: u32,
    /// Failures in a row that take a member down.
    pub max_retries_down: u32,
    /// The HTTP part of an HTTP monitor.
    pub http: Option<HttpCheck>,
}

crate::resource!(HealthMonitor, DEFINITION);

impl HealthMonitor {
    /// The HTTP check of an HTTP monitor.
    pub fn http(&self) -> Option<&HttpCheck> {
        self.http.as_ref()
    }

    /// Reads a create body whose standard attributes are read into `meta`.
    pub fn from_input(meta: Meta, input: &mut Input) -> Result<HealthMonitor> {
        let pool_id = as_uuid(
            "pool_id",
            &Input::required("pool_id", input.take("pool_id"))?,
        )?;
        let kind = Kind::parse(&Input::required("type", input.take("type"))?)?;
        let missing = |key: &str| {
            Error::fault(
                "InvalidInput",
                400,
                format!("Invalid input for field/attribute {key}. Mandatory field missing."),
            )
        };
        for key in ["delay", "timeout", "max_retries"] {
            if !input.has(key) {
                return Err(missing(key));
            }
        }
        let mut monitor = HealthMonitor {
            meta,
            pool_id,
            admin_state_up: true,
            provisioning_status: ACTIVE.to_owned(),
            kind,
            delay: 0,
            timeout: 0,
            max_retries: 0,
            max_retries_down: 3,
            http: (kind == Kind::Http).then(|| HttpCheck {
                url_path: "/".to_owned(),
                expected_codes: "200".to_owned(),
            }),
        };
        monitor.apply(input)?;
        Ok(monitor)
    }

    /// Applies the changeable attributes of a body (create or update).
    pub fn apply(&mut self, input: &mut Input) -> Result<()> {
        self.admin_state_up = admin_state(input, self.admin_state_up)?;
        if let Some(n) = bounded(input, "delay", 1, i64::from(i32::MAX))? {
            self.delay = n as u32;
        }
        if let Some(n) = bounded(input, "timeout", 1, i64::from(i32::MAX))? {
            self.timeout = n as u32;
        }
        if let Some(n) = bounded(input, "max_retries", 1, 10)? {
            self.max_retries = n as u32;
        }
        if let Some(n) = bounded(input, "max_retries_down", 1, 10)? {
            self.max_retries_down = n as u32;
        }
        if self.timeout > self.delay {
            return Err(super::validation(
                "The timeout value must be less than or equal to the delay value.",
            ));
        }
        for key in [
            "http_method",
            "url_path",
            "expected_codes",
            "http_version",
            "domain_name",
        ] {
            let Some(v) = input.take(key) else { continue };
            if v.is_null() {
                continue;
            }
            let Some(http) = self.http.as_mut() else {
                return Err(super::validation(format!(
                    "{key} is only valid for HTTP health monitors"
                )));
            };
            let s = as_string(key, &v, 2048)?;
            match key {
                "http_method" if s != "GET" => {
                    return Err(unsupported(&format!("http_method {s}; probes use GET")))
                }
                "url_path" => {
                    if !s.starts_with('/') || s.chars().any(|c| c.is_control() || c == ' ') {
                        return Err(invalid_option(&v, "url_path"));
                    }
                    http.url_path = s;
                }
                "expected_codes" => {
                    if !valid_codes(&s) {
                        return Err(invalid_option(&v, "expected_codes"));
                    }
                    http.expected_codes = s;
                }
                "http_version" if !matches!(s.as_str(), "1.0" | "1.1") => {
                    return Err(invalid_option(&v, "http_version"))
                }
                "domain_name" => return Err(unsupported("domain_name")),
                _ => {}
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

    fn read(body: Value) -> Result<HealthMonitor> {
        let mut input = input(json!({ "healthmonitor": body }), Method::Create)?;
        HealthMonitor::from_input(Meta::new("h".into(), "p".into(), "t"), &mut input)
    }

    #[test]
    fn reads_monitors_and_expected_codes() {
        let pool = "5e2fb5f7-6cb9-4f6a-9d8e-0f8a4f1c2b3d";
        let h = read(
            json!({"pool_id": pool, "type": "HTTP", "delay": 2, "timeout": 1,
                            "max_retries": 2, "expected_codes": "200-204,301"}),
        )
        .unwrap();
        let http = h.http().unwrap();
        assert!(http.expects(203) && http.expects(301) && !http.expects(404));
        assert_eq!(h.max_retries_down, 3);
        let slow = read(
            json!({"pool_id": pool, "type": "TCP", "delay": 1, "timeout": 2, "max_retries": 1}),
        );
        assert_eq!(slow.unwrap_err().type_name(), "ValidationException");
        let tcp_path = read(
            json!({"pool_id": pool, "type": "TCP", "delay": 1, "timeout": 1,
                                   "max_retries": 1, "url_path": "/x"}),
        );
        assert!(tcp_path.is_err());
        assert!(read(json!({"pool_id": pool, "type": "PING", "delay": 1, "timeout": 1})).is_err());
        let codes = read(
            json!({"pool_id": pool, "type": "HTTP", "delay": 1, "timeout": 1,
                                "max_retries": 1, "expected_codes": "abc"}),
        );
        assert!(codes.is_err());
    }
}
