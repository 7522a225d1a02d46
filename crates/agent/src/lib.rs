//! The Isthmus node agent: registers its node, follows the controller's watch of the node's
//! view, and reconciles the kernel by diff — read what the kernel has, plan the difference
//! from what the view implies, apply only that — whenever the view or the node's links change.
//! It never flushes: a restart re-reads the kernel and changes nothing that is already right.
//! It also serves the CNI socket that `isthmus-cni` forwards pods' ADD/DEL/CHECK/GC to, with
//! a pool of ready ports per network and project.

mod cni;
mod dhcp;
mod dns;
mod health;
pub mod http;
pub mod inspect;
pub mod kernel;
mod lb;
mod metadata;
mod nested;
pub mod netlink;
pub mod netns;
mod pool;
mod ra;
mod reply;
pub mod routers;
mod services;
mod sockopt;
mod trunk;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use isthmus_dataplane::l2::{self, NodeConfig};
use isthmus_dataplane::router::RouterState;
use isthmus_dataplane::view::NodeView;
use isthmus_dataplane::{filter, nft, plan};
use serde_json::json;
use tokio::sync::{watch, Notify};

pub use http::Endpoint;
pub use isthmus_cni::DEFAULT_SOCKET as DEFAULT_CNI_SOCKET;
pub use isthmus_dataplane::pod::POD_DEVICE_OWNER;

/// Where router namespaces are pinned by default: where `ip netns` finds them.
pub const DEFAULT_NETNS_DIR: &str = "/run/netns";

/// Errors of the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Bad command-line configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// Talking to the controller failed.
    #[error("controller: {0}")]
    Controller(String),
    /// The controller or Keystone refused the agent (a 4xx: wrong credentials, a bad node
    /// name): retrying cannot help.
    #[error("refused: {0}")]
    Refused(String),
    /// A kernel read or change failed.
    #[error("kernel: {0}")]
    Kernel(String),
    /// I/O.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Agent settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Node name (ports bind to it).
    pub node: String,
    /// Underlay address for VXLAN.
    pub tunnel_ip: IpAddr,
    /// The controller.
    pub controller: Endpoint,
    /// Physical network → interface.
    pub physnets: BTreeMap<String, String>,
    /// How often to send heartbeats.
    pub heartbeat: Duration,
    /// Where the agent keeps what must survive a restart (CNI attachment records).
    pub state_dir: PathBuf,
    /// The unix socket `isthmus-cni` forwards to.
    pub cni_socket: PathBuf,
    /// The network (id or name) of pods whose configuration and namespace name none.
    pub default_pod_network: Option<String>,
    /// Pod ports kept ready at least per (network, project) in use on this node (0: no
    /// pools).
    pub pool_size: usize,
    /// Pod ports a pool grows to at most under bursts of ADDs.
    pub pool_max: usize,
    /// Where router namespaces are pinned.
    pub netns_dir: PathBuf,
    /// Whether br_netfilter's namespace-wide switches are the agent's to turn off (see
    /// [`kernel::br_netfilter_per_bridge`]); otherwise they are left as found.
    pub own_br_netfilter: bool,
    /// Nova's metadata API, if instances may reach it (at 169.254.169.254).
    pub metadata: Option<MetadataConfig>,
    /// Where names that are not instances' are resolved.
    pub dns_upstream: Vec<std::net::SocketAddr>,
}

/// The name servers of the host's `/etc/resolv.conf` (the default DNS upstream).
pub fn host_name_servers() -> Vec<std::net::SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .map(|text| dns::resolv_conf_servers(&text))
        .unwrap_or_default()
}

/// Where the metadata proxy forwards, and the secret it signs instance ids with.
#[derive(Clone)]
pub struct MetadataConfig {
    /// `http://host:port` of Nova's metadata API.
    pub url: String,
    /// Nova's `metadata_proxy_shared_secret`.
    pub secret: Vec<u8>,
}

impl MetadataConfig {
    /// From the URL and the secret's file (its content, without a trailing newline).
    pub fn new(url: &str, secret_file: &std::path::Path) -> Result<MetadataConfig, AgentError> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            AgentError::Config(format!(
                "--metadata-url must be http://host[:port], not '{url}'"
            ))
        })?;
        if rest.trim_end_matches('/').is_empty() || rest.trim_end_matches('/').contains('/') {
            return Err(AgentError::Config(format!("bad --metadata-url '{url}'")));
        }
        let secret = std::fs::read(secret_file).map_err(|e| {
            AgentError::Config(format!("cannot read {}: {e}", secret_file.display()))
        })?;
        let secret = secret.strip_suffix(b"\n").unwrap_or(&secret).to_vec();
        if secret.is_empty() {
            return Err(AgentError::Config(format!(
                "{} is empty: the metadata secret must be set",
                secret_file.display()
            )));
        }
        Ok(MetadataConfig {
            url: url.trim_end_matches('/').to_owned(),
            secret,
        })
    }
}

/// The secret stays out of logs.
impl std::fmt::Debug for MetadataConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataConfig")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Parses `NAME:IFACE`.
pub fn parse_physnet(s: &str) -> Result<(String, String), AgentError> {
    match s.split_once(':') {
        Some((name, iface))
            if !name.is_empty() && isthmus_model::network::is_interface_name(iface) =>
        {
            Ok((name.to_owned(), iface.to_owned()))
        }
        _ => Err(AgentError::Config(format!(
            "--physnet takes NAME:IFACE (IFACE an interface name), not '{s}'"
        ))),
    }
}

struct Shared {
    config: Config,
    view: Mutex<NodeView>,
    /// Wakes the reconciler.
    changed: Notify,
    /// Cuts the reconciler's rest after a full pass short: someone waits for a tap to be
    /// attached.
    urgent: Notify,
    /// The view's revision, for whoever waits for an object to arrive (CNI ADD).
    revisions: watch::Sender<u64>,
    /// Local ports whose tap is attached to its bridge and up.
    plugged: watch::Sender<BTreeSet<String>>,
    /// The node's netlink connection.
    netlink: netlink::Netlink,
    /// Local ports whose filters are in place (attaching their tap is safe).
    filtered: watch::Sender<BTreeSet<String>>,
    /// Pod ports kept ready.
    pools: pool::Pools,
    /// The DHCP leases the node answers.
    leases: dhcp::Leases,
    /// What runs in the node's DHCP namespaces.
    services: services::Services,
    /// Router advertisements being sent.
    advertisers: ra::Advertisers,
    /// Health probes of the load-balancer members hosted here.
    prober: health::Prober,
    /// Trunk subports' veths and BPF programs (only the reconciler takes it).
    trunks: tokio::sync::Mutex<trunk::Trunks>,
    /// A link changed since the last full pass (taps plugged by a hypervisor or runtime).
    links_changed: AtomicBool,
    /// What the controller should be told; the reporter sends it, so that the kernel side
    /// never waits for the controller.
    reports: watch::Sender<Reports>,
}

/// What the node has to tell the controller, as of the last reconcile.
#[derive(Debug, Clone, Default, PartialEq)]
struct Reports {
    /// Local ports whose status in the view is not what the kernel shows: id → status.
    ports: BTreeMap<String, &'static str>,
    /// Floating IPs this node NATs that the view does not show ACTIVE yet.
    floating_ips: BTreeSet<String>,
    /// The view revision the data plane reflects.
    applied: u64,
}

impl Shared {
    fn view(&self) -> std::sync::MutexGuard<'_, NodeView> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn register(config: &Config) -> Result<(), AgentError> {
    let body = json!({"node": {
        "name": config.node,
        "tunnel_ip": config.tunnel_ip,
        "roles": ["compute"],
        "physnets": config.physnets,
    }});
    let (status, answer) = config
        .controller
        .request("POST", "/isthmus/v1/nodes", Some(&body))
        .await?;
    match status {
        200 | 201 => Ok(()),
        400..=499 => Err(AgentError::Refused(format!(
            "registration answered {status}: {answer}"
        ))),
        _ => Err(AgentError::Controller(format!(
            "registration answered {status}: {answer}"
        ))),
    }
}

/// Runs the agent until the process ends.
pub async fn run(config: Config) -> Result<(), AgentError> {
    kernel::check_br_netfilter()?;
    // A refusal fails at once; an unreachable or failing controller (or Keystone) is waited
    // for, with growing pauses.
    let mut pause = Duration::from_millis(200);
    loop {
        match register(&config).await {
            Ok(()) => break,
            Err(e @ AgentError::Refused(_)) => return Err(e),
            Err(e) => {
                tracing::warn!("cannot register yet ({e}); retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
    tracing::info!("node {} registered", config.node);
    let shared = Arc::new(Shared {
        view: Mutex::new(NodeView::default()),
        changed: Notify::new(),
        urgent: Notify::new(),
        revisions: watch::Sender::new(0),
        plugged: watch::Sender::new(BTreeSet::new()),
        netlink: netlink::Netlink::connect()?,
        filtered: watch::Sender::new(BTreeSet::new()),
        pools: pool::Pools::new(config.pool_size, config.pool_max),
        leases: watch::Sender::new(Arc::default()),
        services: services::Services::new(config.metadata.clone(), config.dns_upstream.clone()),
        advertisers: ra::Advertisers::default(),
        prober: health::Prober::start(
            config.netns_dir.clone(),
            config.controller.clone(),
            config.node.clone(),
        ),
        trunks: tokio::sync::Mutex::default(),
        links_changed: AtomicBool::new(false),
        reports: watch::Sender::new(Reports::default()),
        config,
    });
    shared.services.serve_nested(nested::Nested::new(
        Arc::downgrade(&shared),
        shared.services.instances(),
        shared.config.pool_size,
        &shared.config.state_dir,
    ));
    let leases = shared.leases.subscribe();
    tokio::spawn(async move {
        if let Err(e) = dhcp::serve(leases).await {
            tracing::warn!("the DHCP server stopped: {e}");
        }
    });
    let server = shared.clone();
    tokio::spawn(async move {
        if let Err(e) = cni::serve(server).await {
            tracing::warn!("the CNI server stopped: {e}");
        }
    });
    tokio::spawn(heartbeats(shared.clone()));
    tokio::spawn(pool::shrink_idle_pools(shared.clone()));
    tokio::spawn(link_events(shared.clone()));
    tokio::spawn(reconciler(shared.clone()));
    tokio::spawn(reporter(shared.clone()));
    follow(shared).await
}

async fn heartbeats(shared: Arc<Shared>) {
    let path = format!("/isthmus/v1/nodes/{}/heartbeat", shared.config.node);
    let mut reported = None;
    loop {
        tokio::time::sleep(shared.config.heartbeat).await;
        match shared.config.controller.request("PUT", &path, None).await {
            Ok((404, _)) => {
                let _ = register(&shared.config).await;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("heartbeat failed: {e}"),
        }
        // Load balancer statistics ride on the heartbeat's cadence (as an amphora's do).
        if let Err(e) = report_stats(&shared, &mut reported).await {
            tracing::warn!("cannot report load balancer statistics: {e}");
        }
    }
}

/// Most listeners one statistics report carries (a bigger change goes in several).
const STATS_PER_REPORT: usize = 1000;

/// Reports the statistics of the listeners this node balances that changed since `reported`
/// (the last report the controller took; `None`: none yet, so the first report replaces
/// whatever the node's statistics were).
async fn report_stats(
    shared: &Shared,
    reported: &mut Option<BTreeMap<String, isthmus_model::lbaas::Stats>>,
) -> Result<(), AgentError> {
    let Some(table) = lb::counted().await? else {
        return Ok(());
    };
    let conntrack = lb::conntrack();
    // Only the services are read under the view's lock; the kernel's text is parsed after.
    let services = isthmus_dataplane::lb::services(&shared.view());
    let mut stats = isthmus_dataplane::lb::listener_stats(&services, &table, &conntrack);
    stats.retain(|_, s| !s.is_zero());
    let empty = BTreeMap::new();
    let before = reported.as_ref().unwrap_or(&empty);
    let mut changes: Vec<(&String, Option<&isthmus_model::lbaas::Stats>)> = stats
        .iter()
        .filter(|(id, s)| before.get(*id) != Some(s))
        .map(|(id, s)| (id, Some(s)))
        .collect();
    changes.extend(
        before
            .keys()
            .filter(|id| !stats.contains_key(*id))
            .map(|id| (id, None)),
    );
    let mut replace = reported.is_none();
    if changes.is_empty() && !replace {
        return Ok(());
    }
    let path = format!("/isthmus/v1/nodes/{}/lb-stats", shared.config.node);
    for part in changes.chunks(STATS_PER_REPORT).map(Some).chain([None]) {
        let listeners: serde_json::Map<String, serde_json::Value> = part
            .into_iter()
            .flatten()
            .map(|(id, s)| ((*id).clone(), json!(s)))
            .collect();
        // An empty last part only when nothing else carried the replacement.
        if listeners.is_empty() && !replace {
            break;
        }
        let body = json!({ "listeners": listeners, "replace": replace });
        report(shared, &path, &body, &[204]).await?;
        replace = false;
    }
    *reported = Some(stats);
    Ok(())
}

/// Wakes the reconciler on every link change (a hypervisor creating a tap, a device going
/// away), so plugging needs no polling: the kernel's link multicast group, read on a netlink
/// socket of the agent's namespace.
async fn link_events(shared: Arc<Shared>) {
    use futures_util::StreamExt;
    loop {
        let (connection, _handle, mut events) =
            match rtnetlink::new_multicast_connection(&[rtnetlink::MulticastGroup::Link]) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("cannot monitor links: {e}");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
            };
        let connection = tokio::spawn(connection);
        let mut seen = HashMap::new();
        while let Some((message, _)) = events.next().await {
            if !link_changed(&mut seen, message) {
                continue;
            }
            // A link came or went outside the view: the next pass is a full one.
            shared.links_changed.store(true, Ordering::Release);
            shared.changed.notify_one();
        }
        connection.abort();
        // The socket failed (its buffer overran, say): what was missed counts as a change.
        shared.links_changed.store(true, Ordering::Release);
        shared.changed.notify_one();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a full pass reads of a link: its name, bridge, MTU, flags and operational state.
type LinkSummary = (
    Option<String>,
    Option<u32>,
    Option<u32>,
    u32,
    Option<rtnetlink::packet_route::link::State>,
);

/// Whether a link event changes what a full pass reads: a link new or gone, or its
/// [`LinkSummary`] different from the last event of that link. Events that change nothing of
/// it (a bridge port's hairpin flag, which the agent's own load balancing sets) are not
/// worth a full pass.
fn link_changed(
    seen: &mut HashMap<(u8, u32), LinkSummary>,
    message: rtnetlink::packet_core::NetlinkMessage<rtnetlink::packet_route::RouteNetlinkMessage>,
) -> bool {
    use rtnetlink::packet_core::NetlinkPayload;
    use rtnetlink::packet_route::link::LinkAttribute;
    use rtnetlink::packet_route::RouteNetlinkMessage;
    let (link, new) = match message.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => (l, true),
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => (l, false),
        _ => return true,
    };
    let key = (u8::from(link.header.interface_family), link.header.index);
    if !new {
        seen.remove(&key);
        return true;
    }
    let mut summary: LinkSummary = (None, None, None, link.header.flags.bits(), None);
    for a in link.attributes {
        match a {
            LinkAttribute::IfName(n) => summary.0 = Some(n),
            LinkAttribute::Controller(c) => summary.1 = Some(c),
            LinkAttribute::Mtu(m) => summary.2 = Some(m),
            LinkAttribute::OperState(s) => summary.4 = Some(s),
            _ => {}
        }
    }
    seen.insert(key, summary.clone()) != Some(summary)
}

/// Follows the watch, reconnecting. The first connection starts from a snapshot, and the
/// kernel is not touched until it is complete; later ones resume from what the view holds
/// (the controller, this one or another, sends only what differs), while the kernel keeps
/// what it has.
async fn follow(shared: Arc<Shared>) -> Result<(), AgentError> {
    // Whether the view is complete from an earlier connection.
    let mut resume = false;
    let mut backoff = Backoff::default();
    loop {
        let path = format!("/isthmus/v1/watch?node={}", shared.config.node);
        let controller = shared.config.controller.authority().to_owned();
        let connected = if resume {
            let held = shared.view().held();
            shared
                .config
                .controller
                .stream_with("POST", &path, Some(&held))
                .await
        } else {
            shared.config.controller.stream(&path).await
        };
        match connected {
            Ok(mut lines) => {
                if !resume {
                    *shared.view() = NodeView::default();
                }
                // Whether lines since the last bookmark changed the view: the controller
                // closes every batch with a bookmark, and the view is only acted on (reconciled,
                // its revision published to waiting CNI ADDs) whole.
                let mut changed_since = false;
                loop {
                    match lines.next().await {
                        Ok(Some(line)) => {
                            let relist = line["type"] == "RELIST";
                            let applied = shared.view().apply(&line);
                            match applied {
                                Ok(_) if relist => {
                                    resume = false;
                                    break;
                                }
                                Ok(changed) => {
                                    if changed {
                                        tracing::debug!(
                                            kind = line["kind"].as_str(),
                                            id = line["id"].as_str(),
                                            "view changed"
                                        );
                                    }
                                    changed_since |= changed;
                                    let synced = shared.view().synced;
                                    if synced && line["type"] == "BOOKMARK" {
                                        resume = true;
                                        backoff = Backoff::default();
                                        let revision = shared.view().revision;
                                        shared.revisions.send_replace(revision);
                                        if changed_since || line["synced"] == true {
                                            shared.changed.notify_one();
                                        }
                                        changed_since = false;
                                    }
                                }
                                Err(e) => tracing::warn!("{e}"),
                            }
                        }
                        Ok(None) => {
                            tracing::warn!("{controller} ended the watch");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!("watch of {controller} broke: {e}");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                // A controller that refuses the resume (an older one) gets a fresh watch next.
                if matches!(e, AgentError::Controller(_)) {
                    resume = false;
                }
                tracing::warn!("cannot watch: {e}");
            }
        }
        // A controller that ended or lost the watch is likely going away: the next one is
        // tried (the kernel keeps its state meanwhile).
        shared.config.controller.fail_over(&controller);
        tokio::time::sleep(backoff.next()).await;
    }
}

/// Exponential reconnect delays with jitter (so that agents do not reconnect in step when a
/// controller restarts): 100 ms doubling up to 5 s, each drawn between half and all of it.
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(Duration::from_millis(100))
    }
}

impl Backoff {
    fn next(&mut self) -> Duration {
        use std::hash::BuildHasher;
        let current = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
        let random = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
        current / 2 + current.mul_f64((random % 1000) as f64 / 2000.0)
    }
}

/// What this agent last wrote: its filter tables, the forwarding entries on its VXLAN
/// devices and bridge ports, its router namespaces, its load balancing, and whether
/// br_netfilter is per bridge. `None` parts are read from the kernel on the next pass.
#[derive(Default)]
struct Known {
    tables: Option<(nft::Observed, nft::Observed)>,
    fdb: Option<(BTreeSet<l2::Fdb>, BTreeSet<l2::Pin>)>,
    routers: Option<RouterState>,
    lb: Option<isthmus_dataplane::lb::Observed>,
    /// What the load balancing of the last pass was computed from.
    memo: Option<isthmus_dataplane::lb::Memo>,
    per_bridge: bool,
    /// The view generation of the last full pass.
    generation: Option<u64>,
}

async fn reconciler(shared: Arc<Shared>) {
    let node = NodeConfig {
        name: shared.config.node.clone(),
        tunnel_ip: shared.config.tunnel_ip,
        physnets: shared.config.physnets.clone(),
    };
    // What this agent last wrote (filter tables, forwarding entries); the kernel is read again at start,
    // after any failure, and on the periodic safety pass.
    let mut known = Known::default();
    loop {
        // Changes arrive in bursts; a safety pass every 30 s re-reads everything and repairs
        // anything changed behind the agent's back.
        let woken = tokio::time::timeout(Duration::from_secs(30), shared.changed.notified()).await;
        if woken.is_err() {
            known = Known::default();
        }
        let started = Instant::now();
        let (changed, balancing) = {
            let mut v = shared.view();
            if !v.synced {
                continue;
            }
            // Every pass takes the listeners changed so far.
            let changed = std::mem::take(&mut v.balancing.changed);
            // A link event needs a full pass (taps to attach); taken before the view is read,
            // so an event during the pass brings another.
            let links = shared.links_changed.swap(false, Ordering::AcqRel);
            let balancing = (!links)
                .then(|| balancing_pass(&v, &node, &mut known, &changed))
                .flatten();
            (changed, balancing)
        };
        let (kind, done) = match balancing {
            Some(pass) => ("balancing", rebalance(&shared, pass, &mut known).await),
            None => ("full", reconcile(&shared, &node, &mut known, changed).await),
        };
        tracing::debug!(
            kind,
            total_us = started.elapsed().as_micros() as u64,
            "pass"
        );
        if let Err(e) = done {
            known = Known::default();
            tracing::warn!("reconcile: {e}");
        }
        if kind == "full" {
            rest(&shared, started.elapsed()).await;
        }
    }
}

/// The longest rest after a full pass.
const MAX_REST: Duration = Duration::from_millis(100);

/// Rests as long as the last full pass took (at most [`MAX_REST`]) unless someone waits for
/// a tap. Under a stream of changes (a CNI burst: each pod's port, its renaming, its status,
/// its links) full passes would otherwise run back to back, a whole core of nft runs and
/// planning taken from the pods being wired; resting keeps the reconciler to half a core and
/// lets each pass take in the changes of the rest. A lone change finds the rest over.
async fn rest(shared: &Shared, pass: Duration) {
    tokio::select! {
        () = tokio::time::sleep(pass.min(MAX_REST)) => {}
        () = shared.urgent.notified() => {}
    }
}

/// A load-balancing-only pass (nothing else changed since the last full pass): its plan,
/// probes and the view's revision, computed under the view's lock (no copy of the view).
struct Balancing {
    plan: isthmus_dataplane::lb::Plan,
    probes: Vec<isthmus_dataplane::lb::Probe>,
    revision: u64,
}

/// A load-balancing-only pass, when only load balancers changed in the view since the last
/// full pass: the services of the `changed` listeners redone, as long as the same bridges
/// still balance (otherwise their netfilter switch must move).
fn balancing_pass(
    view: &NodeView,
    node: &NodeConfig,
    known: &mut Known,
    changed: &BTreeSet<String>,
) -> Option<Balancing> {
    if known.generation != Some(view.generation) {
        return None;
    }
    let memo = known.memo.as_mut()?;
    let have = known.lb.take()?;
    match memo.update(view, have, changed) {
        Ok(plan) => Some(Balancing {
            plan,
            probes: isthmus_dataplane::lb::probes(view, node),
            revision: view.revision,
        }),
        Err(have) => {
            known.lb = Some(*have);
            None
        }
    }
}

/// Applies a load-balancing-only pass.
async fn rebalance(shared: &Shared, pass: Balancing, known: &mut Known) -> Result<(), AgentError> {
    let Balancing {
        plan,
        probes,
        revision,
    } = pass;
    known.lb = Some(lb::apply(&shared.netlink, plan, Vec::new()).await?);
    shared.prober.follow(probes);
    shared.reports.send_if_modified(|r| {
        let behind = r.applied < revision;
        r.applied = r.applied.max(revision);
        behind
    });
    Ok(())
}

/// What the kernel holds: what this agent last wrote where it knows, read back otherwise.
async fn observe(shared: &Shared, known: &mut Known) -> Result<plan::Observed, AgentError> {
    let (bridge, inet) = match known.tables.take() {
        Some(tables) => tables,
        None => (
            kernel::observe_nft_table("bridge", filter::TABLE).await?,
            kernel::observe_nft_table("inet", filter::TABLE).await?,
        ),
    };
    let routers = match known.routers.take() {
        Some(have) => have,
        None => routers::observe(&shared.config.netns_dir).await?,
    };
    let mut l2 = shared.netlink.links().await?;
    (l2.fdb, l2.pins) = match known.fdb.take() {
        // Entries live on devices: keep only those whose device is still there.
        Some((fdb, pins)) => (
            fdb.into_iter()
                .filter(|f| l2.vxlans.contains_key(&f.device))
                .collect(),
            pins.into_iter()
                .filter(|p| l2.devices.contains_key(&p.device))
                .collect(),
        ),
        None => shared.netlink.fdb(&l2).await?,
    };
    let balancing = match known.lb.take() {
        Some(have) => have,
        None => lb::observe().await?,
    };
    Ok(plan::Observed {
        bridge,
        inet,
        routers,
        l2,
        balancing,
    })
}

/// One full pass: the kernel read (or known), the node's plan made in one call, and the plan
/// applied in its order. With the last pass's load-balancing memo, only the listeners
/// `changed` since are redone, and the plan is made under the view's lock (no copy of the
/// view); without, from a copy.
async fn reconcile(
    shared: &Shared,
    node: &NodeConfig,
    known: &mut Known,
    mut changed: BTreeSet<String>,
) -> Result<(), AgentError> {
    // The memo describes the kernel only with what this agent last wrote there.
    let memo = known.lb.is_some().then(|| known.memo.take()).flatten();
    let started = Instant::now();
    let observed = observe(shared, known).await?;
    let observed_at = Instant::now();
    let (plan, generation) = {
        let mut v = shared.view();
        changed.extend(std::mem::take(&mut v.balancing.changed));
        let copy;
        let view = if memo.is_some() {
            &*v
        } else {
            copy = v.clone();
            drop(v);
            &copy
        };
        let earlier = plan::Earlier { memo, changed };
        (plan::node(view, node, observed, earlier), view.generation)
    };
    let planned_at = Instant::now();
    apply(shared, plan, known).await?;
    known.generation = Some(generation);
    tracing::debug!(
        observe_us = (observed_at - started).as_micros() as u64,
        plan_us = (planned_at - observed_at).as_micros() as u64,
        apply_us = planned_at.elapsed().as_micros() as u64,
        "full pass"
    );
    Ok(())
}

/// Applies a node plan, recording what the kernel then holds in `known`.
async fn apply(shared: &Shared, plan: plan::NodePlan, known: &mut Known) -> Result<(), AgentError> {
    let dir = &shared.config.netns_dir;
    // Filters go first (a tap is filtered before it is plugged) and load balancing last (it
    // routes over the bridges and taps). A pass that makes or removes no device (a Service
    // added, a remote port) writes both in one nft transaction: one process and one read of
    // the ruleset instead of two.
    let devices_stay = plan.router_ops.is_empty()
        && plan.l2_ops.is_empty()
        && plan.trunks.add.is_empty()
        && plan.trunks.remove.is_empty();
    let mut filter = plan.filter;
    let mut filtered = Some((plan.filter_after, plan.filtered));
    if !devices_stay {
        kernel::nft(std::mem::take(&mut filter)).await?;
        filters_in_place(shared, known, &mut filtered);
    }

    // A router that cannot be set up must not hold back the rest of the node: its failure is
    // reported after L2 (the next pass reads the kernel again).
    let routed = routers::apply(&shared.netlink, dir, &plan.router_ops).await;
    let services = plan.services;
    shared.services.follow(
        dir,
        &plan.routers,
        services.instances,
        services.names,
        &shared.config.node,
    );
    services::replace_if_changed(&shared.leases, services.leases);
    shared.advertisers.follow(dir, services.advertisements);
    if routed.is_ok() {
        known.routers = Some(plan.routers);
    }

    // Subport veths before L2: the link events of new ones bring the pass that attaches them.
    // Like a router, a trunk that cannot be wired does not hold back the rest of the node.
    let trunked = shared
        .trunks
        .lock()
        .await
        .apply(&shared.netlink, &plan.trunks)
        .await;
    kernel::apply(&shared.netlink, &plan.l2_ops).await?;
    if shared.config.own_br_netfilter && !known.per_bridge {
        kernel::br_netfilter_per_bridge()?;
        known.per_bridge = true;
    }
    known.fdb = Some((plan.l2.fdb, plan.l2.pins));
    let mut balancing = plan.balancing;
    let memo = balancing.memo.take();
    known.lb = Some(lb::apply(&shared.netlink, balancing, filter).await?);
    known.memo = memo;
    filters_in_place(shared, known, &mut filtered);
    shared.prober.follow(plan.probes);
    let mut port_status = plan.port_status;
    if trunked.is_err() {
        // A subport its node failed to wire is in error (its trunk DEGRADED), not just down.
        for s in plan
            .trunks
            .wired
            .iter()
            .filter(|s| !plan.plugged.contains(&s.port_id))
        {
            port_status.insert(s.port_id.clone(), "ERROR");
        }
    }
    publish(&shared.plugged, plan.plugged);
    shared.reports.send_if_modified(|r| {
        let changed = r.ports != port_status;
        r.ports = port_status;
        changed
    });
    routed?;
    trunked?;
    // Once their interfaces are on the bridges.
    routers::announce(dir, &plan.announcements).await?;
    shared.reports.send_if_modified(|r| {
        let changed = r.floating_ips != plan.floating_ips || r.applied < plan.revision;
        r.floating_ips = plan.floating_ips;
        r.applied = r.applied.max(plan.revision);
        changed
    });
    Ok(())
}

/// Records the filter tables a pass wrote (once): what the kernel holds, and the ports they
/// guard.
fn filters_in_place(
    shared: &Shared,
    known: &mut Known,
    filtered: &mut Option<((nft::Observed, nft::Observed), BTreeSet<String>)>,
) {
    if let Some((tables, ports)) = filtered.take() {
        known.tables = Some(tables);
        publish(&shared.filtered, ports);
    }
}

/// Replaces a published set when it differs (waiters wake only on a change).
fn publish(sender: &watch::Sender<BTreeSet<String>>, value: BTreeSet<String>) {
    sender.send_if_modified(|old| {
        let changed = *old != value;
        if changed {
            *old = value;
        }
        changed
    });
}

/// Sends the controller what [`Reports`] says, the latest first, retrying with backoff when
/// it does not answer; what it accepted is not sent again.
async fn reporter(shared: Arc<Shared>) {
    let mut wanted = shared.reports.subscribe();
    let mut ports_sent: BTreeMap<String, &'static str> = BTreeMap::new();
    let mut floating_ips_sent: BTreeSet<String> = BTreeSet::new();
    let mut applied_sent = 0;
    let mut backoff = Backoff::default();
    loop {
        let want = wanted.borrow_and_update().clone();
        ports_sent.retain(|id, status| want.ports.get(id) == Some(status));
        floating_ips_sent.retain(|f| want.floating_ips.contains(f));
        let mut failed = None;
        for (id, status) in &want.ports {
            if ports_sent.get(id) == Some(status) {
                continue;
            }
            match report_port(&shared, id, status).await {
                Ok(()) => {
                    ports_sent.insert(id.clone(), status);
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        for id in want.floating_ips.iter().filter(|_| failed.is_none()) {
            if floating_ips_sent.contains(id) {
                continue;
            }
            match report_floating_ip(&shared, id).await {
                Ok(()) => {
                    floating_ips_sent.insert(id.clone());
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if failed.is_none() && want.applied > applied_sent {
            match report_applied(&shared, want.applied).await {
                Ok(()) => applied_sent = want.applied,
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            None => {
                backoff = Backoff::default();
                if wanted.changed().await.is_err() {
                    return;
                }
            }
            Some(e) => {
                tracing::warn!("reporting to the controller: {e}");
                tokio::time::sleep(backoff.next()).await;
            }
        }
    }
}

/// Tells the controller the store revision this node's data plane now reflects (load
/// balancers are ACTIVE once every node that needs them has applied them).
async fn report_applied(shared: &Shared, revision: u64) -> Result<(), AgentError> {
    let path = format!("/isthmus/v1/nodes/{}/applied", shared.config.node);
    report(shared, &path, &json!({ "revision": revision }), &[204]).await
}

/// Tells the controller this node NATs floating IP `id`.
async fn report_floating_ip(shared: &Shared, id: &str) -> Result<(), AgentError> {
    let body = json!({"status": "ACTIVE", "node": shared.config.node});
    let path = format!("/isthmus/v1/floatingips/{id}/status");
    // 404/409: deleted or disassociated since this view was taken.
    report(shared, &path, &body, &[200, 404, 409]).await
}

/// Sends one report; a 5xx is an error (sent again later), another answer than `expected`
/// is logged (retrying would not change it).
async fn report(
    shared: &Shared,
    path: &str,
    body: &serde_json::Value,
    expected: &[u16],
) -> Result<(), AgentError> {
    let (code, answer) = shared
        .config
        .controller
        .request("PUT", path, Some(body))
        .await?;
    if code >= 500 {
        return Err(AgentError::Controller(format!(
            "PUT {path} answered {code}"
        )));
    }
    if !expected.contains(&code) {
        tracing::warn!("PUT {path} answered {code}: {answer}");
    }
    Ok(())
}

/// Tells the controller port `id`'s status.
async fn report_port(shared: &Shared, id: &str, status: &str) -> Result<(), AgentError> {
    let body = json!({"status": status, "node": shared.config.node});
    // 404: the port was deleted since this view was taken.
    report(
        shared,
        &format!("/isthmus/v1/ports/{id}/status"),
        &body,
        &[200, 404],
    )
    .await
}
