//! MAC addresses: Neutron's `fa:16:3e` prefix, parsing and validation.

use crate::error::{Error, Result};

/// The OpenStack base MAC prefix.
pub const BASE_MAC: [u8; 3] = [0xfa, 0x16, 0x3e];

/// A MAC with the base prefix and the three given random bytes.
pub fn generate(random: [u8; 3]) -> [u8; 6] {
    [
        BASE_MAC[0],
        BASE_MAC[1],
        BASE_MAC[2],
        random[0],
        random[1],
        random[2],
    ]
}

/// `aa:bb:cc:dd:ee:ff`, lower case.
pub fn format(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff` (or with dashes); refuses multicast and all-zero addresses as
/// Neutron does for port MACs.
pub fn parse_unicast(attr: &str, s: &str) -> Result<[u8; 6]> {
    let invalid = || Error::invalid_attr(attr, format!("'{s}' is not a valid MAC address"));
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return Err(invalid());
    }
    let mut mac = [0u8; 6];
    for (slot, part) in mac.iter_mut().zip(&parts) {
        if part.len() != 2 {
            return Err(invalid());
        }
        *slot = u8::from_str_radix(part, 16).map_err(|_| invalid())?;
    }
    if mac[0] & 1 == 1 || mac == [0; 6] {
        return Err(invalid());
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let mac = generate([1, 2, 0xab]);
        assert_eq!(format(mac), "fa:16:3e:01:02:ab");
        assert_eq!(parse_unicast("m", "FA:16:3E:01:02:AB").unwrap(), mac);
        assert!(parse_unicast("m", "01:00:5e:00:00:01").is_err());
        assert!(parse_unicast("m", "00:00:00:00:00:00").is_err());
        assert!(parse_unicast("m", "fa:16:3e:01:02").is_err());
        assert!(parse_unicast("m", "zz:16:3e:01:02:03").is_err());
    }
}
