//! IP address management: default allocation pools, pool validation and lowest-free allocation.
//!
//! Allocation itself is made safe by the store (a compare-and-swap on one key per address);
//! this module only decides which address to try.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::addr::{from_u128, to_u128, Cidr, IpRange, IpVersion};
use crate::error::{Error, Result};

/// Neutron's default pools: the cidr minus the network address, the IPv4 broadcast address and
/// the gateway.
pub fn default_pools(cidr: &Cidr, gateway: Option<IpAddr>) -> Vec<IpRange> {
    let version = cidr.version();
    let (first, last) = (cidr.first(), cidr.last());
    if first == last {
        return vec![range(version, first, last)];
    }
    let start = first + 1;
    let end = last - u128::from(version == IpVersion::V4);
    if start >= end {
        return Vec::new();
    }
    let mut pools = Vec::new();
    match gateway.map(to_u128).filter(|g| (start..=end).contains(g)) {
        Some(g) => {
            if g > start {
                pools.push(range(version, start, g - 1));
            }
            if g < end {
                pools.push(range(version, g + 1, end));
            }
        }
        None => pools.push(range(version, start, end)),
    }
    pools
}

fn range(version: IpVersion, first: u128, last: u128) -> IpRange {
    IpRange {
        start: from_u128(version, first),
        end: from_u128(version, last),
    }
}

/// Checks pools against the subnet as Neutron does: right family, ordered, inside the usable
/// part of the cidr, not overlapping each other, not containing the gateway.
pub fn validate_pools(cidr: &Cidr, pools: &[IpRange], gateway: Option<IpAddr>) -> Result<()> {
    let usable_first = cidr.first_host();
    let usable_last = cidr.last() - u128::from(cidr.version() == IpVersion::V4 && cidr.prefix < 31);
    for pool in pools {
        if IpVersion::of(pool.start) != cidr.version() || IpVersion::of(pool.end) != cidr.version()
        {
            return Err(Error::InvalidInput(format!(
                "Allocation pool {pool} is not of the subnet's IP version"
            )));
        }
        if pool.first() > pool.last() {
            return Err(Error::InvalidInput(format!(
                "The allocation pool {pool} has a start address after its end"
            )));
        }
        if pool.first() < usable_first || pool.last() > usable_last {
            return Err(Error::OutOfBoundsAllocationPool {
                pool: pool.to_string(),
                cidr: cidr.to_string(),
            });
        }
    }
    let mut sorted: Vec<&IpRange> = pools.iter().collect();
    sorted.sort_by_key(|p| p.first());
    for pair in sorted.windows(2) {
        if pair[1].first() <= pair[0].last() {
            return Err(Error::OverlappingAllocationPools(format!(
                "{} and {} for subnet {}",
                pair[0], pair[1], cidr
            )));
        }
    }
    if let Some(gateway) = gateway {
        if let Some(pool) = pools.iter().find(|p| p.contains(gateway)) {
            return Err(Error::GatewayConflictWithAllocationPools {
                gateway: gateway.to_string(),
                pool: pool.to_string(),
            });
        }
    }
    Ok(())
}

/// The lowest address of `pools` (taken in address order) not in `used`.
pub fn lowest_free(pools: &[IpRange], used: &BTreeSet<u128>) -> Option<IpAddr> {
    let mut ordered: Vec<&IpRange> = pools.iter().collect();
    ordered.sort_by_key(|p| p.first());
    for pool in ordered {
        let version = IpVersion::of(pool.start);
        let mut candidate = pool.first();
        // Walk the used addresses from the pool start: each one equal to the candidate pushes
        // it up by one; the first gap is the answer.
        for &taken in used.range(candidate..=pool.last()) {
            if taken != candidate {
                break;
            }
            candidate += 1;
        }
        if candidate <= pool.last() {
            return Some(from_u128(version, candidate));
        }
    }
    None
}

/// Number of pool addresses not in `used`.
pub fn free_count(pools: &[IpRange], used: &BTreeSet<u128>) -> u128 {
    pools
        .iter()
        .map(|p| p.size() - used.range(p.first()..=p.last()).count() as u128)
        .sum()
}

/// The SLAAC (EUI-64) address of `mac` in a /64 `prefix`.
pub fn eui64(prefix: &Cidr, mac: [u8; 6]) -> IpAddr {
    let iid = [
        mac[0] ^ 0x02,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ];
    let host = u64::from_be_bytes(iid) as u128;
    from_u128(IpVersion::V6, prefix.first() | host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn default_pools_follow_neutron() {
        let c = Cidr::parse("192.168.100.0/24").unwrap();
        let pools = default_pools(&c, Some(ip("192.168.100.1")));
        assert_eq!(
            pools,
            vec![IpRange {
                start: ip("192.168.100.2"),
                end: ip("192.168.100.254")
            }]
        );
        // A gateway in the middle splits the pool.
        let pools = default_pools(&c, Some(ip("192.168.100.100")));
        assert_eq!(pools.len(), 2);
        assert_eq!(pools[0].end, ip("192.168.100.99"));
        assert_eq!(pools[1].start, ip("192.168.100.101"));
        // No gateway: the whole usable range.
        assert_eq!(default_pools(&c, None)[0].start, ip("192.168.100.1"));
        // /28: 13 addresses once the gateway is taken out.
        let small = Cidr::parse("10.1.0.0/28").unwrap();
        let pools = default_pools(&small, Some(ip("10.1.0.1")));
        assert_eq!(pools.iter().map(IpRange::size).sum::<u128>(), 13);
        // IPv6 keeps the last address.
        let v6 = Cidr::parse("2001:db8::/64").unwrap();
        let pools = default_pools(&v6, Some(ip("2001:db8::1")));
        assert_eq!(pools[0].start, ip("2001:db8::2"));
        assert_eq!(pools[0].end, ip("2001:db8::ffff:ffff:ffff:ffff"));
        // /31 has nothing to hand out.
        assert!(default_pools(&Cidr::parse("10.0.0.0/31").unwrap(), None).is_empty());
    }

    #[test]
    fn lowest_free_is_deterministic_and_skips_used() {
        let c = Cidr::parse("10.0.0.0/24").unwrap();
        let pools = default_pools(&c, Some(ip("10.0.0.1")));
        let mut used = BTreeSet::new();
        assert_eq!(lowest_free(&pools, &used), Some(ip("10.0.0.2")));
        used.insert(to_u128(ip("10.0.0.2")));
        assert_eq!(lowest_free(&pools, &used), Some(ip("10.0.0.3")));
        used.insert(to_u128(ip("10.0.0.4")));
        assert_eq!(lowest_free(&pools, &used), Some(ip("10.0.0.3")));
        used.insert(to_u128(ip("10.0.0.3")));
        assert_eq!(lowest_free(&pools, &used), Some(ip("10.0.0.5")));
        // Addresses outside the pools (explicit ones) do not matter.
        used.insert(to_u128(ip("10.0.0.1")));
        assert_eq!(lowest_free(&pools, &used), Some(ip("10.0.0.5")));
        assert_eq!(free_count(&pools, &used), 253 - 3);
    }

    #[test]
    fn exhaustion_and_multiple_pools() {
        let pools = vec![
            IpRange {
                start: ip("10.0.0.20"),
                end: ip("10.0.0.21"),
            },
            IpRange {
                start: ip("10.0.0.10"),
                end: ip("10.0.0.10"),
            },
        ];
        let mut used = BTreeSet::new();
        let mut got = Vec::new();
        while let Some(a) = lowest_free(&pools, &used) {
            got.push(a);
            used.insert(to_u128(a));
        }
        assert_eq!(got, vec![ip("10.0.0.10"), ip("10.0.0.20"), ip("10.0.0.21")]);
        assert_eq!(free_count(&pools, &used), 0);
    }

    #[test]
    fn pool_validation() {
        let c = Cidr::parse("10.0.0.0/24").unwrap();
        let gw = Some(ip("10.0.0.1"));
        let ok = [IpRange {
            start: ip("10.0.0.10"),
            end: ip("10.0.0.20"),
        }];
        assert!(validate_pools(&c, &ok, gw).is_ok());
        let outside = [IpRange {
            start: ip("10.0.0.10"),
            end: ip("10.0.1.20"),
        }];
        assert_eq!(validate_pools(&c, &outside, gw).unwrap_err().status(), 400);
        let broadcast = [IpRange {
            start: ip("10.0.0.250"),
            end: ip("10.0.0.255"),
        }];
        assert!(validate_pools(&c, &broadcast, gw).is_err());
        let overlapping = [
            ok[0],
            IpRange {
                start: ip("10.0.0.15"),
                end: ip("10.0.0.30"),
            },
        ];
        assert_eq!(
            validate_pools(&c, &overlapping, gw)
                .unwrap_err()
                .type_name(),
            "OverlappingAllocationPools"
        );
        let with_gw = [IpRange {
            start: ip("10.0.0.1"),
            end: ip("10.0.0.5"),
        }];
        assert_eq!(
            validate_pools(&c, &with_gw, gw).unwrap_err().type_name(),
            "GatewayConflictWithAllocationPools"
        );
    }

    #[test]
    fn eui64_address() {
        let p = Cidr::parse("2001:db8::/64").unwrap();
        assert_eq!(
            eui64(&p, [0xfa, 0x16, 0x3e, 0x12, 0x34, 0x56]),
            ip("2001:db8::f816:3eff:fe12:3456")
        );
    }
}
