//! The service layer: the only writer of desired state. Every operation validates with the
//! pure model, allocates (IPAM, MAC, VNI) and commits in one compare-and-swap transaction,
//! retrying from a fresh read when another writer got there first.

mod floating_ip;
mod ip_availability;
mod namespace_binding;
mod network;
mod node;
mod port;
mod router;
mod security_group;
mod subnet;
mod tags;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use isthmus_model::{Caller, Error, Meta, NetworkLimits, Result};
use isthmus_store::{Compare, Op, SharedStore, StoreError, Txn};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

pub use tags::TagOp;

/// Most attempts of one operation against concurrent writers before giving up with 409.
const MAX_ATTEMPTS: usize = 64;

/// Controller settings the service needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// MTU of the underlay; VXLAN networks get 50 less.
    pub underlay_mtu: u32,
    /// Domain of `dns_assignment` when the network has none (ends with a dot).
    pub dns_domain: String,
    /// VNIs handed out automatically (inclusive).
    pub vni_range: (u32, u32),
}

impl Default for Config {
    fn default() -> Self {
        Config {
            underlay_mtu: 1500,
            dns_domain: "openstack.local.".to_owned(),
            vni_range: (1, isthmus_model::network::MAX_VNI),
        }
    }
}

/// The resource kinds of the Neutron API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `networks`.
    Network,
    /// `subnets`.
    Subnet,
    /// `ports`.
    Port,
    /// `security-groups`.
    SecurityGroup,
    /// `security-group-rules`.
    SecurityGroupRule,
    /// `routers`.
    Router,
    /// `floatingips`.
    FloatingIp,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 7] = [
        Kind::Network,
        Kind::Subnet,
        Kind::Port,
        Kind::SecurityGroup,
        Kind::SecurityGroupRule,
        Kind::Router,
        Kind::FloatingIp,
    ];

    /// The URL collection name (`security-groups`).
    pub fn collection(self) -> &'static str {
        match self {
            Kind::Network => "networks",
            Kind::Subnet => "subnets",
            Kind::Port => "ports",
            Kind::SecurityGroup => "security-groups",
            Kind::SecurityGroupRule => "security-group-rules",
            Kind::Router => "routers",
            Kind::FloatingIp => "floatingips",
        }
    }

    /// The JSON member of one object (`security_group`).
    pub fn singular(self) -> &'static str {
        match self {
            Kind::Network => "network",
            Kind::Subnet => "subnet",
            Kind::Port => "port",
            Kind::SecurityGroup => "security_group",
            Kind::SecurityGroupRule => "security_group_rule",
            Kind::Router => "router",
            Kind::FloatingIp => "floatingip",
        }
    }

    /// The JSON member of a list (`security_groups`).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Network => "networks",
            Kind::Subnet => "subnets",
            Kind::Port => "ports",
            Kind::SecurityGroup => "security_groups",
            Kind::SecurityGroupRule => "security_group_rules",
            Kind::Router => "routers",
            Kind::FloatingIp => "floatingips",
        }
    }

    /// The kind of a URL collection name.
    pub fn from_collection(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.collection() == name)
    }

    /// Attributes for filters and sorting.
    pub fn attributes(self) -> &'static [&'static str] {
        match self {
            Kind::Network => isthmus_model::network::ATTRIBUTES,
            Kind::Subnet => isthmus_model::subnet::ATTRIBUTES,
            Kind::Port => isthmus_model::port::ATTRIBUTES,
            Kind::SecurityGroup => isthmus_model::security_group::GROUP_ATTRIBUTES,
            Kind::SecurityGroupRule => isthmus_model::security_group::RULE_ATTRIBUTES,
            Kind::Router => isthmus_model::router::ATTRIBUTES,
            Kind::FloatingIp => isthmus_model::floating_ip::ATTRIBUTES,
        }
    }

    /// Neutron's name in `<Kind>NotFound`.
    pub fn fault_name(self) -> &'static str {
        match self {
            Kind::Network => "Network",
            Kind::Subnet => "Subnet",
            Kind::Port => "Port",
            Kind::SecurityGroup => "SecurityGroup",
            Kind::SecurityGroupRule => "SecurityGroupRule",
            Kind::Router => "Router",
            Kind::FloatingIp => "FloatingIP",
        }
    }
}

/// A rendered Neutron object.
pub type Object = Map<String, Value>;

/// One item of a list, rendered on demand for its viewer.
pub type Listed = Box<dyn isthmus_model::wire::Wire + Send>;

/// The service: store access plus in-process reservations that keep concurrent requests of
/// this controller from racing for the same address or VNI (the store's compare-and-swap
/// still arbitrates between controllers).
pub struct Service {
    store: SharedStore,
    config: Config,
    reserved_ips: Mutex<HashMap<String, BTreeSet<u128>>>,
    reserved_vnis: Mutex<BTreeSet<u32>>,
    /// Per subnet: every address below this one is claimed in the store (as far as this
    /// controller knows; releases by another controller are not seen, which can only make
    /// allocation skip a freed low address, never hand out a taken one).
    low_water: Mutex<HashMap<String, u128>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("config", &self.config)
            .finish()
    }
}

/// Maps a store failure to Neutron's 500.
pub(crate) fn store_error(e: StoreError) -> Error {
    Error::Internal(e.to_string())
}

/// Current time in Neutron's format.
pub(crate) fn now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    isthmus_model::time::rfc3339(secs)
}

/// A new resource id.
pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Serialises a stored object.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Bytes> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| Error::Internal(format!("encoding failed: {e}")))
}

fn decode<T: DeserializeOwned>(key: &str, raw: &[u8]) -> Result<T> {
    serde_json::from_slice(raw).map_err(|e| Error::Internal(format!("corrupt record {key}: {e}")))
}

/// Stored resources with standard attributes.
pub(crate) trait Stored: Serialize + DeserializeOwned {
    const KIND: Kind;
    fn key(id: &str) -> String;
    fn meta(&self) -> &Meta;
    fn meta_mut(&mut self) -> &mut Meta;
}

macro_rules! stored {
    ($ty:ty, $kind:expr, $key:path) => {
        impl Stored for $ty {
            const KIND: Kind = $kind;
            fn key(id: &str) -> String {
                $key(id)
            }
            fn meta(&self) -> &Meta {
                &self.meta
            }
            fn meta_mut(&mut self) -> &mut Meta {
                &mut self.meta
            }
        }
    };
}
stored!(isthmus_model::Network, Kind::Network, crate::keys::network);
stored!(isthmus_model::Subnet, Kind::Subnet, crate::keys::subnet);
stored!(isthmus_model::Port, Kind::Port, crate::keys::port);
stored!(
    isthmus_model::SecurityGroup,
    Kind::SecurityGroup,
    crate::keys::security_group
);
stored!(isthmus_model::Router, Kind::Router, crate::keys::router);
stored!(
    isthmus_model::FloatingIp,
    Kind::FloatingIp,
    crate::keys::floating_ip
);
stored!(
    isthmus_model::SecurityGroupRule,
    Kind::SecurityGroupRule,
    crate::keys::security_group_rule
);

/// What one attempt of a write concluded.
pub(crate) enum Attempt<T> {
    /// Committed, with the answer.
    Done(T),
    /// Another writer interfered: read again and retry.
    Retry,
}

/// Checks an `If-Match: revision_number=N` constraint.
pub(crate) fn check_revision(meta: &Meta, if_match: Option<u64>) -> Result<()> {
    match if_match {
        Some(expected) if expected != meta.revision_number => {
            Err(Error::RevisionNumberConstraintFailed {
                expected,
                current: meta.revision_number,
            })
        }
        _ => Ok(()),
    }
}

/// Releases in-process address reservations when an attempt ends, however it ends.
pub(crate) struct IpReservation<'a> {
    service: &'a Service,
    held: Vec<(String, u128)>,
}

impl Drop for IpReservation<'_> {
    fn drop(&mut self) {
        let mut reserved = self
            .service
            .reserved_ips
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (subnet, ip) in self.held.drain(..) {
            if let Some(set) = reserved.get_mut(&subnet) {
                set.remove(&ip);
                if set.is_empty() {
                    reserved.remove(&subnet);
                }
            }
        }
    }
}

impl Service {
    /// A service over `store`.
    pub fn new(store: SharedStore, config: Config) -> Self {
        Service {
            store,
            config,
            reserved_ips: Mutex::new(HashMap::new()),
            reserved_vnis: Mutex::new(BTreeSet::new()),
            low_water: Mutex::new(HashMap::new()),
        }
    }

    /// The store.
    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn limits(&self) -> NetworkLimits {
        NetworkLimits {
            underlay_mtu: self.config.underlay_mtu,
        }
    }

    /// Reads one stored object with its revision.
    pub(crate) async fn load<T: Stored>(&self, id: &str) -> Result<Option<(T, u64)>> {
        let key = T::key(id);
        match self.store.get(&key).await.map_err(store_error)? {
            None => Ok(None),
            Some(kv) => Ok(Some((decode(&key, &kv.value)?, kv.mod_revision))),
        }
    }

    /// Reads one object or fails with `<Kind>NotFound`.
    pub(crate) async fn must_load<T: Stored>(&self, id: &str) -> Result<(T, u64)> {
        self.load(id)
            .await?
            .ok_or_else(|| Error::not_found(T::KIND.fault_name(), id))
    }

    /// Reads an object the caller owns (admins: any); anything else is 404, so other
    /// projects' resources are indistinguishable from missing ones.
    pub(crate) async fn load_owned<T: Stored>(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<(T, u64)> {
        match self.load::<T>(id).await? {
            Some((obj, rev)) if caller.owns(&obj.meta().project_id) => Ok((obj, rev)),
            _ => Err(Error::not_found(T::KIND.fault_name(), id)),
        }
    }

    /// Reads every object of a kind.
    pub(crate) async fn load_all<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Vec<(T, u64)>> {
        let range = self.store.range(prefix).await.map_err(store_error)?;
        range
            .kvs
            .iter()
            .map(|kv| Ok((decode(&kv.key, &kv.value)?, kv.mod_revision)))
            .collect()
    }

    /// Ids stored under an index prefix.
    pub(crate) async fn index(&self, prefix: &str) -> Result<Vec<String>> {
        let range = self.store.range(prefix).await.map_err(store_error)?;
        Ok(range
            .kvs
            .iter()
            .map(|kv| crate::keys::last_segment(&kv.key).to_owned())
            .collect())
    }

    /// Runs a transaction, reporting whether it applied.
    pub(crate) async fn commit(&self, txn: Txn) -> Result<bool> {
        Ok(self.store.txn(txn).await.map_err(store_error)?.succeeded)
    }

    /// Writes `obj` back over the revision `rev` it was read at; false when it changed
    /// meanwhile (the caller retries).
    pub(crate) async fn write_back<T: Stored>(&self, id: &str, rev: u64, obj: &T) -> Result<bool> {
        let key = T::key(id);
        let txn = Txn::new()
            .when(Compare::mod_revision(key.clone(), rev))
            .then(Op::put(key, encode(obj)?));
        self.commit(txn).await
    }

    /// Repeats `attempt` until it commits or fails, with a short growing pause between tries.
    pub(crate) async fn retry<T, F, Fut>(&self, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Attempt<T>>>,
    {
        for n in 0..MAX_ATTEMPTS {
            match attempt().await? {
                Attempt::Done(v) => return Ok(v),
                Attempt::Retry => {
                    if n > 2 {
                        let jitter = uuid::Uuid::new_v4().as_bytes()[0] as u64 % 4;
                        tokio::time::sleep(Duration::from_millis((n as u64).min(20) + jitter))
                            .await;
                    } else {
                        tokio::task::yield_now().await;
                    }
                }
            }
        }
        Err(Error::Conflict(
            "Too many concurrent changes to the same resources; try again".to_owned(),
        ))
    }

    /// Reserves addresses in-process; `pick` chooses given what is claimed in the store and
    /// what other requests of this controller hold.
    pub(crate) fn reserve_ip(
        &self,
        reservation: &mut IpReservation<'_>,
        subnet_id: &str,
        pick: impl FnOnce(&BTreeSet<u128>) -> Option<u128>,
    ) -> Option<u128> {
        let mut reserved = self.reserved_ips.lock().unwrap_or_else(|e| e.into_inner());
        let set = reserved.entry(subnet_id.to_owned()).or_default();
        let chosen = pick(set);
        if let Some(ip) = chosen {
            set.insert(ip);
            reservation.held.push((subnet_id.to_owned(), ip));
        } else if set.is_empty() {
            reserved.remove(subnet_id);
        }
        chosen
    }

    pub(crate) fn low_water(&self, subnet_id: &str) -> u128 {
        let marks = self.low_water.lock().unwrap_or_else(|e| e.into_inner());
        marks.get(subnet_id).copied().unwrap_or(0)
    }

    pub(crate) fn raise_low_water(&self, subnet_id: &str, to: u128) {
        let mut marks = self.low_water.lock().unwrap_or_else(|e| e.into_inner());
        let mark = marks.entry(subnet_id.to_owned()).or_insert(0);
        *mark = (*mark).max(to);
    }

    pub(crate) fn lower_low_water(&self, subnet_id: &str, to: u128) {
        let mut marks = self.low_water.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mark) = marks.get_mut(subnet_id) {
            *mark = (*mark).min(to);
        }
    }

    /// Forgets a subnet's low-water mark (its pools changed or it is gone).
    pub(crate) fn reset_low_water(&self, subnet_id: &str) {
        self.low_water
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(subnet_id);
    }

    pub(crate) fn reservation(&self) -> IpReservation<'_> {
        IpReservation {
            service: self,
            held: Vec::new(),
        }
    }

    /// Whether another request of this controller holds an address of `subnet_id`.
    pub(crate) fn has_reservations(&self, subnet_id: &str) -> bool {
        self.reserved_ips
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(subnet_id)
            .is_some_and(|s| !s.is_empty())
    }

    /// A shared handle.
    pub fn shared(self) -> Arc<Self> {
        Arc::new(self)
    }

    /// Creates a resource from a request body.
    pub async fn create(&self, kind: Kind, caller: &Caller, body: Value) -> Result<Object> {
        match kind {
            Kind::Network => self.create_network(caller, body).await,
            Kind::Subnet => self.create_subnet(caller, body).await,
            Kind::Port => self.create_port(caller, body).await,
            Kind::SecurityGroup => self.create_security_group(caller, body).await,
            Kind::SecurityGroupRule => self.create_security_group_rule(caller, body).await,
            Kind::Router => self.create_router(caller, body).await,
            Kind::FloatingIp => self.create_floating_ip(caller, body).await,
        }
    }

    /// Shows one resource.
    pub async fn show(&self, kind: Kind, caller: &Caller, id: &str) -> Result<Object> {
        match kind {
            Kind::Network => self.show_network(caller, id).await,
            Kind::Subnet => self.show_subnet(caller, id).await,
            Kind::Port => self.show_port(caller, id).await,
            Kind::SecurityGroup => self.show_security_group(caller, id).await,
            Kind::SecurityGroupRule => self.show_security_group_rule(caller, id).await,
            Kind::Router => Ok(self
                .load_owned::<isthmus_model::Router>(caller, id)
                .await?
                .0
                .render(caller)),
            Kind::FloatingIp => Ok(self
                .load_owned::<isthmus_model::FloatingIp>(caller, id)
                .await?
                .0
                .render()),
        }
    }

    /// Lists every resource of a kind the caller may see (the API applies the query).
    pub async fn list(&self, kind: Kind, caller: &Caller) -> Result<Vec<Listed>> {
        match kind {
            Kind::Network => self.list_networks(caller).await,
            Kind::Subnet => self.list_subnets(caller).await,
            Kind::Port => self.list_ports(caller).await,
            Kind::SecurityGroup => self.list_security_groups(caller).await,
            Kind::SecurityGroupRule => self.list_security_group_rules(caller).await,
            Kind::Router => self.list_routers(caller).await,
            Kind::FloatingIp => self.list_floating_ips(caller).await,
        }
    }

    /// Updates a resource; `if_match` is an `If-Match: revision_number=N` constraint.
    pub async fn update(
        &self,
        kind: Kind,
        caller: &Caller,
        id: &str,
        body: Value,
        if_match: Option<u64>,
    ) -> Result<Object> {
        match kind {
            Kind::Network => self.update_network(caller, id, body, if_match).await,
            Kind::Subnet => self.update_subnet(caller, id, body, if_match).await,
            Kind::Port => self.update_port(caller, id, body, if_match).await,
            Kind::SecurityGroup => self.update_security_group(caller, id, body, if_match).await,
            Kind::SecurityGroupRule => Err(Error::BadRequest(
                "Security group rules cannot be updated".to_owned(),
            )),
            Kind::Router => self.update_router(caller, id, body, if_match).await,
            Kind::FloatingIp => self.update_floating_ip(caller, id, body, if_match).await,
        }
    }

    /// Deletes a resource.
    pub async fn delete(
        &self,
        kind: Kind,
        caller: &Caller,
        id: &str,
        if_match: Option<u64>,
    ) -> Result<()> {
        match kind {
            Kind::Network => self.delete_network(caller, id, if_match).await,
            Kind::Subnet => self.delete_subnet(caller, id, if_match).await,
            Kind::Port => self.delete_port(caller, id, if_match).await,
            Kind::SecurityGroup => self.delete_security_group(caller, id, if_match).await,
            Kind::SecurityGroupRule => self.delete_security_group_rule(caller, id).await,
            Kind::Router => self.delete_router(caller, id, if_match).await,
            Kind::FloatingIp => self.delete_floating_ip(caller, id, if_match).await,
        }
    }
}
