//! `isthmus`: the controller, the node agent and `inspect` (and, as it lands, the lab).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use isthmus_controller::Config;
use isthmus_store::{EmbeddedStore, EtcdStore, EtcdTls, SharedStore};

// The controller's hot paths (JSON decode, render, encode of thousands of objects per list)
// are allocation-bound; mimalloc halves their cost against glibc malloc. Built without
// transparent huge pages (`no_thp`): with them its arenas are backed by 2 MiB pages that a
// half-used 64 KiB page keeps resident (23 MB more RSS at 100,000 ports).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "isthmus",
    version,
    about = "One network plane for VMs and containers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How log lines are written to stderr: text, or one JSON object per line (for a log
    /// shipper). Levels come from RUST_LOG (e.g. `info`, `isthmus_agent=debug`; default info).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    /// `2026-12-05T07:00:00.000000Z  INFO isthmus_agent: node n1 registered`.
    Text,
    /// `{"timestamp":...,"level":"INFO","fields":{"message":...},"target":...}`.
    Json,
}

/// Logs of every subcommand go to stderr, filtered by RUST_LOG (default: info).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum StoreKind {
    /// A durable single file under --data-dir (one controller).
    Embedded,
    /// An etcd v3 cluster (several controllers).
    Etcd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AuthKind {
    /// Identity from X-Project-Id / X-Roles headers (Neutron's noauth).
    Noauth,
    /// Keystone v3 tokens (X-Auth-Token).
    Keystone,
}

/// A Keystone user Isthmus authenticates as (the controller validates tokens with it; an
/// agent calls the controller with it).
#[derive(clap::Args)]
struct KeystoneArgs {
    /// Keystone's v3 URL, e.g. http://keystone:5000/v3.
    #[arg(long)]
    keystone_url: Option<String>,
    /// The user's name.
    #[arg(long, default_value = "isthmus")]
    keystone_user: String,
    /// A file holding the user's password (first line).
    #[arg(long)]
    keystone_password_file: Option<PathBuf>,
    /// The project the user's token is scoped to.
    #[arg(long, default_value = "service")]
    keystone_project: String,
    /// The domain of the user and the project.
    #[arg(long, default_value = "Default")]
    keystone_domain: String,
}

/// The Kubernetes cluster whose namespaces and pods the controller follows.
#[derive(clap::Args)]
struct KubernetesArgs {
    /// Watch the cluster of this kubeconfig (its current context).
    #[arg(long, conflicts_with = "kubernetes_in_cluster")]
    kubeconfig: Option<PathBuf>,
    /// Watch the cluster this controller runs in (its pod's service account).
    #[arg(long)]
    kubernetes_in_cluster: bool,
    /// Namespace of the Lease that makes one controller the cluster's writer.
    #[arg(long, default_value = "kube-system")]
    kubernetes_lease_namespace: String,
    /// Seconds a silent leader keeps the Lease before another controller takes over.
    #[arg(long, default_value_t = 15)]
    kubernetes_lease_seconds: u64,
    /// This controller's identity in the Lease (default: host name and process id).
    #[arg(long)]
    controller_id: Option<String>,
    /// Seconds a pod's port outlives its pod (deleted from the cluster without its
    /// runtime calling the CNI DEL) before it is deleted.
    #[arg(long, default_value_t = 60)]
    pod_port_grace_seconds: u64,
    /// The Neutron subnet (id or name) whose CIDR is the cluster's service CIDR: Services
    /// become load balancers with their cluster IP as VIP, claimed in it. Without it
    /// Services are not followed.
    #[arg(long)]
    service_subnet: Option<String>,
    /// The external network (id or name) whose floating IPs `type: LoadBalancer` Services
    /// get.
    #[arg(long, requires = "service_subnet")]
    external_network: Option<String>,
    /// The cluster's DNS domain: the node-local resolvers answer `<svc>.<ns>.svc.<domain>`,
    /// and pods search it.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
}

impl KubernetesArgs {
    /// The watcher's settings, when a cluster is given.
    async fn settings(&self) -> anyhow::Result<Option<isthmus_controller::kubernetes::Settings>> {
        use isthmus_controller::kubernetes::{connect, Cluster, LeaseConfig, Settings};
        let cluster = match (&self.kubeconfig, self.kubernetes_in_cluster) {
            (Some(path), _) => Cluster::Kubeconfig(path.clone()),
            (None, true) => Cluster::InCluster,
            (None, false) => return Ok(None),
        };
        let label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if !self
            .cluster_domain
            .trim_end_matches('.')
            .split('.')
            .all(label)
        {
            bail!("--cluster-domain {} is not a DNS name", self.cluster_domain);
        }
        if self.kubernetes_lease_seconds < 2 {
            bail!("--kubernetes-lease-seconds takes at least 2");
        }
        let identity = match &self.controller_id {
            Some(id) => id.clone(),
            None => {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_owned())
                    .unwrap_or_else(|_| "isthmus".to_owned());
                format!("{host}-{}", std::process::id())
            }
        };
        Ok(Some(Settings {
            client: connect(&cluster).await?,
            lease: LeaseConfig {
                namespace: self.kubernetes_lease_namespace.clone(),
                name: "isthmus-controller".to_owned(),
                identity,
                duration: std::time::Duration::from_secs(self.kubernetes_lease_seconds),
            },
            pod_grace: std::time::Duration::from_secs(self.pod_port_grace_seconds),
            services: self.service_subnet.clone().map(|subnet| {
                isthmus_controller::kubernetes::ServiceSettings {
                    subnet,
                    external_network: self.external_network.clone(),
                }
            }),
            cluster_domain: self
                .cluster_domain
                .trim_end_matches('.')
                .to_ascii_lowercase(),
        }))
    }
}

impl KeystoneArgs {
    /// The user and password, when a Keystone URL is given.
    fn credentials(&self) -> anyhow::Result<Option<(String, String)>> {
        let Some(url) = &self.keystone_url else {
            return Ok(None);
        };
        let file = self
            .keystone_password_file
            .as_ref()
            .context("--keystone-url needs --keystone-password-file")?;
        let password =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let password = password.lines().next().unwrap_or_default().to_owned();
        if password.is_empty() {
            bail!("{} holds no password", file.display());
        }
        Ok(Some((url.clone(), password)))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Neutron v2.0 API (and Octavia's v2 under /v2/lbaas).
    Controller {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9696")]
        listen: SocketAddr,
        /// A second address serving the same APIs, for a load-balancer catalog entry of its
        /// own (Octavia's usual port is 9876).
        #[arg(long)]
        octavia_listen: Option<SocketAddr>,
        /// Store backend.
        #[arg(long, value_enum, default_value = "embedded")]
        store: StoreKind,
        /// Directory of the embedded store.
        #[arg(long, default_value = "./isthmus-data")]
        data_dir: PathBuf,
        /// etcd endpoints, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
        etcd_endpoints: Vec<String>,
        /// Key prefix in etcd (several deployments can share a cluster).
        #[arg(long, default_value = "")]
        etcd_prefix: String,
        /// CA certificate (PEM) that signed etcd's server certificate: talk to etcd over TLS
        /// (`https://` endpoints).
        #[arg(long)]
        etcd_cacert: Option<PathBuf>,
        /// Client certificate (PEM) for etcd's `--client-cert-auth` (with --etcd-key).
        #[arg(long, requires = "etcd_key", requires = "etcd_cacert")]
        etcd_cert: Option<PathBuf>,
        /// Private key (PEM) of --etcd-cert.
        #[arg(long, requires = "etcd_cert")]
        etcd_key: Option<PathBuf>,
        /// MTU of the underlay; VXLAN networks get 50 bytes less.
        #[arg(long, default_value_t = 1500)]
        underlay_mtu: u32,
        /// DNS domain of ports whose network has none.
        #[arg(long, default_value = "openstack.local.")]
        dns_domain: String,
        /// Seconds without a heartbeat after which a node's router gateways (SNAT, central
        /// floating IPs) move to another node mapping the physnet (agents beat every
        /// --heartbeat-seconds, 10 by default).
        #[arg(long, default_value_t = 30)]
        gateway_down_seconds: u64,
        /// Seconds between compactions of the store's history.
        #[arg(long, default_value_t = 300)]
        compact_every_seconds: u64,
        /// Revisions of history compaction keeps (a watch resuming from further back re-lists).
        #[arg(long, default_value_t = 100_000)]
        history_kept: u64,
        /// Time to live of the leader's lease: the controller that leads runs the sweeps,
        /// compaction and gateway failover; when it dies another takes over after about this.
        #[arg(long, default_value_t = 5)]
        leader_lease_seconds: u64,
        /// How callers are identified: Keystone tokens, or Neutron's noauth headers (the
        /// default on a loopback address; elsewhere it must be asked for).
        #[arg(long, value_enum)]
        auth: Option<AuthKind>,
        #[command(flatten)]
        keystone: KeystoneArgs,
        /// Seconds a validated token is trusted before Keystone is asked again (it never
        /// outlives the token itself).
        #[arg(long, default_value_t = 300)]
        token_cache_seconds: u64,
        #[command(flatten)]
        kubernetes: KubernetesArgs,
    },
    /// Run a node agent: register the node and keep its kernel in line with the controller.
    Agent {
        /// Node name (what ports bind to with binding:host_id).
        #[arg(long)]
        node: String,
        /// Underlay address VXLAN tunnels use.
        #[arg(long)]
        tunnel_ip: std::net::IpAddr,
        /// Controller URL, or several separated by commas (controllers sharing one etcd): the
        /// agent moves to the next when one fails or its watch goes silent.
        #[arg(long, default_value = "http://127.0.0.1:9696")]
        controller: String,
        /// Physical network mapping NAME:IFACE (repeatable).
        #[arg(long = "physnet")]
        physnets: Vec<String>,
        /// Seconds between heartbeats.
        #[arg(long, default_value_t = 10)]
        heartbeat_seconds: u64,
        /// Where attachment records live (one directory per agent on a shared machine).
        #[arg(long, default_value = "/var/lib/isthmus")]
        state_dir: PathBuf,
        /// The unix socket the isthmus-cni plugin forwards to.
        #[arg(long, default_value = isthmus_agent::DEFAULT_CNI_SOCKET)]
        cni_socket: PathBuf,
        /// Network (id or name) for pods whose CNI configuration and namespace name none.
        #[arg(long)]
        default_pod_network: Option<String>,
        /// Pod ports kept ready at least per (network, project) used on this node (0: no
        /// pool); a pool doubles when ADDs drain it and halves after a minute without ADDs.
        #[arg(long, default_value_t = 2)]
        pool_size: usize,
        /// Pod ports a pool grows to at most.
        #[arg(long, default_value_t = 64)]
        pool_max: usize,
        /// Where router namespaces are pinned (`ip netns` uses /run/netns; one directory per
        /// agent on a shared machine).
        #[arg(long, default_value = isthmus_agent::DEFAULT_NETNS_DIR)]
        netns_dir: PathBuf,
        #[command(flatten)]
        keystone: KeystoneArgs,
        /// The node's network namespace is Isthmus's alone: turn br_netfilter's namespace-wide
        /// switches (net.bridge.bridge-nf-call-*) off, so that only bridges with port-security
        /// ports pay for netfilter. Without it they are left as found (Kubernetes nodes and
        /// hosts with other bridges usually need them on; Isthmus filters either way).
        #[arg(long)]
        own_br_netfilter: bool,
        /// Nova's metadata API (http://HOST:8775): instances reach it at 169.254.169.254
        /// through the agent, which tells Nova who they are with signed headers. Without it
        /// that address answers nothing.
        #[arg(long, requires = "metadata_secret_file")]
        metadata_url: Option<String>,
        /// File holding the secret shared with Nova (its
        /// `[neutron] metadata_proxy_shared_secret`).
        #[arg(long, requires = "metadata_url")]
        metadata_secret_file: Option<PathBuf>,
        /// DNS server for names that are not instances' (repeatable; default: the host's
        /// /etc/resolv.conf servers).
        #[arg(long = "dns-upstream")]
        dns_upstream: Vec<std::net::SocketAddr>,
    },
    /// A whole cloud in network namespaces on this machine (root): controller, nodes with
    /// agents, a VM and a pod on one network.
    Lab {
        #[command(subcommand)]
        action: LabAction,
        /// Namespace prefix (state under /run/<name>).
        #[arg(long, global = true, default_value = "isthmus-lab")]
        name: String,
    },
    /// Show what this node's kernel holds (run on the node, e.g. inside its namespace):
    /// bridges, tunnels, forwarding entries, filters, router namespaces.
    Inspect {
        /// Also list the ports the controller binds to this node.
        #[arg(long)]
        node: Option<String>,
        /// Controller URL (with --node).
        #[arg(long, default_value = "http://127.0.0.1:9696")]
        controller: String,
        /// Where the agent pins router namespaces (its `--netns-dir`).
        #[arg(long, default_value = isthmus_agent::DEFAULT_NETNS_DIR)]
        netns_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum LabAction {
    /// Builds the lab and runs the VM + pod scenario; the lab stays up.
    Up {
        /// Nodes (the VM lands on the first, the pod on the last).
        #[arg(long, default_value_t = 2)]
        nodes: usize,
    },
    /// Shows namespaces, processes, agents and ports.
    Status,
    /// Removes every namespace, device, process and file of the lab.
    Down,
}

fn lab(action: LabAction, name: String) -> anyhow::Result<()> {
    let place = isthmus_lab::scenario::Place::named(&name)?;
    if let Some(why) = isthmus_lab::unavailable() {
        bail!("isthmus lab: {why}");
    }
    let mut out = std::io::stdout();
    match action {
        LabAction::Up { nodes } => {
            if !(1..=200).contains(&nodes) {
                bail!("--nodes takes 1 to 200");
            }
            if !isthmus_lab::scenario::namespaces(&place.prefix).is_empty() {
                bail!(
                    "a lab named {} is already up: `isthmus lab down` first",
                    place.prefix
                );
            }
            let bin = std::env::current_exe().context("locating the isthmus binary")?;
            let plugin = bin.with_file_name("isthmus-cni");
            if !plugin.exists() {
                bail!(
                    "{} is missing: build both binaries with `cargo build --release`",
                    plugin.display()
                );
            }
            let result = isthmus_lab::scenario::up(&place, nodes, &bin, &plugin, &mut out);
            if let Err(e) = result {
                // Leave nothing half-built behind.
                let _ = isthmus_lab::scenario::down(&place, &mut std::io::sink());
                bail!("isthmus lab up: {e}");
            }
        }
        LabAction::Status => isthmus_lab::scenario::status(&place, &mut out)?,
        LabAction::Down => isthmus_lab::scenario::down(&place, &mut out)?,
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Controller {
            listen,
            octavia_listen,
            store,
            data_dir,
            etcd_endpoints,
            etcd_prefix,
            etcd_cacert,
            etcd_cert,
            etcd_key,
            underlay_mtu,
            dns_domain,
            gateway_down_seconds,
            compact_every_seconds,
            history_kept,
            leader_lease_seconds,
            auth,
            keystone,
            token_cache_seconds,
            kubernetes,
        } => {
            if underlay_mtu < 68 + 50 {
                bail!("--underlay-mtu {underlay_mtu} is too small for VXLAN (needs at least 118)");
            }
            let store: SharedStore = match store {
                StoreKind::Embedded => {
                    let path = data_dir.join("isthmus.redb");
                    Arc::new(
                        EmbeddedStore::open(&path).with_context(|| {
                            format!("opening embedded store {}", path.display())
                        })?,
                    )
                }
                StoreKind::Etcd => {
                    let read = |path: &PathBuf| {
                        std::fs::read(path).with_context(|| format!("reading {}", path.display()))
                    };
                    let tls = match (&etcd_cacert, &etcd_cert, &etcd_key) {
                        (Some(ca), cert, key) => Some(EtcdTls {
                            ca: read(ca)?,
                            identity: match (cert, key) {
                                (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
                                _ => None,
                            },
                        }),
                        (None, _, _) => None,
                    };
                    Arc::new(
                        EtcdStore::connect_with(&etcd_endpoints, &etcd_prefix, tls.as_ref())
                            .await
                            .with_context(|| {
                                format!("connecting to etcd at {}", etcd_endpoints.join(","))
                            })?,
                    )
                }
            };
            let dns_domain = if dns_domain.ends_with('.') {
                dns_domain
            } else {
                format!("{dns_domain}.")
            };
            let config = Config {
                underlay_mtu,
                dns_domain,
                gateway_down_seconds,
                compact_every: std::time::Duration::from_secs(compact_every_seconds.max(1)),
                history_kept,
                leader_lease: std::time::Duration::from_secs(leader_lease_seconds.max(1)),
                ..Config::default()
            };
            let auth = match (auth, keystone.credentials()?) {
                (Some(AuthKind::Keystone), Some((url, password))) => {
                    let keystone =
                        isthmus_controller::Keystone::new(isthmus_controller::KeystoneConfig {
                            url,
                            user: keystone.keystone_user,
                            password,
                            project: keystone.keystone_project,
                            domain: keystone.keystone_domain,
                            cache_ttl: std::time::Duration::from_secs(token_cache_seconds),
                        });
                    keystone
                        .login()
                        .await
                        .map_err(anyhow::Error::msg)
                        .context("the controller's Keystone user cannot authenticate")?;
                    isthmus_controller::Auth::Keystone(Box::new(keystone))
                }
                (Some(AuthKind::Keystone), None) => {
                    bail!("--auth keystone needs --keystone-url and --keystone-password-file")
                }
                (Some(AuthKind::Noauth), _) => {
                    if let Some(addr) = octavia_listen.filter(|a| !a.ip().is_loopback()) {
                        tracing::warn!(
                            "noauth on {addr}: anyone who reaches \
                             this address acts as whatever project and role they claim"
                        );
                    }
                    if !listen.ip().is_loopback() {
                        tracing::warn!(
                            "noauth on {listen}: anyone who reaches \
                             this address acts as whatever project and role they claim"
                        );
                    }
                    isthmus_controller::Auth::NoAuth
                }
                (None, _)
                    if listen.ip().is_loopback()
                        && octavia_listen.is_none_or(|a| a.ip().is_loopback()) =>
                {
                    isthmus_controller::Auth::NoAuth
                }
                (None, _) => bail!(
                    "refusing to serve {listen} without authentication: give --auth keystone \
                     (with --keystone-url ...) or, knowingly, --auth noauth"
                ),
            };
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            tracing::info!("Neutron v2.0 API on http://{listen}/v2.0, Octavia v2 API on http://{listen}/v2/lbaas");
            let octavia = match octavia_listen {
                Some(addr) => {
                    let l = tokio::net::TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("cannot listen on {addr}"))?;
                    tracing::info!("Octavia v2 API also on http://{addr}/v2/lbaas");
                    Some(l)
                }
                None => None,
            };
            let kubernetes = kubernetes.settings().await?;
            isthmus_controller::serve(
                listener,
                octavia,
                store,
                config,
                auth,
                kubernetes,
                shutdown_signal(),
            )
            .await?;
            Ok(())
        }
        Command::Agent {
            node,
            tunnel_ip,
            controller,
            physnets,
            heartbeat_seconds,
            state_dir,
            cni_socket,
            default_pod_network,
            pool_size,
            pool_max,
            netns_dir,
            keystone,
            own_br_netfilter,
            metadata_url,
            metadata_secret_file,
            dns_upstream,
        } => {
            let physnets = physnets
                .iter()
                .map(|p| isthmus_agent::parse_physnet(p))
                .collect::<Result<_, _>>()?;
            let config = isthmus_agent::Config {
                node,
                tunnel_ip,
                controller: match keystone.credentials()? {
                    Some((url, password)) => isthmus_agent::Endpoint::parse(&controller)?
                        .with_keystone(isthmus_agent::http::KeystoneLogin::new(
                            &url,
                            &keystone.keystone_user,
                            password,
                            &keystone.keystone_project,
                            &keystone.keystone_domain,
                        )?),
                    None => isthmus_agent::Endpoint::parse(&controller)?,
                },
                physnets,
                heartbeat: std::time::Duration::from_secs(heartbeat_seconds.max(1)),
                state_dir,
                cni_socket,
                default_pod_network,
                pool_size,
                pool_max,
                netns_dir,
                own_br_netfilter,
                metadata: match (metadata_url, metadata_secret_file) {
                    (Some(url), Some(file)) => {
                        Some(isthmus_agent::MetadataConfig::new(&url, &file)?)
                    }
                    _ => None,
                },
                dns_upstream: if dns_upstream.is_empty() {
                    isthmus_agent::host_name_servers()
                } else {
                    dns_upstream
                },
            };
            tokio::select! {
                result = isthmus_agent::run(config) => result?,
                _ = shutdown_signal() => {}
            }
            Ok(())
        }
        Command::Lab { action, name } => lab(action, name),
        Command::Inspect {
            node,
            controller,
            netns_dir,
        } => {
            let endpoint = isthmus_agent::Endpoint::parse(&controller)?;
            let report = isthmus_agent::inspect::report(
                node.as_deref(),
                node.as_ref().map(|_| &endpoint),
                &netns_dir,
            )
            .await?;
            print!("{report}");
            Ok(())
        }
    }
}
