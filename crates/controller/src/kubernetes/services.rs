//! Services → load balancers. Reflectors on Services and EndpointSlices mark the Services an
//! event touches; a pass computes each marked Service's load balancer (VIP = its cluster IP on
//! the service subnet) and performs the steps from what the store holds, through the same
//! Octavia and Neutron resource code the APIs use (as an admin of the service subnet's
//! project). `type: LoadBalancer` adds a floating IP on the VIP port and writes it to the
//! Service's status. Nothing here is per node: agents compute their rules from the objects.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use isthmus_model::dns_record::{DnsRecord, NamedPort};
use isthmus_model::kubernetes::service::{
    current, name_addresses, name_ports, plan, service_of, service_tag, Current, Endpoint,
    EndpointPort, EndpointSlice, ListenerKey, ServicePort, ServiceSpec, Step, Wanted,
};
use isthmus_model::kubernetes::{is_dns_label, protocol};
use isthmus_model::lbaas::LoadBalancer;
use isthmus_model::{Caller, Error, Result};
use k8s_openapi::api::core::v1::Service as KubeService;
use k8s_openapi::api::discovery::v1::EndpointSlice as KubeSlice;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::Client;
use serde_json::{json, Value};
use tokio::sync::Notify;

use super::{Cache, RETRY_FAILED};
use crate::{Registry, Service};

/// Where Services' load balancers go.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// The service subnet (id or name): a Neutron subnet whose CIDR is the cluster's service
    /// CIDR; cluster IPs are claimed in it.
    pub subnet: String,
    /// The external network (id or name) floating IPs of `type: LoadBalancer` Services come
    /// from.
    pub external_network: Option<String>,
}

/// The label naming an EndpointSlice's Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// `sessionAffinityConfig.clientIP.timeoutSeconds` when not given.
const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// (namespace, name) of a Service.
type ServiceKey = (String, String);

/// Services to look at in the next pass.
#[derive(Default)]
struct Dirty {
    all: bool,
    services: HashSet<ServiceKey>,
}

/// (namespace, name) of an EndpointSlice.
type SliceId = (String, String);

/// Which EndpointSlices each Service has, as the reflector's events tell: a pass reads its
/// marked Services' slices, not every slice of the cluster.
#[derive(Default)]
struct SliceIndex {
    by_service: HashMap<ServiceKey, HashSet<SliceId>>,
    service_of: HashMap<SliceId, ServiceKey>,
}

impl SliceIndex {
    fn apply(&mut self, slice: &KubeSlice) {
        let Some(id) = slice_id(slice) else {
            return;
        };
        self.remove(&id);
        if let Some(key) = service_key(slice) {
            self.by_service
                .entry(key.clone())
                .or_default()
                .insert(id.clone());
            self.service_of.insert(id, key);
        }
    }

    fn remove(&mut self, id: &SliceId) {
        let Some(key) = self.service_of.remove(id) else {
            return;
        };
        if let Some(ids) = self.by_service.get_mut(&key) {
            ids.remove(id);
            if ids.is_empty() {
                self.by_service.remove(&key);
            }
        }
    }
}

/// The slice index, and the one a relist is building.
#[derive(Default)]
struct Slices {
    index: SliceIndex,
    relisting: Option<SliceIndex>,
}

impl Slices {
    /// Follows one event of the EndpointSlice reflector.
    fn follow(&mut self, event: &watcher::Event<KubeSlice>) {
        match event {
            watcher::Event::Apply(s) => self.index.apply(s),
            watcher::Event::Delete(s) => {
                if let Some(id) = slice_id(s) {
                    self.index.remove(&id);
                }
            }
            watcher::Event::Init => self.relisting = Some(SliceIndex::default()),
            watcher::Event::InitApply(s) => {
                if let Some(relisting) = &mut self.relisting {
                    relisting.apply(s);
                }
            }
            watcher::Event::InitDone => {
                if let Some(relisting) = self.relisting.take() {
                    self.index = relisting;
                }
            }
        }
    }
}

/// The Services part of the watcher.
pub(super) struct Services {
    settings: ServiceSettings,
    /// The zone Services' names are in: `svc.<cluster domain>.`.
    zone: String,
    services: Cache<KubeService>,
    slices: Cache<KubeSlice>,
    slice_index: Arc<Mutex<Slices>>,
    dirty: Arc<Mutex<Dirty>>,
    /// Services whose last pass failed, and when (tried again after [`RETRY_FAILED`]).
    failed: HashMap<ServiceKey, Instant>,
    /// Why the service subnet could not be found last time (said once).
    missing_subnet: Option<String>,
    octavia: Registry,
    neutron: Registry,
}

fn lock<T>(shared: &Mutex<T>) -> MutexGuard<'_, T> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// One Service's pass, prepared under the mirror's lock.
struct Job {
    key: ServiceKey,
    spec: ServiceSpec,
    /// The addresses in `status.loadBalancer.ingress`.
    ingress: Vec<String>,
    wanted: Option<Wanted>,
    /// What its name resolves to.
    addresses: Vec<IpAddr>,
    /// Its named ports (SRV records).
    named_ports: Vec<NamedPort>,
    current: Option<Current>,
    /// Floating IPs on the VIP port: (id, address, made for this Service).
    floating_ips: Vec<(String, IpAddr, bool)>,
}

impl Services {
    /// Starts the reflectors.
    pub(super) fn start(
        client: &Client,
        settings: ServiceSettings,
        cluster_domain: &str,
        changed: Arc<Notify>,
    ) -> Self {
        let dirty = Arc::new(Mutex::new(Dirty {
            all: true,
            ..Dirty::default()
        }));
        let marks = dirty.clone();
        let services = Cache::start(
            Api::all(client.clone()),
            "services",
            changed.clone(),
            move |event: &watcher::Event<KubeService>| {
                let mut d = lock(&marks);
                match event {
                    watcher::Event::Apply(s) | watcher::Event::Delete(s) => {
                        if let (Some(ns), Some(name)) = (&s.metadata.namespace, &s.metadata.name) {
                            d.services.insert((ns.clone(), name.clone()));
                        }
                    }
                    _ => d.all = true,
                }
            },
        );
        let marks = dirty.clone();
        let slice_index = Arc::new(Mutex::new(Slices::default()));
        let indexed = slice_index.clone();
        let slices = Cache::start(
            Api::all(client.clone()),
            "endpointslices",
            changed,
            move |event: &watcher::Event<KubeSlice>| {
                lock(&indexed).follow(event);
                let mut d = lock(&marks);
                match event {
                    watcher::Event::Apply(s) | watcher::Event::Delete(s) => {
                        if let Some(key) = service_key(s) {
                            d.services.insert(key);
                        }
                    }
                    _ => d.all = true,
                }
            },
        );
        Services {
            settings,
            zone: format!("svc.{}.", cluster_domain.trim_end_matches('.')),
            services,
            slices,
            slice_index,
            dirty,
            failed: HashMap::new(),
            missing_subnet: None,
            octavia: Registry::octavia(),
            neutron: Registry::neutron(),
        }
    }

    /// Makes the next pass look at every Service.
    pub(super) fn mark_all(&self) {
        lock(&self.dirty).all = true;
    }

    /// Brings the load balancers of the marked Services in line.
    pub(super) async fn sync(&mut self, service: &Arc<Service>, client: &Client) {
        if !self.services.ready() || !self.slices.ready() {
            return;
        }
        let (all, mut keys) = {
            let mut d = lock(&self.dirty);
            (std::mem::take(&mut d.all), std::mem::take(&mut d.services))
        };
        self.failed.retain(|key, at| {
            let due = at.elapsed() >= RETRY_FAILED;
            if due {
                keys.insert(key.clone());
            }
            !due
        });
        if !all && keys.is_empty() {
            return;
        }
        let subnet = match service.resolve_subnet(&self.settings.subnet).await {
            Ok(subnet) => {
                self.missing_subnet = None;
                subnet
            }
            Err(e) => {
                let why = e.to_string();
                if self.missing_subnet.as_ref() != Some(&why) {
                    tracing::warn!(
                        "service subnet {}: {why}; Services wait for it",
                        self.settings.subnet
                    );
                    self.missing_subnet = Some(why);
                }
                let mut d = lock(&self.dirty);
                d.all |= all;
                d.services.extend(keys);
                return;
            }
        };
        let caller = Caller::admin(&subnet.meta.project_id);
        let (jobs, orphans) = self.prepare(service, &subnet.network_id, all, &keys);
        for lb in orphans {
            if let Err(e) = self.delete_balancer(service, &caller, &lb).await {
                tracing::warn!("deleting the load balancer of a gone Service: {e}");
            }
        }
        if let Err(e) = self.forget_names(service, all, &keys).await {
            tracing::warn!("removing the names of gone Services: {e}");
        }
        for job in jobs {
            let key = job.key.clone();
            let outcome = self
                .apply(
                    service,
                    client,
                    &caller,
                    &subnet.meta.id,
                    &subnet.network_id,
                    job,
                )
                .await;
            if let Err(e) = outcome {
                tracing::warn!("Service {}/{}: {e}", key.0, key.1);
                self.failed.insert(key, Instant::now());
            }
        }
    }

    /// Makes `<svc>.<ns>.svc.<domain>` resolve to what the Service's job says (or not at all).
    async fn name(&self, service: &Service, network_id: &str, job: &Job) -> Result<()> {
        if !is_dns_label(&job.key.0) || !is_dns_label(&job.key.1) {
            return Err(Error::BadRequest(
                "the Service's name or namespace is not a DNS label".into(),
            ));
        }
        let id = format!("{}/{}", job.key.0, job.key.1);
        if job.addresses.is_empty() {
            return service.delete_dns_record(&id).await;
        }
        service
            .put_dns_record(&DnsRecord {
                fqdn: format!("{}.{}.{}", job.key.1, job.key.0, self.zone).to_ascii_lowercase(),
                zone: self.zone.clone(),
                id,
                addresses: job.addresses.clone(),
                network_id: network_id.to_owned(),
                ports: job.named_ports.clone(),
            })
            .await
    }

    /// Removes the names of Services gone from the cluster: the marked ones, or (on a full
    /// pass) every record without its Service.
    async fn forget_names(
        &self,
        service: &Service,
        all: bool,
        keys: &HashSet<ServiceKey>,
    ) -> Result<()> {
        let live = |id: &str| {
            id.split_once('/').is_some_and(|(ns, name)| {
                self.services
                    .store
                    .get(&ObjectRef::new(name).within(ns))
                    .is_some()
            })
        };
        let candidates: Vec<String> = if all {
            service.dns_record_ids().await?
        } else {
            keys.iter()
                .map(|(ns, name)| format!("{ns}/{name}"))
                .collect()
        };
        for id in candidates.iter().filter(|id| !live(id)) {
            service.delete_dns_record(id).await?;
        }
        Ok(())
    }

    /// The jobs of this pass and the load balancers whose Service is gone, read from the
    /// reflectors and the mirror.
    fn prepare(
        &self,
        service: &Service,
        service_network: &str,
        all: bool,
        keys: &HashSet<ServiceKey>,
    ) -> (Vec<Job>, Vec<Current>) {
        let services: Vec<Arc<KubeService>> = if all {
            self.services.store.state()
        } else {
            keys.iter()
                .filter_map(|(ns, name)| self.services.store.get(&ObjectRef::new(name).within(ns)))
                .collect()
        };
        let mut slices: HashMap<ServiceKey, Vec<EndpointSlice>> = HashMap::new();
        let mut add = |slice: &KubeSlice| {
            if let (Some(key), Some(s)) = (service_key(slice), endpoint_slice(slice)) {
                slices.entry(key).or_default().push(s);
            }
        };
        if all {
            for slice in self.slices.store.state() {
                add(&slice);
            }
        } else {
            let index = lock(&self.slice_index);
            for key in keys {
                for (ns, name) in index.index.by_service.get(key).into_iter().flatten() {
                    let slice = self.slices.store.get(&ObjectRef::new(name).within(ns));
                    // The store may be a step ahead of the index: its label decides.
                    if let Some(slice) = slice.filter(|s| service_key(s).as_ref() == Some(key)) {
                        add(&slice);
                    }
                }
            }
        }
        let mirror = service.informer().mirror();
        let balancers: HashMap<&str, &LoadBalancer> = mirror
            .load_balancers_on(service_network)
            .filter_map(|lb| service_of(lb).map(|uid| (uid, lb)))
            .collect();
        let floating = |current: &Current, tag: &str| {
            mirror
                .floating_ips_of(&current.vip_port_id)
                .map(|f| {
                    (
                        f.meta.id.clone(),
                        f.floating_ip_address,
                        f.meta.tags.iter().any(|t| t == tag),
                    )
                })
                .collect::<Vec<_>>()
        };
        let mut jobs = Vec::new();
        for svc in &services {
            let Some((spec, ingress)) = service_spec(svc) else {
                continue;
            };
            let key = (spec.namespace.clone(), spec.name.clone());
            let own: Vec<&EndpointSlice> = slices.get(&key).into_iter().flatten().collect();
            let wanted = isthmus_model::kubernetes::service::wanted(&spec, &own);
            let addresses = name_addresses(&spec, &own);
            let named_ports = name_ports(&spec, &own)
                .into_iter()
                .map(|(name, protocol, port)| NamedPort {
                    name,
                    protocol: protocol.as_str().to_ascii_lowercase(),
                    port,
                })
                .collect();
            let current = balancers
                .get(spec.uid.as_str())
                .map(|lb| current(&mirror, lb));
            let floating_ips = current
                .as_ref()
                .map(|c| floating(c, &service_tag(&spec.uid)))
                .unwrap_or_default();
            jobs.push(Job {
                key,
                spec,
                ingress,
                wanted,
                addresses,
                named_ports,
                current,
                floating_ips,
            });
        }
        // A Service deleted (a marked key gone from the cache, or any on a full pass): load
        // balancers of UIDs no longer in the cluster go.
        let deleted = all || services.len() < keys.len();
        let orphans = if deleted {
            let live: HashSet<String> = self
                .services
                .store
                .state()
                .iter()
                .filter_map(|s| s.metadata.uid.clone())
                .collect();
            balancers
                .into_iter()
                .filter(|(uid, _)| !live.contains(*uid))
                .map(|(_, lb)| current(&mirror, lb))
                .collect()
        } else {
            Vec::new()
        };
        (jobs, orphans)
    }

    /// One Service's pass: its name, load balancer tree and floating IP written in one
    /// transaction (nodes see the whole Service at once, and a failure leaves nothing half
    /// made), then its status.
    async fn apply(
        &self,
        service: &Service,
        client: &Client,
        caller: &Caller,
        subnet_id: &str,
        network_id: &str,
        job: Job,
    ) -> Result<()> {
        let address = service
            .atomically(|| self.write(service, caller, subnet_id, network_id, &job))
            .await?;
        let wanted: Vec<String> = address.iter().map(IpAddr::to_string).collect();
        if wanted != job.ingress {
            let ingress: Vec<Value> = wanted.iter().map(|ip| json!({"ip": ip})).collect();
            let patch = json!({"status": {"loadBalancer": {"ingress": ingress}}});
            Api::<KubeService>::namespaced(client.clone(), &job.spec.namespace)
                .patch_status(
                    &job.spec.name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
                .map_err(|e| Error::Internal(format!("writing the Service's status: {e}")))?;
        }
        Ok(())
    }

    /// The store side of a Service's pass; returns the address its status shows.
    async fn write(
        &self,
        service: &Service,
        caller: &Caller,
        subnet_id: &str,
        network_id: &str,
        job: &Job,
    ) -> Result<Option<IpAddr>> {
        self.name(service, network_id, job).await?;
        let mut current = job.current.clone();
        let Some(wanted) = &job.wanted else {
            // Headless (or no cluster IP any more): no load balancer.
            if let Some(c) = current {
                self.delete_balancer(service, caller, &c).await?;
            }
            return Ok(None);
        };
        if let Some(c) = current.take() {
            if c.vip == wanted.vip {
                current = Some(c);
            } else {
                self.delete_balancer(service, caller, &c).await?;
            }
        }
        let mut floating_ips = job.floating_ips.clone();
        let current = match current {
            Some(c) => c,
            None => {
                floating_ips.clear();
                self.create_balancer(service, caller, subnet_id, &job.spec, wanted.vip)
                    .await?
            }
        };
        let mut pools: HashMap<ListenerKey, String> = current
            .listeners
            .iter()
            .filter_map(|(k, l)| l.pool.as_ref().map(|p| (*k, p.pool_id.clone())))
            .collect();
        for step in plan(wanted, &current) {
            self.perform(service, caller, &current.lb_id, &job.spec, &mut pools, step)
                .await?;
        }
        self.expose(service, caller, &job.spec, &current, floating_ips)
            .await
    }

    async fn create_balancer(
        &self,
        service: &Service,
        caller: &Caller,
        subnet_id: &str,
        spec: &ServiceSpec,
        vip: IpAddr,
    ) -> Result<Current> {
        let body = json!({"loadbalancer": {
            "name": format!("{}/{}", spec.namespace, spec.name),
            "description": format!("Kubernetes Service {}/{}", spec.namespace, spec.name),
            "vip_subnet_id": subnet_id,
            "vip_address": vip.to_string(),
            "tags": [service_tag(&spec.uid)],
            "project_id": caller.project_id,
        }});
        let lb = self
            .endpoint("loadbalancers")?
            .create(service, caller, body)
            .await?;
        let text = |k: &str| {
            lb.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        Ok(Current {
            lb_id: text("id"),
            vip,
            vip_port_id: text("vip_port_id"),
            listeners: Default::default(),
        })
    }

    /// Deletes a Service's load balancer with its floating IPs (the VIP port goes with it).
    async fn delete_balancer(&self, service: &Service, caller: &Caller, c: &Current) -> Result<()> {
        let fips: Vec<String> = service
            .informer()
            .mirror()
            .floating_ips_of(&c.vip_port_id)
            .map(|f| f.meta.id.clone())
            .collect();
        for fip in fips {
            ignore_missing(
                self.neutron_endpoint("floatingips")?
                    .delete(service, caller, &fip, None)
                    .await,
            )?;
        }
        ignore_missing(service.delete_load_balancer_cascade(caller, &c.lb_id).await)
    }

    async fn perform(
        &self,
        service: &Service,
        caller: &Caller,
        lb_id: &str,
        spec: &ServiceSpec,
        pools: &mut HashMap<ListenerKey, String>,
        step: Step,
    ) -> Result<()> {
        let persistence = |timeout: Option<u32>| match timeout {
            Some(t) => json!({"type": "SOURCE_IP", "persistence_timeout": t}),
            None => Value::Null,
        };
        match step {
            Step::CreateListener {
                key: (protocol, port),
                persistence: timeout,
            } => {
                let listener = self
                    .endpoint("listeners")?
                    .create(
                        service,
                        caller,
                        json!({"listener": {
                            "loadbalancer_id": lb_id,
                            "name": format!("{}/{}:{port}", spec.namespace, spec.name),
                            "protocol": protocol.as_str(),
                            "protocol_port": port,
                        }}),
                    )
                    .await?;
                let pool = self
                    .endpoint("pools")?
                    .create(
                        service,
                        caller,
                        json!({"pool": {
                            "listener_id": listener["id"],
                            "protocol": protocol.as_str(),
                            "lb_algorithm": "ROUND_ROBIN",
                            "session_persistence": persistence(timeout),
                        }}),
                    )
                    .await?;
                let pool_id = pool["id"].as_str().unwrap_or_default().to_owned();
                pools.insert((protocol, port), pool_id);
            }
            Step::DeleteListener {
                listener_id,
                pool_id,
            } => {
                if let Some(pool) = pool_id {
                    ignore_missing(
                        self.endpoint("pools")?
                            .delete(service, caller, &pool, None)
                            .await,
                    )?;
                }
                ignore_missing(
                    self.endpoint("listeners")?
                        .delete(service, caller, &listener_id, None)
                        .await,
                )?;
            }
            Step::SetPersistence {
                pool_id,
                persistence: timeout,
            } => {
                self.endpoint("pools")?
                    .update(
                        service,
                        caller,
                        &pool_id,
                        json!({"pool": {"session_persistence": persistence(timeout)}}),
                        None,
                    )
                    .await?;
            }
            Step::AddMember {
                key,
                member: (address, port),
                weight,
            } => {
                let pool_id = pools
                    .get(&key)
                    .ok_or_else(|| Error::Internal(format!("no pool for listener {key:?}")))?;
                self.endpoint("members")?
                    .create(
                        service,
                        caller,
                        json!({"member": {
                            "pool_id": pool_id,
                            "address": address.to_string(),
                            "protocol_port": port,
                            "weight": weight,
                        }}),
                    )
                    .await?;
            }
            Step::SetWeight {
                member_id, weight, ..
            } => {
                self.endpoint("members")?
                    .update(
                        service,
                        caller,
                        &member_id,
                        json!({"member": {"weight": weight}}),
                        None,
                    )
                    .await?;
            }
            Step::RemoveMember { member_id, .. } => {
                ignore_missing(
                    self.endpoint("members")?
                        .delete(service, caller, &member_id, None)
                        .await,
                )?;
            }
        }
        Ok(())
    }

    /// `type: LoadBalancer`: a floating IP on the VIP port (the one asked for, if any), the
    /// address the Service's status shows; other types have neither.
    async fn expose(
        &self,
        service: &Service,
        caller: &Caller,
        spec: &ServiceSpec,
        current: &Current,
        floating_ips: Vec<(String, IpAddr, bool)>,
    ) -> Result<Option<IpAddr>> {
        let tag = service_tag(&spec.uid);
        let mut address = None;
        for (id, ip, ours) in floating_ips {
            let keep = match spec.external {
                Some(asked) if ours => asked.is_none_or(|a| a == ip) && address.is_none(),
                _ => false,
            };
            if keep {
                address = Some(ip);
            } else if ours {
                ignore_missing(
                    self.neutron_endpoint("floatingips")?
                        .delete(service, caller, &id, None)
                        .await,
                )?;
            }
        }
        if let (Some(asked), None) = (spec.external, address) {
            let network = match &self.settings.external_network {
                Some(n) => service.resolve_network(n).await?,
                None => {
                    return Err(Error::BadRequest(
                        "type LoadBalancer needs the controller's --external-network".into(),
                    ))
                }
            };
            let mut body = json!({
                "floating_network_id": network.meta.id,
                "port_id": current.vip_port_id,
                "project_id": caller.project_id,
                "description": format!("Kubernetes Service {}/{}", spec.namespace, spec.name),
                "tags": [tag],
            });
            if let Some(ip) = asked {
                body["floating_ip_address"] = json!(ip.to_string());
            }
            let fip = self
                .neutron_endpoint("floatingips")?
                .create(service, caller, json!({ "floatingip": body }))
                .await?;
            address = fip["floating_ip_address"]
                .as_str()
                .and_then(|a| a.parse().ok());
        }
        Ok(address)
    }

    fn endpoint(&self, collection: &str) -> Result<&dyn crate::Endpoint> {
        self.octavia
            .find(collection)
            .ok_or_else(|| Error::Internal(format!("no Octavia collection {collection}")))
    }

    fn neutron_endpoint(&self, collection: &str) -> Result<&dyn crate::Endpoint> {
        self.neutron
            .find(collection)
            .ok_or_else(|| Error::Internal(format!("no Neutron collection {collection}")))
    }
}

/// Gone already is done.
fn ignore_missing(result: Result<()>) -> Result<()> {
    match result {
        Err(Error::NotFound { .. }) => Ok(()),
        other => other,
    }
}

/// An EndpointSlice's (namespace, name).
fn slice_id(slice: &KubeSlice) -> Option<SliceId> {
    Some((
        slice.metadata.namespace.clone()?,
        slice.metadata.name.clone()?,
    ))
}

/// The Service an EndpointSlice belongs to.
fn service_key(slice: &KubeSlice) -> Option<ServiceKey> {
    let ns = slice.metadata.namespace.clone()?;
    let name = slice
        .metadata
        .labels
        .as_ref()?
        .get(SERVICE_NAME_LABEL)?
        .clone();
    Some((ns, name))
}

/// A Service as its load balancer sees it, and the addresses its status shows.
fn service_spec(svc: &KubeService) -> Option<(ServiceSpec, Vec<String>)> {
    let meta = &svc.metadata;
    let spec = svc.spec.as_ref()?;
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    let headless = kind != "ExternalName" && spec.cluster_ip.as_deref() == Some("None");
    let cluster_ip = match kind {
        "ExternalName" => None,
        _ => spec
            .cluster_ip
            .as_deref()
            .filter(|ip| *ip != "None")
            .and_then(|ip| ip.parse().ok()),
    };
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some(ServicePort {
                name: p.name.clone().unwrap_or_default(),
                protocol: protocol(p.protocol.as_deref())?,
                port: u16::try_from(p.port).ok()?,
            })
        })
        .collect();
    let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
    });
    let external = (kind == "LoadBalancer").then(|| {
        spec.load_balancer_ip
            .as_deref()
            .and_then(|ip| ip.parse().ok())
    });
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .map(|i| i.iter().filter_map(|i| i.ip.clone()).collect())
        .unwrap_or_default();
    Some((
        ServiceSpec {
            uid: meta.uid.clone()?,
            namespace: meta.namespace.clone()?,
            name: meta.name.clone()?,
            cluster_ip,
            headless,
            ports,
            affinity,
            external,
        },
        ingress,
    ))
}

/// An EndpointSlice's ports and endpoints (FQDN slices have none a load balancer can use).
fn endpoint_slice(slice: &KubeSlice) -> Option<EndpointSlice> {
    if slice.address_type == "FQDN" {
        return None;
    }
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some(EndpointPort {
                name: p.name.clone().unwrap_or_default(),
                protocol: protocol(p.protocol.as_deref())?,
                port: u16::try_from(p.port?).ok()?,
            })
        })
        .collect();
    let endpoints = slice
        .endpoints
        .iter()
        .flatten()
        .map(|e| {
            let conditions = e.conditions.as_ref();
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            Endpoint {
                addresses: e.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
                ready,
                serving: conditions.and_then(|c| c.serving).unwrap_or(ready),
                terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
            }
        })
        .collect();
    Some(EndpointSlice { ports, endpoints })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn slice(name: &str, service: Option<&str>) -> KubeSlice {
        KubeSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                labels: service.map(|s| [(SERVICE_NAME_LABEL.to_owned(), s.to_owned())].into()),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".into(),
            endpoints: None,
            ports: None,
        }
    }

    #[test]
    fn the_slice_index_follows_slices_and_their_services() {
        let mut index = SliceIndex::default();
        let of = |index: &SliceIndex, service: &str| {
            let mut names: Vec<String> = index
                .by_service
                .get(&("ns".to_owned(), service.to_owned()))
                .into_iter()
                .flatten()
                .map(|(_, n)| n.clone())
                .collect();
            names.sort();
            names
        };
        index.apply(&slice("web-1", Some("web")));
        index.apply(&slice("web-2", Some("web")));
        index.apply(&slice("db-1", Some("db")));
        index.apply(&slice("loose", None));
        assert_eq!(of(&index, "web"), ["web-1", "web-2"]);
        // Relabelled: it moves; deleted: it goes, and so does an emptied Service.
        index.apply(&slice("web-2", Some("db")));
        assert_eq!(of(&index, "web"), ["web-1"]);
        assert_eq!(of(&index, "db"), ["db-1", "web-2"]);
        index.remove(&("ns".into(), "web-1".into()));
        assert!(!index.by_service.contains_key(&("ns".into(), "web".into())));
        index.apply(&slice("db-1", None));
        assert_eq!(of(&index, "db"), ["web-2"]);
        assert_eq!(index.service_of.len(), 1);
    }
}
