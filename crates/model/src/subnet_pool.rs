//! Subnet pools (`subnet_allocation`, `default-subnetpools`, `subnetpool-prefix-ops`): prefixes
//! subnets are carved from, with bounds on their size, an optional per-project quota of
//! addresses, a default pool per family and membership in an address scope.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::addr::{compact, cover, merged, Cidr, IpVersion};
use crate::error::{Error, Result};
use crate::input::{as_cidr, as_uuid, show, Input, Method};
use crate::meta::{Caller, Meta};
use crate::resource::{attr, defaulted, Definition, Rights};

/// The `subnetpools` resource.
pub static DEFINITION: Definition<SubnetPool> = Definition {
    collection: "subnetpools",
    singular: "subnetpool",
    plural: "subnetpools",
    fault: "SubnetPool",
    named: true,
    tagged: true,
    description: Some(Rights::ALL),
    updatable: true,
    api: crate::resource::Api::Neutron,
    attributes: &[
        defaulted("prefixes", Rights::ALL, "false", |p, _| {
            Some(json!(p
                .prefixes
                .iter()
                .map(Cidr::to_string)
                .collect::<Vec<_>>()))
        }),
        attr("default_quota", Rights::ALL, |p, _| {
            Some(json!(p.default_quota))
        }),
        attr("ip_version", Rights::READ, |p, _| {
            Some(json!(p.ip_version.number()))
        }),
        attr("default_prefixlen", Rights::ALL, |p, _| {
            Some(json!(p.default_prefixlen))
        }),
        attr("min_prefixlen", Rights::ALL, |p, _| {
            Some(json!(p.min_prefixlen))
        }),
        attr("max_prefixlen", Rights::ALL, |p, _| {
            Some(json!(p.max_prefixlen))
        }),
        attr("is_default", Rights::ALL, |p, _| Some(json!(p.is_default))),
        defaulted("shared", Rights::CREATE_QUERY, "false", |p, _| {
            Some(json!(p.shared))
        }),
        attr("address_scope_id", Rights::ALL, |p, _| {
            Some(json!(p.address_scope_id))
        }),
    ],
};

/// A stored subnet pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetPool {
    /// Standard attributes.
    pub meta: Meta,
    /// Its prefixes, compacted (no two overlap or could merge).
    pub prefixes: Vec<Cidr>,
    /// The family of its prefixes.
    pub ip_version: IpVersion,
    /// Prefix length of a subnet that asks for none.
    pub default_prefixlen: u8,
    /// Largest subnet (shortest prefix) it hands out.
    pub min_prefixlen: u8,
    /// Smallest subnet (longest prefix) it hands out.
    pub max_prefixlen: u8,
    /// Addresses one project may hold from it, in units of /32 (IPv4) or /64 (IPv6).
    pub default_quota: Option<u64>,
    /// The family's default pool (`use_default_subnetpool`).
    pub is_default: bool,
    /// Visible to and usable by every project.
    pub shared: bool,
    /// The address scope it belongs to.
    pub address_scope_id: Option<String>,
}

crate::resource!(SubnetPool, DEFINITION, {
    /// Own, or shared with every project (policies for one project are the service's check).
    fn visible_to(&self, caller: &Caller) -> bool {
        caller.owns(&self.meta.project_id) || self.shared
    }
});

fn bounds_error(kind: &str, len: u8, base_kind: &str, base: u8) -> Error {
    Error::fault(
        "IllegalSubnetPoolPrefixBounds",
        400,
        format!("Illegal prefix bounds: {kind}={len}, {base_kind}={base}."),
    )
}

fn prefix_length(input: &mut Input, key: &str) -> Result<Option<u8>> {
    match input.nullable_integer(key)?.flatten() {
        None => Ok(None),
        Some(n) if (0..=128).contains(&n) => Ok(Some(n as u8)),
        Some(n) => Err(Error::invalid_attr(
            key,
            format!("'{n}' should be non-negative and at most 128"),
        )),
    }
}

fn quota(input: &mut Input) -> Result<Option<Option<u64>>> {
    match input.nullable_integer("default_quota")? {
        None => Ok(None),
        Some(None) => Ok(Some(None)),
        Some(Some(n)) if n >= 0 => Ok(Some(Some(n as u64))),
        Some(Some(n)) => Err(Error::invalid_attr(
            "default_quota",
            format!("'{n}' should be non-negative"),
        )),
    }
}

/// Parses a list of prefixes (`prefixes`, or the body of a prefix operation).
pub fn parse_prefixes(key: &str, value: Value) -> Result<Vec<Cidr>> {
    let Value::Array(items) = value else {
        return Err(Error::invalid_attr(
            key,
            format!("'{}' is not a list", show(&value)),
        ));
    };
    items.iter().map(|v| as_cidr(key, v)).collect()
}

/// The family of `prefixes`: 400 when empty or mixed, as Neutron.
fn family(prefixes: &[Cidr]) -> Result<IpVersion> {
    let Some(first) = prefixes.first() else {
        return Err(Error::fault(
            "EmptySubnetPoolPrefixList",
            400,
            "Empty subnet pool prefix list.",
        ));
    };
    if prefixes.iter().any(|p| p.version() != first.version()) {
        return Err(Error::fault(
            "PrefixVersionMismatch",
            400,
            "Cannot mix IPv4 and IPv6 prefixes in a subnet pool.",
        ));
    }
    Ok(first.version())
}

/// What remains of `ranges` once `taken` is removed.
fn subtract(ranges: Vec<(u128, u128)>, taken: &[(u128, u128)]) -> Vec<(u128, u128)> {
    let taken = merged(taken.to_vec());
    let mut out = Vec::new();
    for (first, last) in ranges {
        let mut at = Some(first);
        for &(t_first, t_last) in &taken {
            let Some(start) = at else { break };
            if t_last < start || t_first > last {
                continue;
            }
            if t_first > start {
                out.push((start, t_first - 1));
            }
            at = (t_last < last).then(|| t_last + 1);
        }
        if let Some(start) = at {
            out.push((start, last));
        }
    }
    out
}

impl SubnetPool {
    /// A new pool from a create body whose standard attributes are read into `meta`.
    pub fn from_input(meta: Meta, input: &mut Input) -> Result<SubnetPool> {
        let prefixes = parse_prefixes(
            "prefixes",
            Input::required("prefixes", input.take("prefixes"))?,
        )?;
        let ip_version = family(&prefixes)?;
        let shared = input.boolean("shared")?.unwrap_or(false);
        let is_default = input.boolean("is_default")?.unwrap_or(false);
        let min = prefix_length(input, "min_prefixlen")?;
        let max = prefix_length(input, "max_prefixlen")?;
        let default = prefix_length(input, "default_prefixlen")?;
        let address_scope_id = match input.take("address_scope_id") {
            None | Some(Value::Null) => None,
            Some(v) => Some(as_uuid("address_scope_id", &v)?),
        };
        let mut pool = SubnetPool {
            meta,
            prefixes: compact(ip_version, &prefixes),
            ip_version,
            min_prefixlen: min.unwrap_or(match ip_version {
                IpVersion::V4 => 8,
                IpVersion::V6 => 64,
            }),
            max_prefixlen: max.unwrap_or(ip_version.bits()),
            default_prefixlen: 0,
            default_quota: quota(input)?.flatten(),
            is_default,
            shared,
            address_scope_id,
        };
        pool.default_prefixlen = default.unwrap_or(pool.min_prefixlen);
        pool.check_bounds()?;
        Ok(pool)
    }

    fn check_bounds(&self) -> Result<()> {
        if self.min_prefixlen > self.max_prefixlen {
            return Err(bounds_error(
                "min_prefixlen",
                self.min_prefixlen,
                "max_prefixlen",
                self.max_prefixlen,
            ));
        }
        if self.max_prefixlen > self.ip_version.bits() {
            return Err(bounds_error(
                "max_prefixlen",
                self.max_prefixlen,
                "ip_version_max",
                self.ip_version.bits(),
            ));
        }
        if self.default_prefixlen < self.min_prefixlen {
            return Err(bounds_error(
                "default_prefixlen",
                self.default_prefixlen,
                "min_prefixlen",
                self.min_prefixlen,
            ));
        }
        if self.default_prefixlen > self.max_prefixlen {
            return Err(bounds_error(
                "default_prefixlen",
                self.default_prefixlen,
                "max_prefixlen",
                self.max_prefixlen,
            ));
        }
        Ok(())
    }

    /// Applies an update body; prefixes may only grow (`remove_prefixes` shrinks them).
    pub fn apply_update(&mut self, body: Value, now: &str) -> Result<()> {
        let mut input = Input::for_kind(body, &DEFINITION, Method::Update)?;
        self.meta.read_common(&mut input)?;
        if let Some(v) = input.take("prefixes") {
            let wanted = parse_prefixes("prefixes", v)?;
            if family(&wanted)? != self.ip_version {
                return Err(Error::fault(
                    "PrefixVersionMismatch",
                    400,
                    "Cannot mix IPv4 and IPv6 prefixes in a subnet pool.",
                ));
            }
            let grown = compact(self.ip_version, &wanted);
            let kept = compact(
                self.ip_version,
                &[self.prefixes.clone(), grown.clone()].concat(),
            );
            if kept != grown {
                return Err(Error::fault(
                    "IllegalSubnetPoolPrefixUpdate",
                    400,
                    "Illegal update to prefixes: Existing prefixes must be a subset of the new prefixes.",
                ));
            }
            self.prefixes = grown;
        }
        if let Some(v) = prefix_length(&mut input, "min_prefixlen")? {
            self.min_prefixlen = v;
        }
        if let Some(v) = prefix_length(&mut input, "max_prefixlen")? {
            self.max_prefixlen = v;
        }
        if let Some(v) = prefix_length(&mut input, "default_prefixlen")? {
            self.default_prefixlen = v;
        }
        if let Some(q) = quota(&mut input)? {
            self.default_quota = q;
        }
        if let Some(d) = input.boolean("is_default")? {
            self.is_default = d;
        }
        if let Some(v) = input.take("address_scope_id") {
            self.address_scope_id = match v {
                Value::Null => None,
                v => Some(as_uuid("address_scope_id", &v)?),
            };
        }
        self.check_bounds()?;
        self.meta.touch(now);
        Ok(())
    }

    /// Adds prefixes (`add_prefixes`).
    pub fn add_prefixes(&mut self, added: &[Cidr], now: &str) -> Result<()> {
        if family(added)? != self.ip_version {
            return Err(Error::fault(
                "PrefixVersionMismatch",
                400,
                "Cannot mix IPv4 and IPv6 prefixes in a subnet pool.",
            ));
        }
        self.prefixes = compact(
            self.ip_version,
            &[self.prefixes.clone(), added.to_vec()].concat(),
        );
        self.meta.touch(now);
        Ok(())
    }

    /// Removes prefixes (`remove_prefixes`); none of `allocated` may lie in what goes.
    pub fn remove_prefixes(
        &mut self,
        removed: &[Cidr],
        allocated: &[Cidr],
        now: &str,
    ) -> Result<()> {
        if let Some(used) = allocated
            .iter()
            .find(|a| removed.iter().any(|r| r.overlaps(a)))
        {
            return Err(Error::fault(
                "IllegalSubnetPoolPrefixUpdate",
                400,
                format!("Illegal update to prefixes: Subnet {used} is allocated from a prefix being removed."),
            ));
        }
        let left = subtract(
            self.prefixes
                .iter()
                .map(|p| (p.first(), p.last()))
                .collect(),
            &removed
                .iter()
                .map(|p| (p.first(), p.last()))
                .collect::<Vec<_>>(),
        );
        let remaining: Vec<Cidr> = left
            .into_iter()
            .flat_map(|(f, l)| cover(self.ip_version, f, l))
            .collect();
        if remaining.is_empty() {
            return Err(Error::fault(
                "EmptySubnetPoolPrefixList",
                400,
                "Empty subnet pool prefix list.",
            ));
        }
        self.prefixes = remaining;
        self.meta.touch(now);
        Ok(())
    }

    /// Quota units (/32 or /64 blocks) a prefix of length `prefix` takes.
    fn units(&self, prefix: u8) -> u128 {
        let unit = match self.ip_version {
            IpVersion::V4 => 32u32,
            IpVersion::V6 => 64,
        };
        1u128
            .checked_shl(unit.saturating_sub(u32::from(prefix)))
            .unwrap_or(u128::MAX)
    }

    /// A prefix for a new subnet: `requested` exactly, or the first free block of
    /// `prefixlen` (default: `default_prefixlen`), taking the smallest free block that fits.
    /// `allocated` are the pool's subnets, `project_usage` those of the requesting project.
    pub fn allocate(
        &self,
        requested: Option<Cidr>,
        prefixlen: Option<u8>,
        allocated: &[Cidr],
        project_usage: &[Cidr],
    ) -> Result<Cidr> {
        let prefixlen = requested
            .map(|c| c.prefix)
            .or(prefixlen)
            .unwrap_or(self.default_prefixlen);
        if prefixlen > self.max_prefixlen {
            return Err(Error::fault(
                "MaxPrefixSubnetAllocationError",
                400,
                format!(
                    "Unable to allocate subnet with prefix length {prefixlen}, maximum allowed prefix is {}.",
                    self.max_prefixlen
                ),
            ));
        }
        if prefixlen < self.min_prefixlen {
            return Err(Error::fault(
                "MinPrefixSubnetAllocationError",
                400,
                format!(
                    "Unable to allocate subnet with prefix length {prefixlen}, minimum allowed prefix is {}.",
                    self.min_prefixlen
                ),
            ));
        }
        if let Some(quota) = self.default_quota {
            let used: u128 = project_usage
                .iter()
                .map(|c| self.units(c.prefix))
                .fold(0, u128::saturating_add);
            if used.saturating_add(self.units(prefixlen)) > u128::from(quota) {
                return Err(Error::fault(
                    "SubnetPoolQuotaExceeded",
                    409,
                    "Per-tenant subnet pool prefix quota exceeded.",
                ));
            }
        }
        let free = subtract(
            self.prefixes
                .iter()
                .map(|p| (p.first(), p.last()))
                .collect(),
            &allocated
                .iter()
                .map(|c| (c.first(), c.last()))
                .collect::<Vec<_>>(),
        );
        if let Some(cidr) = requested {
            if cidr.version() == self.ip_version
                && free
                    .iter()
                    .any(|&(f, l)| f <= cidr.first() && cidr.last() <= l)
            {
                return Ok(cidr);
            }
            return Err(Error::fault(
                "SubnetAllocationError",
                409,
                "Failed to allocate subnet: Cannot allocate requested subnet from the available set of prefixes.",
            ));
        }
        let mut blocks: Vec<Cidr> = free
            .into_iter()
            .flat_map(|(f, l)| cover(self.ip_version, f, l))
            .filter(|b| b.prefix <= prefixlen)
            .collect();
        // Smallest blocks first, so large blocks stay whole for large requests.
        blocks.sort_by_key(|b| (std::cmp::Reverse(b.prefix), b.first()));
        blocks
            .first()
            .map(|b| Cidr {
                network: b.network,
                prefix: prefixlen,
            })
            .ok_or_else(|| {
                Error::fault(
                    "SubnetAllocationError",
                    409,
                    format!(
                        "Failed to allocate subnet: Insufficient prefix space to allocate subnet size /{prefixlen}."
                    ),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        Cidr::parse(s).unwrap()
    }

    fn pool(body: Value) -> Result<SubnetPool> {
        let mut input =
            Input::for_kind(json!({ "subnetpool": body }), &DEFINITION, Method::Create)?;
        SubnetPool::from_input(Meta::new("sp".into(), "p".into(), "t"), &mut input)
    }

    #[test]
    fn compacts_and_covers() {
        let v4 = IpVersion::V4;
        assert_eq!(
            compact(
                v4,
                &[
                    cidr("10.0.0.0/25"),
                    cidr("10.0.0.128/25"),
                    cidr("10.0.0.0/26")
                ]
            ),
            vec![cidr("10.0.0.0/24")]
        );
        assert_eq!(
            cover(
                v4,
                cidr("10.0.0.0/24").first(),
                cidr("10.0.1.127/32").first()
            ),
            vec![cidr("10.0.0.0/24"), cidr("10.0.1.0/25")]
        );
        assert_eq!(compact(v4, &[cidr("0.0.0.0/0")]), vec![cidr("0.0.0.0/0")]);
        assert_eq!(compact(IpVersion::V6, &[cidr("::/0")]), vec![cidr("::/0")]);
    }

    #[test]
    fn defaults_and_bounds() {
        let p = pool(json!({"name": "p", "prefixes": ["10.0.0.0/16", "10.1.0.0/16"]})).unwrap();
        assert_eq!(p.prefixes, vec![cidr("10.0.0.0/15")]);
        assert_eq!(
            (p.min_prefixlen, p.max_prefixlen, p.default_prefixlen),
            (8, 32, 8)
        );
        let v6 = pool(json!({"prefixes": ["2001:db8::/48"], "default_prefixlen": 64})).unwrap();
        assert_eq!((v6.min_prefixlen, v6.max_prefixlen), (64, 128));
        for (body, fault) in [
            (json!({"prefixes": []}), "EmptySubnetPoolPrefixList"),
            (
                json!({"prefixes": ["10.0.0.0/8", "2001:db8::/32"]}),
                "PrefixVersionMismatch",
            ),
            (
                json!({"prefixes": ["10.0.0.0/8"], "min_prefixlen": 24, "max_prefixlen": 16}),
                "IllegalSubnetPoolPrefixBounds",
            ),
            (
                json!({"prefixes": ["10.0.0.0/8"], "max_prefixlen": 33}),
                "IllegalSubnetPoolPrefixBounds",
            ),
            (
                json!({"prefixes": ["10.0.0.0/8"], "min_prefixlen": 16, "default_prefixlen": 12}),
                "IllegalSubnetPoolPrefixBounds",
            ),
        ] {
            assert_eq!(pool(body).unwrap_err().type_name(), fault);
        }
    }

    #[test]
    fn allocates_smallest_fitting_block_and_refuses_what_does_not_fit() {
        let p = pool(
            json!({"prefixes": ["10.0.0.0/24", "10.1.0.0/16"], "min_prefixlen": 16,
                            "default_prefixlen": 26}),
        )
        .unwrap();
        let a = p.allocate(None, None, &[], &[]).unwrap();
        assert_eq!(
            a,
            cidr("10.0.0.0/26"),
            "the /24 is the smallest block that fits"
        );
        let b = p.allocate(None, Some(26), &[a], &[]).unwrap();
        assert_eq!(b, cidr("10.0.0.64/26"));
        let c = p.allocate(None, Some(24), &[a, b], &[]).unwrap();
        assert_eq!(c, cidr("10.1.0.0/24"));
        assert_eq!(
            p.allocate(Some(cidr("10.0.0.0/27")), None, &[a], &[])
                .unwrap_err()
                .type_name(),
            "SubnetAllocationError"
        );
        assert_eq!(
            p.allocate(Some(cidr("10.1.5.0/24")), None, &[a, b, c], &[])
                .unwrap(),
            cidr("10.1.5.0/24")
        );
        assert_eq!(
            p.allocate(None, Some(8), &[], &[]).unwrap_err().type_name(),
            "MinPrefixSubnetAllocationError"
        );
        assert_eq!(
            p.allocate(None, Some(16), &[c], &[])
                .unwrap_err()
                .type_name(),
            "SubnetAllocationError"
        );
        let quota = pool(json!({"prefixes": ["10.0.0.0/16"], "min_prefixlen": 24,
                                "default_quota": 300}))
        .unwrap();
        let first = quota.allocate(None, None, &[], &[]).unwrap();
        assert_eq!(
            quota
                .allocate(None, None, &[first], &[first])
                .unwrap_err()
                .type_name(),
            "SubnetPoolQuotaExceeded"
        );
    }

    #[test]
    fn prefix_operations() {
        let mut p = pool(json!({"prefixes": ["10.0.0.0/24"]})).unwrap();
        p.add_prefixes(&[cidr("10.0.1.0/24")], "t").unwrap();
        assert_eq!(p.prefixes, vec![cidr("10.0.0.0/23")]);
        assert!(p
            .remove_prefixes(&[cidr("10.0.1.0/24")], &[cidr("10.0.1.0/28")], "t")
            .is_err());
        p.remove_prefixes(&[cidr("10.0.1.0/24")], &[cidr("10.0.0.0/28")], "t")
            .unwrap();
        assert_eq!(p.prefixes, vec![cidr("10.0.0.0/24")]);
        let err = p
            .apply_update(json!({"subnetpool": {"prefixes": ["10.0.1.0/24"]}}), "t")
            .unwrap_err();
        assert_eq!(err.type_name(), "IllegalSubnetPoolPrefixUpdate");
        p.apply_update(json!({"subnetpool": {"prefixes": ["10.0.0.0/16"]}}), "t")
            .unwrap();
        assert_eq!(p.prefixes, vec![cidr("10.0.0.0/16")]);
    }
}
