//! The Kubernetes watcher: reflectors on the cluster's namespaces and pods (metadata only)
//! keep namespace bindings in line with the namespaces' `isthmus.io/*` annotations, annotate
//! each pod with its port once the CNI plugin made it, and delete the ports of pods that left
//! the cluster without their runtime calling DEL. Every controller keeps the reflectors warm;
//! only the holder of the Lease writes. Passes are level-triggered (the whole desired state
//! against what is there), so a missed event, a relist after 410 Gone or a restart only
//! delays them.

pub mod lease;
mod policies;
mod services;

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use isthmus_model::kubernetes::{
    pod_uid, port_annotation, NamespaceIntent, Orphans, PORT_ANNOTATION,
};
use isthmus_model::port::POD_DEVICE_OWNER;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, reflector, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource};
use tokio::sync::{watch, Notify};

pub use lease::LeaseConfig;
pub use services::ServiceSettings;

use crate::Service;

/// What the watcher needs.
pub struct Settings {
    /// A client of the cluster's API server.
    pub client: Client,
    /// The Lease that makes one controller the writer.
    pub lease: LeaseConfig,
    /// How long a pod port outlives its pod before it is deleted.
    pub pod_grace: Duration,
    /// Services as load balancers, when a service subnet is given.
    pub services: Option<services::ServiceSettings>,
    /// The cluster's DNS domain (`cluster.local`).
    pub cluster_domain: String,
}

/// Where the cluster's API server is and how to authenticate to it.
#[derive(Debug, Clone)]
pub enum Cluster {
    /// A kubeconfig file (its current context).
    Kubeconfig(std::path::PathBuf),
    /// The pod's service account (`KUBERNETES_SERVICE_HOST`, the mounted token and CA).
    InCluster,
}

/// A client of `cluster`'s API server.
pub async fn connect(cluster: &Cluster) -> Result<Client, crate::ControllerError> {
    let failed = |e: String| crate::ControllerError::Kubernetes(e);
    let config = match cluster {
        Cluster::Kubeconfig(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| failed(format!("reading {}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| failed(format!("{}: {e}", path.display())))?
        }
        Cluster::InCluster => kube::Config::incluster()
            .map_err(|e| failed(format!("in-cluster configuration: {e}")))?,
    };
    Client::try_from(config).map_err(|e| failed(e.to_string()))
}

/// A pass starts once the cluster's events have paused this long, so that a burst (a Service
/// and its EndpointSlice) costs one pass...
const QUIET: Duration = Duration::from_millis(3);
/// ...or this long after the first of them, whichever comes first.
const SETTLE: Duration = Duration::from_millis(20);
/// How often a full pass re-reads everything (bindings changed behind the watcher's back,
/// networks renamed).
const FULL_PASS: Duration = Duration::from_secs(60);
/// How long a namespace whose binding failed waits before it is tried again.
const RETRY_FAILED: Duration = Duration::from_secs(5);

/// A reflector's cache, and whether it holds a complete list yet.
struct Cache<K: Resource<DynamicType = ()> + Clone + 'static> {
    store: Store<K>,
    ready: Arc<AtomicBool>,
}

impl<K> Cache<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    /// Starts a reflector on `api` (every `K` of the cluster); `mark` sees each event before
    /// `changed` is notified.
    fn start(
        api: Api<K>,
        what: &'static str,
        changed: Arc<Notify>,
        mark: impl Fn(&watcher::Event<K>) + Send + 'static,
    ) -> Self {
        let (store, writer) = reflector::store();
        let ready = Arc::new(AtomicBool::new(false));
        let stream = reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
        tokio::spawn(drive(stream, what, ready.clone(), changed, mark));
        Cache { store, ready }
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// Consumes a reflector's events (the reflector fills its store from them).
async fn drive<K>(
    stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    what: &'static str,
    ready: Arc<AtomicBool>,
    changed: Arc<Notify>,
    mark: impl Fn(&watcher::Event<K>),
) {
    let mut stream = std::pin::pin!(stream);
    let mut failing = false;
    while let Some(event) = stream.next().await {
        match event {
            Ok(event) => {
                if failing {
                    tracing::info!("watching Kubernetes {what} again");
                    failing = false;
                }
                if matches!(event, watcher::Event::InitDone) {
                    ready.store(true, Ordering::Release);
                }
                mark(&event);
                changed.notify_one();
            }
            // The backoff paces the retries; say so once per outage.
            Err(e) => {
                if !failing {
                    tracing::warn!("watching Kubernetes {what}: {e}");
                    failing = true;
                }
            }
        }
    }
}

/// The outcome of a namespace's last pass.
#[derive(PartialEq)]
enum Done {
    /// Its binding says what these annotations ask (`None`: no binding from annotations).
    Applied(Option<NamespaceIntent>),
    /// Its annotations are malformed (logged once).
    Malformed(String),
    /// Binding failed at that instant (logged; tried again after [`RETRY_FAILED`]).
    Failed(Option<NamespaceIntent>, Instant),
}

/// The watcher's state between passes.
struct Watcher {
    service: Arc<Service>,
    client: Client,
    pod_grace: Duration,
    cluster_domain: String,
    namespaces: Cache<PartialObjectMeta<Namespace>>,
    pods: Cache<Pod>,
    services: Option<services::Services>,
    policies: policies::Policies,
    /// Per namespace, what the last pass did.
    done: HashMap<String, Done>,
    /// Per pod UID, the port annotation last written.
    annotated: HashMap<String, String>,
    orphans: Orphans,
}

/// Runs the watcher until `stop` turns true.
pub async fn run(service: Arc<Service>, settings: Settings, stop: watch::Receiver<bool>) {
    while let Err(e) = service.informer().ready().await {
        tracing::warn!("Kubernetes watcher waits for the store: {e}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (leader_tx, mut leader) = watch::channel(false);
    tokio::spawn(lease::elect(
        Api::namespaced(settings.client.clone(), &settings.lease.namespace),
        settings.lease.clone(),
        leader_tx,
        stop.clone(),
    ));
    let changed = Arc::new(Notify::new());
    let mut watcher = Watcher {
        namespaces: Cache::start(
            Api::all(settings.client.clone()),
            "namespaces",
            changed.clone(),
            |_| {},
        ),
        pods: Cache::start(
            Api::all(settings.client.clone()),
            "pods",
            changed.clone(),
            |_| {},
        ),
        services: settings.services.map(|s| {
            services::Services::start(
                &settings.client,
                s,
                &settings.cluster_domain,
                changed.clone(),
            )
        }),
        policies: policies::Policies::start(&settings.client, changed.clone()),
        service,
        client: settings.client,
        pod_grace: settings.pod_grace,
        cluster_domain: settings.cluster_domain.clone(),
        done: HashMap::new(),
        annotated: HashMap::new(),
        orphans: Orphans::default(),
    };
    let mut revision = watcher.service.informer().subscribe();
    let mut stop = stop;
    let mut collect = tokio::time::interval(
        (settings.pod_grace / 4).clamp(Duration::from_millis(500), Duration::from_secs(15)),
    );
    let mut full = tokio::time::interval(FULL_PASS);
    loop {
        let mut sweep = false;
        tokio::select! {
            () = changed.notified() => {}
            _ = revision.changed() => {}
            _ = leader.changed() => watcher.forget(),
            _ = collect.tick() => sweep = true,
            _ = full.tick() => watcher.forget(),
            _ = stop.changed() => return,
        }
        settle(&changed).await;
        if !*leader.borrow() {
            continue;
        }
        if watcher.namespaces.ready() {
            watcher.sync_namespaces().await;
        }
        if watcher.pods.ready() {
            watcher.annotate_pods().await;
            if sweep {
                watcher.collect_orphans().await;
            }
        }
        if watcher.pods.ready() && watcher.namespaces.ready() {
            watcher
                .policies
                .sync(
                    &watcher.service,
                    &watcher.pods.store,
                    &watcher.namespaces.store,
                )
                .await;
        }
        if let Some(services) = &mut watcher.services {
            services.sync(&watcher.service, &watcher.client).await;
        }
    }
}

/// Waits for the cluster's events to pause ([`QUIET`]), for [`SETTLE`] at most.
async fn settle(changed: &Notify) {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero()
            || tokio::time::timeout(QUIET.min(left), changed.notified())
                .await
                .is_err()
        {
            return;
        }
    }
}

impl Watcher {
    /// Forgets what earlier passes did, so the next one looks at everything again.
    fn forget(&mut self) {
        self.done.clear();
        self.annotated.clear();
        self.policies.forget();
        if let Some(services) = &self.services {
            services.mark_all();
        }
    }

    /// Makes every namespace's binding what its annotations ask for.
    async fn sync_namespaces(&mut self) {
        let full = self.done.is_empty();
        let mut present = HashSet::new();
        for namespace in self.namespaces.store.state() {
            let Some(name) = namespace.metadata.name.clone() else {
                continue;
            };
            present.insert(name.clone());
            let empty = Default::default();
            let annotations = namespace.metadata.annotations.as_ref().unwrap_or(&empty);
            let intent = match NamespaceIntent::from_annotations(annotations) {
                Ok(intent) => intent,
                Err(why) => {
                    let done = Done::Malformed(why.clone());
                    if self.done.get(&name) != Some(&done) {
                        tracing::warn!("namespace {name}: {why}; its binding is left as it is");
                        self.done.insert(name, done);
                    }
                    continue;
                }
            };
            match self.done.get(&name) {
                Some(Done::Applied(applied)) if *applied == intent => continue,
                Some(Done::Failed(failed, at))
                    if *failed == intent && at.elapsed() < RETRY_FAILED =>
                {
                    continue
                }
                // Nothing was ever bound from it (and a full pass looks at every binding).
                None if intent.is_none() && !full => {
                    self.done.insert(name, Done::Applied(None));
                    continue;
                }
                _ => {}
            }
            let outcome = match &intent {
                Some(intent) => self
                    .service
                    .bind_namespace_from_annotations(&name, intent, &self.cluster_domain)
                    .await
                    .map(|_| ()),
                None => self
                    .service
                    .unbind_namespace_from_annotations(&name)
                    .await
                    .map(|_| ()),
            };
            let done = match outcome {
                Ok(()) => Done::Applied(intent),
                Err(e) => {
                    tracing::warn!("binding namespace {name} from its annotations: {e}");
                    Done::Failed(intent, Instant::now())
                }
            };
            self.done.insert(name, done);
        }
        // Namespaces gone from the cluster lose their bindings from annotations.
        let mut gone: Vec<String> = self
            .done
            .keys()
            .filter(|n| !present.contains(*n))
            .cloned()
            .collect();
        if full {
            match self.service.annotated_namespaces().await {
                Ok(bound) => gone.extend(bound.into_iter().filter(|n| !present.contains(n))),
                Err(e) => tracing::warn!("listing namespace bindings: {e}"),
            }
        }
        for name in gone {
            match self.service.unbind_namespace_from_annotations(&name).await {
                Ok(_) => {
                    self.done.remove(&name);
                }
                Err(e) => tracing::warn!("unbinding namespace {name}: {e}"),
            }
        }
    }

    /// Writes `isthmus.io/port` on each pod whose port exists and is not what it says.
    async fn annotate_pods(&mut self) {
        let pods = self.pods.store.state();
        let patches: Vec<(String, String, String, String)> = {
            let mirror = self.service.informer().mirror();
            let mut ports = HashMap::new();
            for port in mirror.ports_owned_by(POD_DEVICE_OWNER) {
                if let Some(uid) = pod_uid(&port) {
                    // A pod with several attachments is annotated with its first (eth0).
                    let first = port
                        .binding
                        .profile
                        .get("cni_ifname")
                        .and_then(|v| v.as_str())
                        == Some("eth0");
                    if first || !ports.contains_key(uid) {
                        ports.insert(uid.to_owned(), port_annotation(&port));
                    }
                }
            }
            pods.iter()
                .filter_map(|pod| {
                    let meta = &pod.metadata;
                    let uid = meta.uid.as_ref()?;
                    let wanted = ports.get(uid)?;
                    let current = meta
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(PORT_ANNOTATION));
                    (current != Some(wanted) && self.annotated.get(uid) != Some(wanted)).then(
                        || {
                            (
                                meta.namespace.clone().unwrap_or_default(),
                                meta.name.clone().unwrap_or_default(),
                                uid.clone(),
                                wanted.clone(),
                            )
                        },
                    )
                })
                .collect()
        };
        let live: HashSet<&str> = pods
            .iter()
            .filter_map(|p| p.metadata.uid.as_deref())
            .collect();
        self.annotated.retain(|uid, _| live.contains(uid.as_str()));
        for (namespace, name, uid, value) in patches {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
            let patch = serde_json::json!({"metadata": {"annotations": {PORT_ANNOTATION: value}}});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    self.annotated.insert(uid, value);
                }
                // Deleted meanwhile: nothing to annotate.
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => tracing::warn!("annotating pod {namespace}/{name}: {e}"),
            }
        }
    }

    /// Deletes the ports of pods gone from the cluster for longer than the grace period.
    async fn collect_orphans(&mut self) {
        let live: HashSet<String> = self
            .pods
            .store
            .state()
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let expired = {
            let mirror = self.service.informer().mirror();
            self.orphans.sweep(
                now,
                self.pod_grace.as_secs(),
                mirror.ports_owned_by(POD_DEVICE_OWNER),
                |uid| live.contains(uid),
            )
        };
        for orphan in expired {
            match self
                .service
                .delete_pod_port(&orphan.port_id, &orphan.pod_uid, orphan.revision)
                .await
            {
                Ok(true) => tracing::info!(
                    "deleted port {} of pod {}, gone from the cluster",
                    orphan.port_id,
                    orphan.pod_uid
                ),
                Ok(false) => {}
                Err(e) => tracing::warn!("deleting port {} of a gone pod: {e}", orphan.port_id),
            }
        }
    }
}
