//! Node-local DNS for instances (pure part): every port's `dns_assignment` names (A/AAAA and
//! PTR) and Kubernetes Services' names (`dns_record`s), answered authoritatively on the DHCP port's addresses in each network's DHCP
//! namespace; everything else is forwarded upstream by the agent. An instance sees the names
//! of its own network and of the networks sharing a router with it (what it can reach by
//! address anyway), not the whole node's.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use isthmus_model::router::OWNER_INTERFACE;

use crate::view::NodeView;

/// TTL of local answers: names follow the API within milliseconds, so none is cached.
pub const TTL: u32 = 0;

/// The names one network's instances may resolve.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    /// Lower-case FQDN (with the trailing dot) → addresses.
    forward: BTreeMap<String, BTreeSet<IpAddr>>,
    /// Address → FQDN.
    reverse: BTreeMap<IpAddr, String>,
    /// `_<port>._<protocol>.<fqdn>` → (port, target FQDN).
    services: BTreeMap<String, Vec<(u16, String)>>,
    /// The domains the names are in (`openstack.local.`): a name under one that is not known
    /// does not exist (it is not forwarded).
    domains: BTreeSet<String>,
}

impl Names {
    /// The addresses of `fqdn` (any case, with or without the trailing dot).
    pub fn lookup(&self, fqdn: &str) -> Option<&BTreeSet<IpAddr>> {
        self.forward.get(&normal(fqdn))
    }
}

fn normal(name: &str) -> String {
    let mut name = name.to_ascii_lowercase();
    if !name.ends_with('.') {
        name.push('.');
    }
    name
}

/// The names each network of the view resolves, by network id (networks joined by a router
/// share one set).
pub fn names(view: &NodeView) -> BTreeMap<String, Arc<Names>> {
    // Networks joined by routers: each router's networks form one scope (merged when a
    // network is on several routers).
    let mut scope_of: BTreeMap<&str, usize> = BTreeMap::new();
    let mut scopes: Vec<BTreeSet<&str>> = Vec::new();
    let mut by_router: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for port in view.ports.values() {
        if port.device_owner == OWNER_INTERFACE {
            by_router
                .entry(port.device_id.as_str())
                .or_default()
                .insert(port.network_id.as_str());
        }
    }
    let networks = view
        .networks
        .keys()
        .map(String::as_str)
        .chain(view.ports.values().map(|p| p.network_id.as_str()));
    for net in networks {
        if !scope_of.contains_key(net) {
            scope_of.insert(net, scopes.len());
            scopes.push(BTreeSet::from([net]));
        }
    }
    for joined in by_router.values() {
        let mut ids: Vec<usize> = joined
            .iter()
            .filter_map(|n| scope_of.get(n).copied())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let Some((&keep, rest)) = ids.split_first() else {
            continue;
        };
        for &other in rest {
            let moved = std::mem::take(&mut scopes[other]);
            for n in &moved {
                scope_of.insert(n, keep);
            }
            scopes[keep].extend(moved);
        }
    }
    let mut built: Vec<Names> = vec![Names::default(); scopes.len()];
    for port in view.ports.values() {
        let Some(&scope) = scope_of.get(port.network_id.as_str()) else {
            continue;
        };
        let names = &mut built[scope];
        for a in &port.dns_assignment {
            let fqdn = normal(&a.fqdn);
            if let Some(domain) =
                fqdn.strip_prefix(&format!("{}.", a.hostname.to_ascii_lowercase()))
            {
                if !domain.is_empty() {
                    names.domains.insert(domain.to_owned());
                }
            }
            names
                .forward
                .entry(fqdn.clone())
                .or_default()
                .insert(a.ip_address);
            names.reverse.insert(a.ip_address, fqdn);
        }
    }
    // Kubernetes Services' names, in the routing domain of their service network.
    for record in view.dns_records.values() {
        let Some(&scope) = scope_of.get(record.network_id.as_str()) else {
            continue;
        };
        let names = &mut built[scope];
        let fqdn = normal(&record.fqdn);
        names.domains.insert(normal(&record.zone));
        for ip in &record.addresses {
            names.reverse.entry(*ip).or_insert_with(|| fqdn.clone());
        }
        for p in &record.ports {
            names
                .services
                .entry(format!("_{}._{}.{fqdn}", p.name, p.protocol).to_ascii_lowercase())
                .or_default()
                .push((p.port, fqdn.clone()));
        }
        names
            .forward
            .entry(fqdn)
            .or_default()
            .extend(record.addresses.iter().copied());
    }
    let built: Vec<Arc<Names>> = built.into_iter().map(Arc::new).collect();
    scope_of
        .into_iter()
        .map(|(net, scope)| (net.to_owned(), built[scope].clone()))
        .collect()
}

/// What to do with a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Send this answer.
    Local(Vec<u8>),
    /// Not a local name: forward the query upstream as it is.
    Forward,
    /// Not a DNS query at all: drop it.
    Drop,
}

fn reply(request: &Message, code: ResponseCode, records: Vec<Record>) -> Answer {
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.metadata.authoritative = code != ResponseCode::FormErr;
    response.metadata.response_code = code;
    response.add_queries(request.queries.iter().cloned());
    response.add_answers(records);
    match response.to_vec() {
        Ok(bytes) => Answer::Local(bytes),
        Err(_) => Answer::Drop,
    }
}

/// The answer to `query` (a DNS message's bytes) from `names`.
pub fn answer(names: &Names, query: &[u8]) -> Answer {
    let Ok(request) = Message::from_vec(query) else {
        return Answer::Drop;
    };
    if request.metadata.message_type != MessageType::Query {
        return Answer::Drop;
    }
    if request.metadata.op_code != OpCode::Query || request.queries.len() != 1 {
        return reply(&request, ResponseCode::FormErr, Vec::new());
    }
    let question = &request.queries[0];
    let name = question.name();
    let text = normal(&name.to_ascii());
    let kind = question.query_type();
    if let Some(addresses) = names.forward.get(&text) {
        let records = addresses
            .iter()
            .filter_map(|ip| {
                let rdata = match (ip, kind) {
                    (IpAddr::V4(a), RecordType::A | RecordType::ANY) => RData::A(A(*a)),
                    (IpAddr::V6(a), RecordType::AAAA | RecordType::ANY) => RData::AAAA(AAAA(*a)),
                    _ => return None,
                };
                Some(Record::from_rdata(name.clone(), TTL, rdata))
            })
            .collect();
        return reply(&request, ResponseCode::NoError, records);
    }
    if let Some(targets) = names.services.get(&text) {
        let records = targets
            .iter()
            .filter(|_| matches!(kind, RecordType::SRV | RecordType::ANY))
            .filter_map(|(port, target)| {
                let target = Name::from_ascii(target).ok()?;
                let rdata = RData::SRV(SRV::new(0, 100, *port, target));
                Some(Record::from_rdata(name.clone(), TTL, rdata))
            })
            .collect();
        return reply(&request, ResponseCode::NoError, records);
    }
    if kind == RecordType::PTR {
        if let Ok(net) = name.parse_arpa_name() {
            if net.prefix_len() == net.max_prefix_len() {
                if let Some(fqdn) = names.reverse.get(&net.addr()) {
                    if let Ok(target) = Name::from_ascii(fqdn) {
                        let record = Record::from_rdata(name.clone(), TTL, RData::PTR(PTR(target)));
                        return reply(&request, ResponseCode::NoError, vec![record]);
                    }
                }
            }
        }
        return Answer::Forward;
    }
    if names
        .domains
        .iter()
        .any(|d| text.ends_with(&format!(".{d}")) || &text == d)
    {
        return reply(&request, ResponseCode::NXDomain, Vec::new());
    }
    Answer::Forward
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use serde_json::json;

    fn port(
        view: &mut NodeView,
        id: &str,
        net: &str,
        ip: &str,
        name: &str,
        owner: &str,
        device: &str,
    ) {
        view.apply(&json!({"type": "ADDED", "kind": "port", "object": {
            "id": id, "network_id": net, "mac_address": "fa:16:3e:00:00:01",
            "fixed_ips": [{"subnet_id": "s", "ip_address": ip}], "port_security_enabled": false,
            "status": "ACTIVE", "device_owner": owner, "device_id": device,
            "dns_assignment": [{"hostname": name, "ip_address": ip, "fqdn": format!("{name}.openstack.local.")}]}}))
            .unwrap();
    }

    fn query(name: &str, kind: RecordType) -> Vec<u8> {
        let mut m = Message::new(77, MessageType::Query, OpCode::Query);
        m.metadata.id = 77;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        m.to_vec().unwrap()
    }

    fn decode(answer: Answer) -> Message {
        match answer {
            Answer::Local(bytes) => Message::from_vec(&bytes).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn services_resolve_in_the_routing_domain_of_their_network() {
        let mut view = NodeView::default();
        port(
            &mut view,
            "a",
            "net-a",
            "10.0.0.3",
            "vm-a",
            "compute:nova",
            "i-a",
        );
        port(
            &mut view,
            "ra",
            "net-a",
            "10.0.0.1",
            "gw-a",
            OWNER_INTERFACE,
            "r1",
        );
        port(
            &mut view,
            "rs",
            "svc",
            "10.96.0.1",
            "gw-s",
            OWNER_INTERFACE,
            "r1",
        );
        port(
            &mut view,
            "c",
            "net-c",
            "10.2.0.3",
            "vm-c",
            "compute:nova",
            "i-c",
        );
        view.apply(&json!({"type": "ADDED", "kind": "dns_record", "object": {
            "id": "team-b/web", "fqdn": "web.team-b.svc.cluster.local.", "zone": "svc.cluster.local.",
            "addresses": ["10.96.0.10"], "network_id": "svc",
            "ports": [{"name": "http", "protocol": "tcp", "port": 80}]}}))
            .unwrap();
        let all = names(&view);
        let a = &all["net-a"];
        assert_eq!(
            a.lookup("web.team-b.svc.cluster.local")
                .unwrap()
                .iter()
                .next()
                .unwrap()
                .to_string(),
            "10.96.0.10"
        );
        assert!(
            all["net-c"]
                .lookup("web.team-b.svc.cluster.local")
                .is_none(),
            "not routed there"
        );
        // Its named port.
        let m = decode(answer(
            a,
            &query("_http._tcp.web.team-b.svc.cluster.local.", RecordType::SRV),
        ));
        match &m.answers[0].data {
            RData::SRV(srv) => {
                assert_eq!(srv.port, 80);
                assert_eq!(srv.target.to_ascii(), "web.team-b.svc.cluster.local.");
            }
            other => panic!("{other:?}"),
        }
        // Another name in the zone does not exist (it is not forwarded upstream).
        let m = decode(answer(
            a,
            &query("db.team-b.svc.cluster.local.", RecordType::A),
        ));
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn names_of_a_network_and_its_routed_neighbours() {
        let mut view = NodeView::default();
        port(
            &mut view,
            "a",
            "net-a",
            "10.0.0.3",
            "vm-a",
            "compute:nova",
            "i-a",
        );
        port(
            &mut view,
            "b",
            "net-b",
            "10.1.0.3",
            "vm-b",
            "compute:nova",
            "i-b",
        );
        port(
            &mut view,
            "c",
            "net-c",
            "10.2.0.3",
            "vm-c",
            "compute:nova",
            "i-c",
        );
        port(
            &mut view,
            "ra",
            "net-a",
            "10.0.0.1",
            "host-10-0-0-1",
            OWNER_INTERFACE,
            "r1",
        );
        port(
            &mut view,
            "rb",
            "net-b",
            "10.1.0.1",
            "host-10-1-0-1",
            OWNER_INTERFACE,
            "r1",
        );
        let all = names(&view);
        let a = &all["net-a"];
        assert_eq!(
            a.lookup("VM-B.openstack.local")
                .unwrap()
                .iter()
                .next()
                .unwrap()
                .to_string(),
            "10.1.0.3",
            "a network behind the same router"
        );
        assert!(
            a.lookup("vm-c.openstack.local.").is_none(),
            "an unrelated network"
        );
        assert!(all["net-c"].lookup("vm-a.openstack.local.").is_none());

        let m = decode(answer(a, &query("vm-a.openstack.local.", RecordType::A)));
        assert_eq!(m.metadata.id, 77);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.answers[0].data, RData::A(A("10.0.0.3".parse().unwrap())));
        // Known name, no address of that family: no data, not an error.
        let m = decode(answer(a, &query("vm-a.openstack.local.", RecordType::AAAA)));
        assert_eq!(
            (m.metadata.response_code, m.answers.len()),
            (ResponseCode::NoError, 0)
        );
        // Unknown name in the local domain: it does not exist.
        let m = decode(answer(a, &query("nobody.openstack.local.", RecordType::A)));
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        // Reverse.
        let m = decode(answer(a, &query("3.0.0.10.in-addr.arpa.", RecordType::PTR)));
        assert_eq!(
            m.answers[0].data,
            RData::PTR(PTR(Name::from_ascii("vm-a.openstack.local.").unwrap()))
        );
        // The rest goes upstream; garbage is dropped.
        assert_eq!(
            answer(a, &query("example.org.", RecordType::A)),
            Answer::Forward
        );
        assert_eq!(
            answer(a, &query("9.9.9.9.in-addr.arpa.", RecordType::PTR)),
            Answer::Forward
        );
        assert_eq!(answer(a, b"\x00\x01garbage"), Answer::Drop);
    }
}
