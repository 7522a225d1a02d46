//! The CNI protocol as Isthmus speaks it: what a runtime hands the `isthmus-cni` plugin (env +
//! network configuration on stdin), the one-line JSON request the plugin forwards to the node
//! agent's unix socket, the agent's answer, and the spec's well-known error codes. Shared by
//! the plugin binary and the agent so both sides read the same definitions.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

/// CNI versions this plugin speaks (`VERSION` lists them).
pub const SUPPORTED_VERSIONS: &[&str] = &["1.0.0", "1.1.0"];
/// The newest supported version.
pub const LATEST_VERSION: &str = "1.1.0";
/// Where a VM's node agent serves the nested CNI (in the VM's network, like the metadata
/// address), unless the configuration's `"nested"` says `"agent"`.
pub const NESTED_AGENT: &str = "169.254.169.254:9697";
/// The nested CNI's port on the metadata address.
pub const NESTED_PORT: u16 = 9697;
/// Where the agent listens unless the network configuration says `"socket"`.
pub const DEFAULT_SOCKET: &str = "/run/isthmus/cni.sock";

/// The spec's well-known error codes.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist (the runtime need not call DEL).
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content.
    pub const DECODE_FAILURE: u32 = 6;
    /// Invalid network configuration.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later (a transient condition, such as the agent restarting).
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// The plugin is not available (cannot serve ADD).
    pub const NOT_AVAILABLE: u32 = 50;
}

/// A CNI error: what the plugin prints on stdout before exiting non-zero.
#[derive(Debug, Clone, PartialEq)]
pub struct CniError {
    /// A well-known (< 100) or plugin-specific code.
    pub code: u32,
    /// Short message.
    pub msg: String,
    /// Longer explanation.
    pub details: String,
}

impl CniError {
    /// An error with a code, message and details.
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The spec's error object, for `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> Value {
        let mut v = json!({"cniVersion": cni_version, "code": self.code, "msg": self.msg});
        if !self.details.is_empty() {
            v["details"] = Value::String(self.details.clone());
        }
        v
    }

    /// Reads an error object (as the agent sends it).
    pub fn from_json(v: &Value) -> CniError {
        CniError {
            code: v
                .get("code")
                .and_then(Value::as_u64)
                .and_then(|c| u32::try_from(c).ok())
                .unwrap_or(999),
            msg: v
                .get("msg")
                .and_then(Value::as_str)
                .unwrap_or("error")
                .to_owned(),
            details: v
                .get("details")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        }
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CNI error {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

/// A CNI command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach a container.
    Del,
    /// Check an attachment.
    Check,
    /// Is the plugin ready for ADD?
    Status,
    /// Remove attachments not in the runtime's valid list.
    Gc,
    /// Report supported versions.
    Version,
}

impl Command {
    /// Parses `CNI_COMMAND`.
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }

    /// Its `CNI_COMMAND` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }
}

/// A validated invocation, as forwarded to the agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The command.
    pub command: Command,
    /// `CNI_CONTAINERID` (empty for STATUS and GC).
    pub container_id: String,
    /// `CNI_NETNS` (may be empty for DEL).
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`, parsed.
    pub args: BTreeMap<String, String>,
    /// The network configuration from stdin.
    pub config: Map<String, Value>,
}

/// The version to answer in: the configuration's when it is one we speak, else the latest.
pub fn answer_version(config: Option<&Map<String, Value>>) -> String {
    config
        .and_then(|c| c.get("cniVersion"))
        .and_then(Value::as_str)
        .filter(|v| SUPPORTED_VERSIONS.contains(v))
        .unwrap_or(LATEST_VERSION)
        .to_owned()
}

/// Parses `CNI_ARGS` (`K=V;K=V`).
pub fn parse_args(raw: &str) -> Result<BTreeMap<String, String>, CniError> {
    let mut args = BTreeMap::new();
    for pair in raw.split(';').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                args.insert(k.to_owned(), v.to_owned());
            }
            _ => {
                return Err(CniError::new(
                    code::INVALID_ENVIRONMENT,
                    "invalid CNI_ARGS",
                    format!("'{pair}' is not KEY=VALUE"),
                ))
            }
        }
    }
    Ok(args)
}

/// Valid interface names: what the kernel accepts (1–15 bytes, no '/', ':' or whitespace).
fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}

/// Container ids become file names in the agent's state: keep them to the spec's characters.
fn valid_container_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

impl Request {
    /// Validates an invocation from its environment (`env` looks a variable up) and stdin.
    /// VERSION needs no configuration and is answered by the plugin itself.
    pub fn from_invocation(
        env: impl Fn(&str) -> Option<String>,
        stdin: &[u8],
    ) -> Result<Request, CniError> {
        let command = env("CNI_COMMAND").unwrap_or_default();
        let command = Command::parse(&command).ok_or_else(|| {
            CniError::new(
                code::INVALID_ENVIRONMENT,
                "invalid CNI_COMMAND",
                format!("'{command}' is not one of ADD, DEL, CHECK, STATUS, GC, VERSION"),
            )
        })?;
        let config: Map<String, Value> = match serde_json::from_slice(stdin) {
            Ok(Value::Object(m)) => m,
            Ok(_) => {
                return Err(CniError::new(
                    code::DECODE_FAILURE,
                    "network configuration is not a JSON object",
                    "",
                ))
            }
            Err(e) => {
                return Err(CniError::new(
                    code::DECODE_FAILURE,
                    "cannot decode the network configuration",
                    e.to_string(),
                ))
            }
        };
        match config.get("cniVersion").and_then(Value::as_str) {
            Some(v) if SUPPORTED_VERSIONS.contains(&v) => {}
            Some(v) => {
                return Err(CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    format!("unsupported cniVersion {v}"),
                    format!("this plugin supports {}", SUPPORTED_VERSIONS.join(", ")),
                ))
            }
            None => {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    "the network configuration has no cniVersion",
                    "",
                ))
            }
        }
        if config
            .get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "the network configuration has no name",
                "",
            ));
        }
        for field in ["network", "project", "socket"] {
            if config.get(field).is_some_and(|v| !v.is_string()) {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    format!("'{field}' must be a string"),
                    "",
                ));
            }
        }
        let needs_container = matches!(command, Command::Add | Command::Del | Command::Check);
        let required = |name: &str| -> Result<String, CniError> {
            env(name).filter(|v| !v.is_empty()).ok_or_else(|| {
                CniError::new(
                    code::INVALID_ENVIRONMENT,
                    format!("{name} is not set"),
                    format!("{} needs {name}", command.as_str()),
                )
            })
        };
        let (container_id, ifname) = if needs_container {
            (required("CNI_CONTAINERID")?, required("CNI_IFNAME")?)
        } else {
            (String::new(), String::new())
        };
        if needs_container && !valid_container_id(&container_id) {
            return Err(CniError::new(
                code::INVALID_ENVIRONMENT,
                "invalid CNI_CONTAINERID",
                "only letters, digits, '_', '.' and '-' are allowed",
            ));
        }
        if needs_container && !valid_ifname(&ifname) {
            return Err(CniError::new(
                code::INVALID_ENVIRONMENT,
                format!("invalid CNI_IFNAME '{ifname}'"),
                "1 to 15 characters, no '/', ':' or spaces",
            ));
        }
        let netns = if matches!(command, Command::Add | Command::Check) {
            required("CNI_NETNS")?
        } else {
            env("CNI_NETNS").unwrap_or_default()
        };
        let args = parse_args(&env("CNI_ARGS").unwrap_or_default())?;
        Ok(Request {
            command,
            container_id,
            netns,
            ifname,
            args,
            config,
        })
    }

    /// The socket to forward to.
    pub fn socket(&self) -> &str {
        self.config
            .get("socket")
            .and_then(Value::as_str)
            .unwrap_or(DEFAULT_SOCKET)
    }

    /// The version answers are given in.
    pub fn version(&self) -> String {
        answer_version(Some(&self.config))
    }

    /// The wire form sent to the agent (one JSON line).
    pub fn to_json(&self) -> Value {
        json!({
            "command": self.command.as_str(),
            "containerId": self.container_id,
            "netns": self.netns,
            "ifname": self.ifname,
            "args": self.args,
            "config": self.config,
        })
    }

    /// Reads the wire form (the agent side).
    pub fn from_json(v: &Value) -> Result<Request, CniError> {
        let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default();
        let bad =
            |what: &str| CniError::new(code::DECODE_FAILURE, format!("bad request: {what}"), "");
        let command = Command::parse(text("command")).ok_or_else(|| bad("command"))?;
        let config = v
            .get("config")
            .and_then(Value::as_object)
            .cloned()
            .ok_or_else(|| bad("config"))?;
        let args = match v.get("args") {
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect(),
            _ => BTreeMap::new(),
        };
        let (container_id, ifname) = (text("containerId"), text("ifname"));
        // The same rules as an invocation's: the request may come from a guest (nested).
        if matches!(command, Command::Add | Command::Del | Command::Check)
            && !(valid_container_id(container_id) && valid_ifname(ifname))
        {
            return Err(bad("containerId or ifname"));
        }
        Ok(Request {
            command,
            container_id: container_id.to_owned(),
            netns: text("netns").to_owned(),
            ifname: ifname.to_owned(),
            args,
            config,
        })
    }
}

/// The agent's answer: `{"result": ...}` (null for commands with no output) or
/// `{"error": {...}}`.
pub fn answer(result: Result<Value, CniError>) -> Value {
    match result {
        Ok(v) => json!({ "result": v }),
        Err(e) => json!({"error": {"code": e.code, "msg": e.msg, "details": e.details}}),
    }
}

/// Reads the agent's answer.
pub fn read_answer(v: &Value) -> Result<Value, CniError> {
    match (v.get("result"), v.get("error")) {
        (_, Some(e)) => Err(CniError::from_json(e)),
        (Some(r), None) => Ok(r.clone()),
        _ => Err(CniError::new(
            code::IO_FAILURE,
            "the agent's answer has neither result nor error",
            v.to_string(),
        )),
    }
}

/// What VERSION prints.
pub fn version_answer(config_version: &str) -> Value {
    json!({"cniVersion": config_version, "supportedVersions": SUPPORTED_VERSIONS})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    const CONF: &[u8] =
        br#"{"cniVersion":"1.1.0","name":"pods","type":"isthmus","network":"seamless"}"#;

    #[test]
    fn parses_a_full_add() {
        let r = Request::from_invocation(
            env(&[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "abc123"),
                ("CNI_NETNS", "/run/netns/p"),
                ("CNI_IFNAME", "eth0"),
                (
                    "CNI_ARGS",
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE=team;K8S_POD_NAME=web",
                ),
            ]),
            CONF,
        )
        .unwrap();
        assert_eq!(r.command, Command::Add);
        assert_eq!(r.args["K8S_POD_NAMESPACE"], "team");
        assert_eq!(r.socket(), DEFAULT_SOCKET);
        assert_eq!(Request::from_json(&r.to_json()).unwrap(), r);
    }

    #[test]
    fn rejects_what_the_spec_says_with_its_codes() {
        let add = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_NETNS", "/n"),
            ("CNI_IFNAME", "eth0"),
        ];
        let code_of = |vars: &[(&str, &str)], stdin: &[u8]| {
            Request::from_invocation(env(vars), stdin).unwrap_err().code
        };
        assert_eq!(code_of(&add, b"{not json"), code::DECODE_FAILURE);
        assert_eq!(code_of(&add, b"[1]"), code::DECODE_FAILURE);
        assert_eq!(
            code_of(&add, br#"{"cniVersion":"0.3.1","name":"x"}"#),
            code::INCOMPATIBLE_VERSION
        );
        assert_eq!(
            code_of(&add, br#"{"cniVersion":"1.0.0"}"#),
            code::INVALID_CONFIG
        );
        assert_eq!(
            code_of(&add, br#"{"cniVersion":"1.0.0","name":"x","network":7}"#),
            code::INVALID_CONFIG
        );
        assert_eq!(code_of(&add[..3], CONF), code::INVALID_ENVIRONMENT);
        assert_eq!(
            code_of(&[("CNI_COMMAND", "ATTACH")], CONF),
            code::INVALID_ENVIRONMENT
        );
        let mut bad_if = add;
        bad_if[3] = ("CNI_IFNAME", "this-name-is-too-long");
        assert_eq!(code_of(&bad_if, CONF), code::INVALID_ENVIRONMENT);
        let mut bad_id = add;
        bad_id[1] = ("CNI_CONTAINERID", "../etc");
        assert_eq!(code_of(&bad_id, CONF), code::INVALID_ENVIRONMENT);
        let mut bad_args = add.to_vec();
        bad_args.push(("CNI_ARGS", "novalue"));
        assert_eq!(code_of(&bad_args, CONF), code::INVALID_ENVIRONMENT);
    }

    #[test]
    fn del_status_and_gc_need_less() {
        let del = Request::from_invocation(
            env(&[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "c"),
                ("CNI_IFNAME", "eth0"),
            ]),
            CONF,
        )
        .unwrap();
        assert!(del.netns.is_empty());
        for c in ["STATUS", "GC"] {
            assert!(Request::from_invocation(env(&[("CNI_COMMAND", c)]), CONF).is_ok());
        }
    }

    #[test]
    fn answers_round_trip() {
        let e = CniError::new(7, "unknown network", "no network named x");
        assert_eq!(read_answer(&answer(Err(e.clone()))), Err(e));
        assert_eq!(
            read_answer(&answer(Ok(json!({"ips": []})))).unwrap()["ips"],
            json!([])
        );
        assert_eq!(version_answer("1.0.0")["supportedVersions"][1], "1.1.0");
    }
}
