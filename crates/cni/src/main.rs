//! `isthmus-cni`: exec'd by a container runtime per the CNI spec. It validates the invocation,
//! forwards it to the node agent's unix socket and prints the agent's answer. VERSION is
//! answered here; everything else is the agent's. Inside a VM (`"nested"` in the
//! configuration) it asks the VM's node agent over the network and wires the pod itself.

mod nested;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

use isthmus_cni::{answer_version, code, read_answer, version_answer, CniError, Command, Request};
use serde_json::Value;

/// An ADD waits for the data plane to be in place; the agent gives up well before this.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

fn forward(request: &Request) -> Result<Value, CniError> {
    let socket = request.socket();
    let unreachable = unreachable(request, socket);
    let stream = UnixStream::connect(socket).map_err(&unreachable)?;
    read_answer(&exchange(stream, request, unreachable)?)
}

/// The error of an agent at `at` that does not answer: for STATUS, the plugin is not
/// available; otherwise the runtime should try again later.
pub(crate) fn unreachable<'a>(
    request: &'a Request,
    at: &'a str,
) -> impl Fn(std::io::Error) -> CniError + 'a {
    move |e| {
        let code = if request.command == Command::Status {
            code::NOT_AVAILABLE
        } else {
            code::TRY_AGAIN_LATER
        };
        CniError::new(
            code,
            "the isthmus agent is not reachable",
            format!("{at}: {e}"),
        )
    }
}

/// Sends `request` as one line on `stream` and reads the agent's whole answer.
pub(crate) fn exchange<S: Read + Write + ReadTimeout>(
    mut stream: S,
    request: &Request,
    unreachable: impl Fn(std::io::Error) -> CniError,
) -> Result<Value, CniError> {
    stream
        .set_answer_timeout(ANSWER_TIMEOUT)
        .map_err(&unreachable)?;
    let mut line = request.to_json().to_string();
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(&unreachable)?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).map_err(|e| {
        CniError::new(
            code::IO_FAILURE,
            "no answer from the isthmus agent",
            e.to_string(),
        )
    })?;
    serde_json::from_slice(&reply).map_err(|e| {
        CniError::new(
            code::IO_FAILURE,
            "unreadable answer from the isthmus agent",
            e.to_string(),
        )
    })
}

/// A stream whose reads can time out.
pub(crate) trait ReadTimeout {
    /// Gives reads `timeout`.
    fn set_answer_timeout(&self, timeout: Duration) -> std::io::Result<()>;
}

impl ReadTimeout for UnixStream {
    fn set_answer_timeout(&self, timeout: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(timeout))
    }
}

impl ReadTimeout for std::net::TcpStream {
    fn set_answer_timeout(&self, timeout: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(timeout))
    }
}

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let env = |k: &str| std::env::var(k).ok();
    if env("CNI_COMMAND").as_deref() == Some("VERSION") {
        let _ = std::io::stdin().read_to_end(&mut stdin);
        let config = serde_json::from_slice::<Value>(&stdin).ok();
        let version = answer_version(config.as_ref().and_then(Value::as_object));
        println!("{}", version_answer(&version));
        return ExitCode::SUCCESS;
    }
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Err(e) => Err(CniError::new(
            code::IO_FAILURE,
            "cannot read stdin",
            e.to_string(),
        )),
        Ok(_) => Request::from_invocation(env, &stdin).and_then(|r| {
            let version = r.version();
            match nested::config(&r)? {
                Some(nested) => nested::run(&r, &nested),
                None => forward(&r),
            }
            .map(|v| (v, version))
        }),
    };
    match outcome {
        Ok((result, version)) => {
            if !result.is_null() {
                let mut result = result;
                result["cniVersion"] = Value::String(version);
                println!("{result}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let config = serde_json::from_slice::<Value>(&stdin).ok();
            let version = answer_version(config.as_ref().and_then(Value::as_object));
            println!("{}", e.to_json(&version));
            eprintln!("isthmus-cni: {e}");
            ExitCode::FAILURE
        }
    }
}
