use super::*;
use serde_json::json;
use std::collections::BTreeSet;

const NET: &str = "11111111-2222-3333-4444-555555555555";
/// The network's DHCP port id (derived from the network's).
fn dhcp() -> String {
    isthmus_model::port::dhcp_port_id(NET)
}
const VM: &str = "aaaaaaaa-0000-0000-0000-000000000000";
const SUBNET: &str = "5ub";

fn node(name: &str) -> NodeConfig {
    NodeConfig {
        name: name.to_owned(),
        tunnel_ip: "10.0.0.1".parse().unwrap(),
        physnets: BTreeMap::new(),
    }
}

fn view(dhcp_enabled: bool) -> NodeView {
    let mut view = NodeView::default();
    let lines = [
        json!({"type": "ADDED", "kind": "network", "object": {"id": NET, "mtu": 1450,
            "provider:network_type": "vxlan", "provider:segmentation_id": 5}}),
        json!({"type": "ADDED", "kind": "subnet", "object": {"id": SUBNET, "network_id": NET,
            "cidr": "10.1.0.0/24", "gateway_ip": "10.1.0.1", "enable_dhcp": dhcp_enabled,
            "dns_nameservers": [], "host_routes": [{"destination": "192.168.0.0/16", "nexthop": "10.1.0.254"}]}}),
        json!({"type": "ADDED", "kind": "port", "object": {"id": dhcp(), "network_id": NET,
            "mac_address": "fa:16:3e:00:00:02", "fixed_ips": [{"subnet_id": SUBNET, "ip_address": "10.1.0.2"}],
            "port_security_enabled": false, "status": "ACTIVE", "device_owner": "network:dhcp"}}),
        json!({"type": "ADDED", "kind": "port", "object": {"id": VM, "network_id": NET,
            "mac_address": "fa:16:3e:00:00:03", "fixed_ips": [{"subnet_id": SUBNET, "ip_address": "10.1.0.3"}],
            "binding:host_id": "n1", "port_security_enabled": true, "status": "ACTIVE",
            "device_owner": "compute:nova",
            "dns_assignment": [{"hostname": "vm1", "ip_address": "10.1.0.3", "fqdn": "vm1.openstack.local."}],
            "extra_dhcp_opts": [
                {"opt_name": "tftp-server", "opt_value": "10.1.0.9", "ip_version": 4},
                {"opt_name": "42", "opt_value": "10.1.0.7,10.1.0.8", "ip_version": 4},
                {"opt_name": "mtu", "opt_value": "not a number", "ip_version": 4},
                {"opt_name": "dns-server", "opt_value": "2001:db8::1", "ip_version": 6}]}}),
    ];
    for line in lines {
        view.apply(&line).unwrap();
    }
    view
}

#[test]
fn a_node_with_a_port_runs_the_networks_dhcp_namespace() {
    let view = view(true);
    let state = namespaces(&view, &node("n1"));
    let ns = &state[&namespace_name(NET)];
    let iface = &ns.interfaces[&interface_name(&dhcp())];
    assert_eq!(iface.peer, tap_name(&dhcp()));
    assert_eq!(iface.mac, "fa:16:3e:00:00:02");
    assert!(iface.addresses.contains(&("10.1.0.2".parse().unwrap(), 24)));
    assert!(iface.addresses.contains(&(IpAddr::V4(METADATA_IP), 32)));
    assert!(ns
        .neighbours
        .iter()
        .any(|n| n.ip.to_string() == "10.1.0.3" && n.mac == "fa:16:3e:00:00:03"));
    assert!(
        namespaces(&view, &node("n2")).is_empty(),
        "no local port, no namespace"
    );
    // The router planner keeps it, and L2 attaches and pins its tap.
    let routers = crate::plan::namespaces(&view, &node("n1"));
    assert!(routers.contains_key(&namespace_name(NET)));
    let l2 = crate::l2::desired(&view, &node("n1"), &routers);
    assert!(l2.attachments.contains_key(&tap_name(&dhcp())));
    assert!(l2
        .pins
        .iter()
        .any(|p| p.device == tap_name(&dhcp()) && p.mac == "fa:16:3e:00:00:02"));
    assert!(
        !l2.fdb.iter().any(|f| f.mac == "fa:16:3e:00:00:02"),
        "the DHCP MAC is local on every node, never tunnelled"
    );
    // The served port's requests stop at its tap (answered there): one guard rule drops
    // DHCP server replies and client requests alike.
    let taps = crate::node::guarded_ports(&view, &node("n1"))
        .into_keys()
        .collect();
    let ids = crate::filter::port_ids(&taps, &crate::nft::Observed::default());
    let served = crate::filter::DhcpServed {
        v4: leases(&view, &node("n1")).into_keys().collect(),
        v6: crate::dhcp6::leases(&view, &node("n1"))
            .into_keys()
            .collect(),
    };
    let filter = crate::filter::desired(&view, &node("n1"), &ids, &served);
    assert_eq!(
        filter.bridge.chains["from_tapaaaaaaaa-00"][0],
        "ether type ip udp sport . udp dport @dhcp4_guard counter drop"
    );
    assert_eq!(
        filter.bridge.sets["dhcp4_guard"].1,
        BTreeSet::from(["67 . 68".to_owned(), "68 . 67".to_owned()])
    );
    let unserved = self::view(false);
    let served = crate::filter::DhcpServed {
        v4: leases(&unserved, &node("n1")).into_keys().collect(),
        v6: crate::dhcp6::leases(&unserved, &node("n1"))
            .into_keys()
            .collect(),
    };
    let filter = crate::filter::desired(&unserved, &node("n1"), &ids, &served);
    assert_eq!(
        filter.bridge.chains["from_tapaaaaaaaa-00"][0],
        "ether type ip udp sport 67 udp dport 68 counter drop",
        "without the node's DHCP, requests go on (another server may answer)"
    );
}

#[test]
fn leases_cover_the_nodes_own_ports_on_subnets_with_dhcp() {
    let view = view(true);
    let leases = leases(&view, &node("n1"));
    let lease = &leases["tapaaaaaaaa-00"];
    assert_eq!(lease.ip, Ipv4Addr::new(10, 1, 0, 3));
    assert_eq!(lease.server_ip, Ipv4Addr::new(10, 1, 0, 2));
    assert_eq!(lease.dns, [Ipv4Addr::new(10, 1, 0, 2)]);
    assert_eq!(
        (lease.hostname.as_str(), lease.domain.as_str()),
        ("vm1", "openstack.local")
    );
    assert_eq!(lease.mtu, 1450);
    assert_eq!(
        lease.routes,
        [
            (Ipv4Addr::UNSPECIFIED, 0, Ipv4Addr::new(10, 1, 0, 1)),
            (
                Ipv4Addr::new(192, 168, 0, 0),
                16,
                Ipv4Addr::new(10, 1, 0, 254)
            ),
            (METADATA_IP, 32, Ipv4Addr::new(10, 1, 0, 2)),
        ]
    );
    // Bad values are left out; IPv6 options are DHCPv6's.
    assert_eq!(
        lease.extra,
        [
            (66, b"10.1.0.9".to_vec()),
            (42, vec![10, 1, 0, 7, 10, 1, 0, 8])
        ]
    );
    assert!(
        self::leases(&view, &node("n2")).is_empty(),
        "ports bound elsewhere"
    );
    assert!(
        self::leases(&self::view(false), &node("n1")).is_empty(),
        "enable_dhcp off"
    );
}

fn request(kind: MessageType, mac: [u8; 6], opts: Vec<DhcpOption>, ciaddr: Ipv4Addr) -> Vec<u8> {
    let mut msg = v4::Message::new_with_id(
        0x1234_5678,
        ciaddr,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac,
    );
    msg.opts_mut().insert(DhcpOption::MessageType(kind));
    for o in opts {
        msg.opts_mut().insert(o);
    }
    let mut out = Vec::new();
    msg.encode(&mut Encoder::new(&mut out)).unwrap();
    out
}

fn decode(reply: &Reply) -> v4::Message {
    v4::Message::decode(&mut Decoder::new(&reply.message)).unwrap()
}

#[test]
fn discover_offer_request_ack_and_the_rest() {
    let view = view(true);
    let lease = leases(&view, &node("n1")).remove("tapaaaaaaaa-00").unwrap();
    let mac = lease.mac;
    let offer = answer(
        &lease,
        &request(MessageType::Discover, mac, vec![], Ipv4Addr::UNSPECIFIED),
    )
    .unwrap();
    assert_eq!(offer.kind, MessageType::Offer);
    assert_eq!((offer.dst_ip, offer.dst_mac), (lease.ip, mac));
    let m = decode(&offer);
    assert_eq!(m.xid(), 0x1234_5678);
    assert_eq!(m.yiaddr(), lease.ip);
    let o = m.opts();
    assert_eq!(
        o.get(OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
    );
    assert_eq!(
        o.get(OptionCode::Router),
        Some(&DhcpOption::Router(vec![Ipv4Addr::new(10, 1, 0, 1)]))
    );
    assert_eq!(
        o.get(OptionCode::InterfaceMtu),
        Some(&DhcpOption::InterfaceMtu(1450))
    );
    assert_eq!(
        o.get(OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(LEASE_SECONDS))
    );
    assert_eq!(
        o.get(OptionCode::Hostname),
        Some(&DhcpOption::Hostname("vm1".into()))
    );
    assert_eq!(
        o.get(OptionCode::DomainName),
        Some(&DhcpOption::DomainName("openstack.local".into()))
    );
    assert_eq!(
        o.get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(lease.server_ip))
    );
    match o.get(OptionCode::ClasslessStaticRoute) {
        Some(DhcpOption::ClasslessStaticRoute(routes)) => {
            assert_eq!(routes.len(), 3);
            assert_eq!(routes[2].0.to_string(), "169.254.169.254/32");
            assert_eq!(routes[2].1, Ipv4Addr::new(10, 1, 0, 2));
        }
        other => panic!("option 121: {other:?}"),
    }
    assert!(o.iter().any(|(c, _)| u8::from(*c) == 66));

    let ack = answer(
        &lease,
        &request(
            MessageType::Request,
            mac,
            vec![
                DhcpOption::RequestedIpAddress(lease.ip),
                DhcpOption::ServerIdentifier(lease.server_ip),
            ],
            Ipv4Addr::UNSPECIFIED,
        ),
    )
    .unwrap();
    assert_eq!(ack.kind, MessageType::Ack);
    // A renewal (ciaddr set) is answered to the client's address.
    let renew = answer(
        &lease,
        &request(MessageType::Request, mac, vec![], lease.ip),
    )
    .unwrap();
    assert_eq!((renew.kind, renew.dst_ip), (MessageType::Ack, lease.ip));
    // The port's address changed since: the old one is refused (NAK, broadcast).
    let nak = answer(
        &lease,
        &request(
            MessageType::Request,
            mac,
            vec![DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 1, 0, 99))],
            Ipv4Addr::UNSPECIFIED,
        ),
    )
    .unwrap();
    assert_eq!(
        (nak.kind, nak.dst_ip, nak.dst_mac),
        (MessageType::Nak, Ipv4Addr::BROADCAST, [0xff; 6])
    );
    assert_eq!(decode(&nak).yiaddr(), Ipv4Addr::UNSPECIFIED);
    // Another server's offer, another MAC, a RELEASE, garbage: no answer.
    let other = request(
        MessageType::Request,
        mac,
        vec![DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 1, 0, 50))],
        Ipv4Addr::UNSPECIFIED,
    );
    assert_eq!(answer(&lease, &other), Err(Ignored::OtherServer));
    let spoofed = request(
        MessageType::Discover,
        [2, 0, 0, 0, 0, 1],
        vec![],
        Ipv4Addr::UNSPECIFIED,
    );
    assert_eq!(answer(&lease, &spoofed), Err(Ignored::WrongClient));
    let release = request(MessageType::Release, mac, vec![], lease.ip);
    assert_eq!(answer(&lease, &release), Err(Ignored::NotAnswered));
    assert!(matches!(
        answer(&lease, b"nonsense"),
        Err(Ignored::Malformed(_))
    ));
    // INFORM: configuration without an address or a lease.
    let inform = answer(&lease, &request(MessageType::Inform, mac, vec![], lease.ip)).unwrap();
    let m = decode(&inform);
    assert_eq!(
        (inform.kind, m.yiaddr(), m.ciaddr()),
        (MessageType::Ack, Ipv4Addr::UNSPECIFIED, lease.ip)
    );
    assert!(m.opts().get(OptionCode::AddressLeaseTime).is_none());
}

/// The frame a client sends: broadcast, from 0.0.0.0:68 to 255.255.255.255:67.
fn client_frame(payload: &[u8]) -> Vec<u8> {
    let lease = Lease {
        port_id: String::new(),
        mac: [0xff; 6],
        ip: Ipv4Addr::UNSPECIFIED,
        prefix: 0,
        router: None,
        dns: vec![],
        domain: String::new(),
        hostname: String::new(),
        mtu: 0,
        routes: vec![],
        lease_seconds: 0,
        server_ip: Ipv4Addr::UNSPECIFIED,
        server_mac: [2, 0, 0, 0, 0, 1],
        extra: vec![],
    };
    let mut frame = reply_frame(
        &lease,
        &Reply {
            message: payload.to_vec(),
            dst_ip: Ipv4Addr::BROADCAST,
            dst_mac: [0xff; 6],
            kind: MessageType::Discover,
        },
    );
    // Swap the ports: 68 → 67.
    frame[34..36].copy_from_slice(&CLIENT_PORT.to_be_bytes());
    frame[36..38].copy_from_slice(&SERVER_PORT.to_be_bytes());
    frame
}

#[test]
fn frames_in_and_out() {
    let view = view(true);
    let lease = leases(&view, &node("n1")).remove("tapaaaaaaaa-00").unwrap();
    let discover = request(
        MessageType::Discover,
        lease.mac,
        vec![],
        Ipv4Addr::UNSPECIFIED,
    );
    let frame = client_frame(&discover);
    assert_eq!(request_payload(&frame), Some(&discover[..]));
    // Not to port 67, not IPv4, truncated: nothing.
    let mut other = frame.clone();
    other[36..38].copy_from_slice(&53u16.to_be_bytes());
    assert_eq!(request_payload(&other), None);
    other = frame.clone();
    other[12] = 0x86;
    assert_eq!(request_payload(&other), None);
    assert_eq!(request_payload(&frame[..30]), None);

    let offer = answer(&lease, &discover).unwrap();
    let out = reply_frame(&lease, &offer);
    assert_eq!(&out[0..6], &lease.mac);
    assert_eq!(&out[6..12], &lease.server_mac);
    // The IPv4 header checksums to zero; the UDP checksum over the pseudo-header too.
    assert_eq!(checksum(&[&out[14..34]]), 0);
    let mut pseudo = Vec::new();
    pseudo.extend(&out[26..34]);
    pseudo.extend([0, 17]);
    pseudo.extend(&out[38..40]);
    assert_eq!(checksum(&[&pseudo, &out[34..]]), 0);
    assert_eq!(u16::from_be_bytes([out[36], out[37]]), CLIENT_PORT);
    assert_eq!(&out[42..], &offer.message[..]);
}
