//! IP addresses as integers, CIDRs and address ranges.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// IP version, 4 or 6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IpVersion {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IpVersion {
    /// 4 or 6.
    pub fn number(self) -> u8 {
        match self {
            IpVersion::V4 => 4,
            IpVersion::V6 => 6,
        }
    }
    /// Address width in bits.
    pub fn bits(self) -> u8 {
        match self {
            IpVersion::V4 => 32,
            IpVersion::V6 => 128,
        }
    }
    /// The version of `ip`.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => IpVersion::V4,
            IpAddr::V6(_) => IpVersion::V6,
        }
    }
    /// Neutron's ethertype name, `IPv4` or `IPv6`.
    pub fn ethertype(self) -> &'static str {
        match self {
            IpVersion::V4 => "IPv4",
            IpVersion::V6 => "IPv6",
        }
    }
}

/// An address as a number, for arithmetic.
pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The address `n` of `version`.
pub fn from_u128(version: IpVersion, n: u128) -> IpAddr {
    match version {
        IpVersion::V4 => IpAddr::V4(Ipv4Addr::from(n as u32)),
        IpVersion::V6 => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

/// Inclusive address ranges, sorted and merged where they overlap or touch.
pub(crate) fn merged(mut ranges: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    ranges.sort_unstable();
    let mut out: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
    for (first, last) in ranges {
        match out.last_mut() {
            Some(prev) if first <= prev.1.saturating_add(1) => prev.1 = prev.1.max(last),
            _ => out.push((first, last)),
        }
    }
    out
}

/// The last offset of a block of 2^`size_bits` addresses.
fn span(size_bits: u32) -> u128 {
    if size_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << size_bits) - 1
    }
}

/// The fewest prefixes that cover `first..=last` exactly.
pub(crate) fn cover(version: IpVersion, first: u128, last: u128) -> Vec<Cidr> {
    let bits = u32::from(version.bits());
    let mut out = Vec::new();
    let mut at = first;
    loop {
        // The largest aligned block starting at `at` that stays within `last`.
        let mut size_bits = at.trailing_zeros().min(bits);
        while size_bits > 0 && at.checked_add(span(size_bits)).is_none_or(|end| end > last) {
            size_bits -= 1;
        }
        out.push(Cidr {
            network: from_u128(version, at),
            prefix: (bits - size_bits) as u8,
        });
        let end = at + span(size_bits);
        if end >= last {
            return out;
        }
        at = end + 1;
    }
}

/// `prefixes` compacted: overlapping and adjacent prefixes merged, as Neutron stores them.
pub fn compact(version: IpVersion, prefixes: &[Cidr]) -> Vec<Cidr> {
    merged(prefixes.iter().map(|p| (p.first(), p.last())).collect())
        .into_iter()
        .flat_map(|(first, last)| cover(version, first, last))
        .collect()
}

/// A network prefix such as `10.0.0.0/24` (host bits zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    /// Network address.
    pub network: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

/// Why a CIDR string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CidrError {
    /// Not `address/prefix` with a valid address and length.
    Invalid,
    /// Host bits set; the suggestion is the proper network.
    HostBitsSet(Cidr),
}

impl Cidr {
    /// Parses `a.b.c.d/n` or `x::/n`; a bare address is a host prefix.
    pub fn parse(s: &str) -> Result<Cidr, CidrError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let ip = IpAddr::from_str(addr).map_err(|_| CidrError::Invalid)?;
        let version = IpVersion::of(ip);
        let prefix = match prefix {
            Some(p) => {
                if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(CidrError::Invalid);
                }
                p.parse::<u8>().map_err(|_| CidrError::Invalid)?
            }
            None => version.bits(),
        };
        if prefix > version.bits() {
            return Err(CidrError::Invalid);
        }
        let cidr = Cidr {
            network: from_u128(version, to_u128(ip) & mask(version, prefix)),
            prefix,
        };
        if cidr.network != ip {
            return Err(CidrError::HostBitsSet(cidr));
        }
        Ok(cidr)
    }

    /// The prefix of one address (`/32` or `/128`).
    pub fn host(ip: IpAddr) -> Cidr {
        Cidr {
            network: ip,
            prefix: IpVersion::of(ip).bits(),
        }
    }

    /// `0.0.0.0/0`.
    pub fn default_v4() -> Cidr {
        Cidr {
            network: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            prefix: 0,
        }
    }

    /// Parses and masks host bits instead of refusing them (for remote prefixes).
    pub fn parse_lenient(s: &str) -> Option<Cidr> {
        match Cidr::parse(s) {
            Ok(c) | Err(CidrError::HostBitsSet(c)) => Some(c),
            Err(CidrError::Invalid) => None,
        }
    }

    /// The address family.
    pub fn version(&self) -> IpVersion {
        IpVersion::of(self.network)
    }
    /// First address as a number.
    pub fn first(&self) -> u128 {
        to_u128(self.network)
    }
    /// Last address as a number.
    pub fn last(&self) -> u128 {
        self.first() | !mask(self.version(), self.prefix) & full(self.version())
    }
    /// Whether `ip` is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        IpVersion::of(ip) == self.version() && (self.first()..=self.last()).contains(&to_u128(ip))
    }
    /// Whether the two prefixes share any address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.version() == other.version()
            && self.first() <= other.last()
            && other.first() <= self.last()
    }
    /// First usable host address (network + 1, or the only address of a host prefix).
    pub fn first_host(&self) -> u128 {
        if self.first() == self.last() {
            self.first()
        } else {
            self.first() + 1
        }
    }
}

fn full(version: IpVersion) -> u128 {
    match version {
        IpVersion::V4 => u32::MAX as u128,
        IpVersion::V6 => u128::MAX,
    }
}

fn mask(version: IpVersion, prefix: u8) -> u128 {
    let bits = version.bits();
    if prefix == 0 {
        0
    } else {
        (full(version) >> (bits - prefix)) << (bits - prefix) & full(version)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// An inclusive range of addresses of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    /// First address.
    pub start: IpAddr,
    /// Last address (inclusive).
    pub end: IpAddr,
}

impl IpRange {
    /// First address as a number.
    pub fn first(&self) -> u128 {
        to_u128(self.start)
    }
    /// Last address as a number.
    pub fn last(&self) -> u128 {
        to_u128(self.end)
    }
    /// Number of addresses.
    pub fn size(&self) -> u128 {
        self.last() - self.first() + 1
    }
    /// Whether `ip` is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        IpVersion::of(ip) == IpVersion::of(self.start)
            && (self.first()..=self.last()).contains(&to_u128(ip))
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// Fixed-width hex of an address: sorts like the numbers, so a store range yields addresses in
/// order.
pub fn sortable_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{:08x}", u32::from(v4)),
        IpAddr::V6(v6) => format!("{:032x}", u128::from(v6)),
    }
}

/// Inverse of [`sortable_key`].
pub fn from_sortable_key(key: &str) -> Option<IpAddr> {
    match key.len() {
        8 => u32::from_str_radix(key, 16)
            .ok()
            .map(|n| IpAddr::V4(Ipv4Addr::from(n))),
        32 => u128::from_str_radix(key, 16)
            .ok()
            .map(|n| IpAddr::V6(Ipv6Addr::from(n))),
        _ => None,
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Cidr::parse_lenient(&s).ok_or_else(|| serde::de::Error::custom(format!("bad cidr {s}")))
    }
}

impl serde::Serialize for IpRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("IpRange", 2)?;
        st.serialize_field("start", &self.start.to_string())?;
        st.serialize_field("end", &self.end.to_string())?;
        st.end()
    }
}

impl<'de> serde::Deserialize<'de> for IpRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            start: IpAddr,
            end: IpAddr,
        }
        let raw = Raw::deserialize(d)?;
        Ok(IpRange {
            start: raw.start,
            end: raw.end,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing_and_bounds() {
        let c = Cidr::parse("10.0.0.0/24").unwrap();
        assert_eq!(c.first(), to_u128("10.0.0.0".parse().unwrap()));
        assert_eq!(
            from_u128(IpVersion::V4, c.last()),
            "10.0.0.255".parse::<IpAddr>().unwrap()
        );
        assert!(matches!(
            Cidr::parse("10.0.0.5/24"),
            Err(CidrError::HostBitsSet(s)) if s.to_string() == "10.0.0.0/24"
        ));
        assert_eq!(Cidr::parse("10.0.0.0/33"), Err(CidrError::Invalid));
        assert_eq!(Cidr::parse("nonsense"), Err(CidrError::Invalid));
        let v6 = Cidr::parse("2001:db8::/64").unwrap();
        assert_eq!(v6.last() - v6.first(), u64::MAX as u128);
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("::/0")
            .unwrap()
            .contains("::1".parse().unwrap()));
        assert!(c.overlaps(&Cidr::parse("10.0.0.128/25").unwrap()));
        assert!(!c.overlaps(&Cidr::parse("10.0.1.0/24").unwrap()));
    }

    #[test]
    fn sortable_keys_round_trip_and_order() {
        let a: IpAddr = "10.0.0.9".parse().unwrap();
        let b: IpAddr = "10.0.0.10".parse().unwrap();
        assert!(sortable_key(a) < sortable_key(b));
        assert_eq!(from_sortable_key(&sortable_key(b)), Some(b));
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(from_sortable_key(&sortable_key(v6)), Some(v6));
    }
}
