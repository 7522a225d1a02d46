//! The plugin inside a VM (configuration `"nested": {"interface": "eth0"}`): the VM's node
//! agent makes the attachment's subport (see the agent's `nested` module) and answers with the
//! CNI result and the subport's VLAN; the plugin then makes the 802.1q interface on the VM's
//! trunk interface directly in the pod's namespace, with the subport's MAC, MTU, addresses and
//! routes. A failure after the agent made the subport gives it back (nothing half-done).

use std::fs::File;
use std::net::{IpAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::time::Duration;

use futures_util::TryStreamExt;
use isthmus_cni::{code, read_answer, CniError, Command, Request, NESTED_AGENT};
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVlan, RouteMessageBuilder};
use serde_json::Value;

/// How long the agent gets to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a nested attachment goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nested {
    /// The node agent's nested CNI address.
    pub agent: String,
    /// The VM's trunk interface (the parent port's device in the guest).
    pub interface: String,
}

/// The configuration's `"nested"`, if the attachment is nested.
pub fn config(request: &Request) -> Result<Option<Nested>, CniError> {
    let Some(nested) = request.config.get("nested") else {
        return Ok(None);
    };
    let bad = |why: &str| CniError::new(code::INVALID_CONFIG, "invalid \"nested\"", why);
    let text = |key: &str| nested.get(key).and_then(Value::as_str).map(str::to_owned);
    let interface = text("interface").unwrap_or_else(|| "eth0".to_owned());
    if interface.is_empty() || interface.len() > 15 || interface.contains(['/', ':', ' ']) {
        return Err(bad("\"interface\" is not an interface name"));
    }
    Ok(Some(Nested {
        agent: text("agent").unwrap_or_else(|| NESTED_AGENT.to_owned()),
        interface,
    }))
}

/// Runs a nested invocation.
pub fn run(request: &Request, nested: &Nested) -> Result<Value, CniError> {
    match request.command {
        Command::Add => {
            let answer = ask(&nested.agent, request)?;
            let result = read_answer(&answer)?;
            let vlan = answer["nested"]["vlan"]
                .as_u64()
                .and_then(|v| u16::try_from(v).ok());
            let mtu = answer["nested"]["mtu"]
                .as_u64()
                .and_then(|v| u32::try_from(v).ok());
            let wired = match (vlan, mtu) {
                (Some(vlan), Some(mtu)) => wire(request, &nested.interface, vlan, mtu, &result),
                _ => Err(CniError::new(
                    code::IO_FAILURE,
                    "the agent's answer has no VLAN",
                    answer.to_string(),
                )),
            };
            if let Err(e) = wired {
                let _ = unwire(request);
                let mut undo = request.clone();
                undo.command = Command::Del;
                if let Err(undo) = ask(&nested.agent, &undo).and_then(|a| read_answer(&a)) {
                    eprintln!("isthmus-cni: giving the subport back: {undo}");
                }
                return Err(e);
            }
            Ok(result)
        }
        Command::Del => {
            unwire(request)?;
            read_answer(&ask(&nested.agent, request)?)
        }
        _ => read_answer(&ask(&nested.agent, request)?),
    }
}

/// One exchange with the node agent over TCP.
fn ask(agent: &str, request: &Request) -> Result<Value, CniError> {
    let unreachable = crate::unreachable(request, agent);
    let address = agent
        .to_socket_addrs()
        .map_err(&unreachable)?
        .next()
        .ok_or_else(|| unreachable(std::io::ErrorKind::NotFound.into()))?;
    let stream = TcpStream::connect_timeout(&address, CONNECT_TIMEOUT).map_err(&unreachable)?;
    crate::exchange(stream, request, unreachable)
}

fn io(what: &str) -> impl Fn(std::io::Error) -> CniError + '_ {
    move |e| CniError::new(code::IO_FAILURE, what.to_owned(), e.to_string())
}

fn kernel(what: &str, e: impl std::fmt::Display) -> CniError {
    CniError::new(code::IO_FAILURE, what.to_owned(), e.to_string())
}

/// Runs `work` with a netlink connection, on a runtime of a thread of its own that first
/// enters `netns` when given (a namespace switch is per thread: the plugin itself stays in the
/// VM's namespace, where the agent is).
fn netlink<T, F, Fut>(netns: Option<File>, work: F) -> Result<T, CniError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, CniError>>,
{
    std::thread::spawn(move || {
        if let Some(netns) = &netns {
            nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| kernel("cannot enter the pod's network namespace", e))?;
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(io("cannot start a runtime"))?;
        runtime.block_on(async {
            let (connection, handle, _) =
                rtnetlink::new_connection().map_err(io("cannot open a netlink socket"))?;
            tokio::spawn(connection);
            work(handle).await
        })
    })
    .join()
    .map_err(|_| CniError::new(code::IO_FAILURE, "the netlink thread failed", ""))?
}

async fn link(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, CniError> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        Err(e) if is(&e, nix::errno::Errno::ENODEV) => Ok(None),
        Err(e) => Err(kernel(&format!("reading {name}"), e)),
    }
}

/// Whether a netlink error is `errno`.
fn is(e: &rtnetlink::Error, errno: nix::errno::Errno) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m)
        if m.code.is_some_and(|c| c.get() == -(errno as i32)))
}

fn mac_bytes(mac: &str) -> Option<Vec<u8>> {
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).ok())
        .collect::<Option<_>>()?;
    (bytes.len() == 6).then_some(bytes)
}

fn cidr(text: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = text.split_once('/')?;
    Some((ip.parse().ok()?, len.parse().ok()?))
}

/// Makes the pod's VLAN interface on `parent` and configures it from `result`.
fn wire(
    request: &Request,
    parent: &str,
    vlan: u16,
    mtu: u32,
    result: &Value,
) -> Result<(), CniError> {
    let netns = File::open(&request.netns).map_err(|e| {
        CniError::new(
            code::UNKNOWN_CONTAINER,
            "the network namespace does not exist",
            format!("{}: {e}", request.netns),
        )
    })?;
    let mac = result["interfaces"][0]["mac"]
        .as_str()
        .and_then(mac_bytes)
        .ok_or_else(|| CniError::new(code::IO_FAILURE, "the agent's answer has no MAC", ""))?;
    let (ifname, parent) = (request.ifname.clone(), parent.to_owned());
    let inside = netns
        .try_clone()
        .map_err(io("cannot reopen the pod's namespace"))?;
    // Made under a name of its own (the pod's name may be taken here: the guest's own eth0)
    // and renamed in the pod.
    let name = format!("isv{vlan}");
    let made = name.clone();
    netlink(None, move |handle| async move {
        let base = link(&handle, &parent)
            .await?
            .ok_or_else(|| kernel(&format!("{parent} is missing"), "the trunk interface"))?;
        let message = LinkMessageBuilder::<LinkVlan>::new_with_info_kind(
            rtnetlink::packet_route::link::InfoKind::Vlan,
        )
        .name(name.clone())
        .id(vlan)
        .link(base.header.index)
        .address(mac)
        .mtu(mtu)
        .setns_by_fd(netns.as_raw_fd())
        .build();
        match handle.link().add(message).execute().await {
            // A retried ADD finds it made.
            Err(e) if is(&e, nix::errno::Errno::EEXIST) => Ok(()),
            done => done.map_err(|e| kernel(&format!("creating {name} (VLAN {vlan})"), e)),
        }
    })?;
    let result = result.clone();
    netlink(Some(inside), move |handle| async move {
        let index = match link(&handle, &ifname).await? {
            Some(found) => found.header.index,
            None => {
                let index = link(&handle, &made)
                    .await?
                    .ok_or_else(|| kernel(&format!("{made} did not arrive in the pod"), ""))?
                    .header
                    .index;
                handle
                    .link()
                    .set(
                        LinkUnspec::new_with_index(index)
                            .name(ifname.clone())
                            .build(),
                    )
                    .execute()
                    .await
                    .map_err(|e| kernel(&format!("naming {made} {ifname}"), e))?;
                index
            }
        };
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| kernel(&format!("setting {ifname} up"), e))?;
        for ip in result["ips"].as_array().into_iter().flatten() {
            let Some((address, prefix)) = ip["address"].as_str().and_then(cidr) else {
                continue;
            };
            handle
                .address()
                .add(index, address, prefix)
                .replace()
                .execute()
                .await
                .map_err(|e| kernel(&format!("adding {address}/{prefix}"), e))?;
        }
        for route in result["routes"].as_array().into_iter().flatten() {
            let (Some((dst, prefix)), Some(gw)) = (
                route["dst"].as_str().and_then(cidr),
                route["gw"].as_str().and_then(|g| g.parse::<IpAddr>().ok()),
            ) else {
                continue;
            };
            let message = RouteMessageBuilder::<IpAddr>::new()
                .destination_prefix(dst, prefix)
                .and_then(|b| b.gateway(gw))
                .map_err(|e| kernel("building a route", e))?
                .output_interface(index)
                .build();
            match handle.route().add(message).execute().await {
                // The pod's first attachment keeps its default route.
                Err(e) if is(&e, nix::errno::Errno::EEXIST) => {}
                done => done.map_err(|e| kernel(&format!("adding route {dst}/{prefix}"), e))?,
            }
        }
        Ok(())
    })
}

/// Removes the pod's VLAN interface (gone already, or no namespace: nothing to do).
fn unwire(request: &Request) -> Result<(), CniError> {
    let Ok(netns) = File::open(&request.netns) else {
        return Ok(());
    };
    let ifname = request.ifname.clone();
    netlink(Some(netns), move |handle| async move {
        if let Some(found) = link(&handle, &ifname).await? {
            match handle.link().del(found.header.index).execute().await {
                Err(e) if is(&e, nix::errno::Errno::ENODEV) => {}
                done => done.map_err(|e| kernel(&format!("deleting {ifname}"), e))?,
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_agent_answers() {
        assert_eq!(
            mac_bytes("fa:16:3e:00:00:01"),
            Some(vec![0xfa, 0x16, 0x3e, 0, 0, 1])
        );
        assert_eq!(mac_bytes("fa:16:3e:00:00"), None);
        assert_eq!(cidr("10.1.0.4/24"), Some(("10.1.0.4".parse().unwrap(), 24)));
        assert_eq!(cidr("10.1.0.4"), None);
    }
}
