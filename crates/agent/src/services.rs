//! What the agent runs inside the node's DHCP namespaces (`qdhcp-<network>`), started when a
//! namespace appears and stopped when it goes: DNS on port 53 of the DHCP port's addresses,
//! the metadata proxy on 169.254.169.254:80 (with `--metadata-url`), the nested CNI on
//! 169.254.169.254:9697 (pods inside VMs ask for their subports there), and a sink for DHCP
//! requests sent to the DHCP port's address (renewals are answered from the tap they came in
//! on; the namespace must not answer them with an ICMP port unreachable).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use isthmus_dataplane::dhcp::{METADATA_IP, NAMESPACE_PREFIX, SERVER_PORT};
use isthmus_dataplane::router::RouterState;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::dns::NameTable;
use crate::metadata::{Instances, Proxy};
use crate::nested::Nested;
use crate::{AgentError, MetadataConfig};

/// The tasks serving each DHCP namespace.
pub struct Services {
    running: Mutex<BTreeMap<String, Vec<AbortHandle>>>,
    instances: watch::Sender<Arc<Instances>>,
    names: watch::Sender<Arc<NameTable>>,
    proxy: Option<Arc<Proxy>>,
    nested: OnceLock<Arc<Nested>>,
    upstream: Arc<Vec<SocketAddr>>,
}

impl Services {
    /// Services with the metadata proxy when `metadata` is set, forwarding DNS to `upstream`.
    pub fn new(metadata: Option<MetadataConfig>, upstream: Vec<SocketAddr>) -> Services {
        let instances = watch::Sender::new(Arc::default());
        let proxy = metadata.map(|m| Arc::new(Proxy::new(m, instances.subscribe())));
        Services {
            running: Mutex::default(),
            instances,
            names: watch::Sender::new(Arc::default()),
            proxy,
            nested: OnceLock::new(),
            upstream: Arc::new(upstream),
        }
    }

    /// Who may ask for metadata (and nested subports), as [`Services::follow`] last set it.
    pub fn instances(&self) -> watch::Receiver<Arc<Instances>> {
        self.instances.subscribe()
    }

    /// Serves the nested CNI with `nested` in every DHCP namespace started from now on.
    pub fn serve_nested(&self, nested: Nested) {
        let _ = self.nested.set(Arc::new(nested));
    }

    /// The nested CNI's handler, once served.
    pub fn nested(&self) -> Option<Arc<Nested>> {
        self.nested.get().cloned()
    }

    /// Starts what is missing in the DHCP namespaces of `namespaces` and stops what runs in
    /// namespaces no longer there; `instances` is who may ask for metadata, `names` what each
    /// network resolves. A namespace whose sockets cannot be made yet is tried again at the
    /// next pass.
    pub fn follow(
        &self,
        dir: &Path,
        namespaces: &RouterState,
        instances: Instances,
        names: NameTable,
        node: &str,
    ) {
        replace_if_changed(&self.instances, instances);
        replace_if_changed(&self.names, names);
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.retain(|name, tasks| {
            let keep = namespaces.contains_key(name);
            if !keep {
                tasks.iter().for_each(AbortHandle::abort);
            }
            keep
        });
        for name in namespaces
            .keys()
            .filter(|n| n.starts_with(NAMESPACE_PREFIX))
        {
            if running.contains_key(name) {
                continue;
            }
            match self.start(dir, name) {
                Ok(tasks) => {
                    running.insert(name.clone(), tasks);
                }
                Err(e) => tracing::warn!("{node}: services of {name} not started: {e}"),
            }
        }
    }

    fn start(&self, dir: &Path, name: &str) -> Result<Vec<AbortHandle>, AgentError> {
        let with_metadata = self.proxy.is_some();
        let (sink, dns, metadata, nested) = crate::netns::run_in(dir, name, move || {
            let sink =
                std::net::UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, SERVER_PORT)))?;
            sink.set_nonblocking(true)?;
            // Dual-stack: IPv4 clients arrive as v4-mapped addresses, DHCPv6 clients on the
            // DHCP port's IPv6 address.
            let dns =
                std::net::UdpSocket::bind(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 53)))?;
            dns.set_nonblocking(true)?;
            let metadata = if with_metadata {
                let listener = std::net::TcpListener::bind(SocketAddr::from((METADATA_IP, 80)))?;
                listener.set_nonblocking(true)?;
                Some(listener)
            } else {
                None
            };
            let nested = std::net::TcpListener::bind(SocketAddr::from((
                METADATA_IP,
                isthmus_cni::NESTED_PORT,
            )))?;
            nested.set_nonblocking(true)?;
            Ok((sink, dns, metadata, nested))
        })?;
        let network = name.trim_start_matches(NAMESPACE_PREFIX).to_owned();
        let sink = tokio::net::UdpSocket::from_std(sink)?;
        let mut tasks = vec![tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while sink.recv(&mut buf).await.is_ok() {}
        })
        .abort_handle()];
        // One server task per core: a query costs little more than its two system calls.
        let dns = Arc::new(tokio::net::UdpSocket::from_std(dns)?);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        for _ in 0..cores {
            tasks.push(
                tokio::spawn(crate::dns::serve(
                    dns.clone(),
                    network.clone(),
                    self.names.subscribe(),
                    self.upstream.clone(),
                ))
                .abort_handle(),
            );
        }
        if let Some(handler) = self.nested.get() {
            let listener = tokio::net::TcpListener::from_std(nested)?;
            tasks.push(
                tokio::spawn(crate::nested::serve(
                    listener,
                    network.clone(),
                    handler.clone(),
                ))
                .abort_handle(),
            );
        }
        if let (Some(listener), Some(proxy)) = (metadata, &self.proxy) {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            tasks.push(
                tokio::spawn(crate::metadata::serve(listener, network, proxy.clone()))
                    .abort_handle(),
            );
        }
        Ok(tasks)
    }
}

/// Replaces what a watch holds when it differs (watchers wake only on a change).
pub(crate) fn replace_if_changed<T: PartialEq>(sender: &watch::Sender<Arc<T>>, value: T) {
    sender.send_if_modified(|old| {
        let changed = **old != value;
        if changed {
            *old = Arc::new(value);
        }
        changed
    });
}
