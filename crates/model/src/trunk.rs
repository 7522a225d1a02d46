//! Trunks (`trunk`, `trunk-details`): a parent port whose device carries, VLAN-tagged, the
//! traffic of subports on other networks (pods inside a VM, each on a network of its own).
//! The trunk record is the source; the parent port and each subport carry their part of it
//! ([`TrunkRole`]) so that rendering `trunk_details`, refusing to delete a port in a trunk
//! and telling the parent's node what to wire need no second read.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::input::{is_uuid, show, Input};
use crate::meta::Meta;
use crate::port::Port;
use crate::resource::{attr, defaulted, Definition, Rights};

/// `device_owner` of a port while it is a subport (neutron-lib's `TRUNK_SUBPORT_OWNER`).
pub const SUBPORT_OWNER: &str = "trunk:subport";

/// The `trunks` resource.
pub static DEFINITION: Definition<Trunk> = Definition {
    collection: "trunks",
    singular: "trunk",
    plural: "trunks",
    fault: "Trunk",
    named: true,
    tagged: true,
    description: Some(Rights::ALL),
    updatable: true,
    api: crate::resource::Api::Neutron,
    attributes: &[
        defaulted("admin_state_up", Rights::ALL, "true", |t, _| {
            Some(json!(t.admin_state_up))
        }),
        attr("port_id", Rights::CREATE_QUERY, |t, _| {
            Some(json!(t.port_id))
        }),
        attr("status", Rights::READ, |t, _| {
            Some(json!(t.status.as_str()))
        }),
        attr("sub_ports", Rights::CREATE, |t, _| Some(json!(t.sub_ports))),
    ],
};

/// A stored trunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trunk {
    /// Standard attributes.
    pub meta: Meta,
    /// Administrative state: a disabled trunk's subports cannot change.
    pub admin_state_up: bool,
    /// The parent port.
    pub port_id: String,
    /// Its subports, in the order they were added.
    pub sub_ports: Vec<SubPort>,
    /// Derived from its ports whenever it is read ([`Status::of`]); never stored.
    #[serde(skip)]
    pub status: Status,
}

crate::resource!(Trunk, DEFINITION);

/// One subport as the trunk lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubPort {
    /// The subport's own port.
    pub port_id: String,
    /// Always `vlan` once stored (`inherit` resolves to its network's type or is refused).
    pub segmentation_type: String,
    /// The VLAN id its frames carry on the parent's device.
    pub segmentation_id: u16,
}

/// A trunk's status, as Neutron's drivers report it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Status {
    /// The parent is not bound to a node (nothing carries the trunk).
    #[default]
    Down,
    /// Bound, and its node is still wiring the parent or a subport.
    Build,
    /// The node has wired the parent and every subport.
    Active,
    /// The node failed to wire some subport.
    Degraded,
    /// The node failed to wire the parent.
    Error,
}

impl Status {
    /// Neutron's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Down => "DOWN",
            Status::Build => "BUILD",
            Status::Active => "ACTIVE",
            Status::Degraded => "DEGRADED",
            Status::Error => "ERROR",
        }
    }

    /// The status of a trunk whose parent port has `parent` status when it is bound to a node
    /// (`None`: unbound) and whose subports' ports have `subports` statuses: what the
    /// parent's node reported of them.
    pub fn of(parent: Option<&str>, subports: &[&str]) -> Status {
        let Some(parent) = parent else {
            return Status::Down;
        };
        if parent == "ERROR" {
            Status::Error
        } else if subports.contains(&"ERROR") {
            Status::Degraded
        } else if parent == "ACTIVE" && subports.iter().all(|s| *s == "ACTIVE") {
            Status::Active
        } else {
            Status::Build
        }
    }
}

/// A port's part in a trunk, kept on the port in the same transaction as the trunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum TrunkRole {
    /// The trunk's parent, with its subports as `trunk_details` shows them.
    Parent {
        /// The trunk.
        trunk_id: String,
        /// Its subports with their MAC addresses.
        sub_ports: Vec<SubPortDetail>,
    },
    /// A subport: its frames reach the parent's device tagged with `segmentation_id`.
    Sub {
        /// The trunk.
        trunk_id: String,
        /// The trunk's parent port.
        parent_port_id: String,
        /// Its VLAN id on the parent's device.
        segmentation_id: u16,
    },
}

impl TrunkRole {
    /// Why `port_id` cannot be deleted while it has this role (Neutron's
    /// `PortInUseAsTrunkParent` / `PortInUseAsSubPort`).
    pub fn in_use(&self, port_id: &str) -> Error {
        match self {
            TrunkRole::Parent { trunk_id, .. } => Error::fault(
                "PortInUseAsTrunkParent",
                409,
                format!("Port {port_id} is currently a parent port for trunk {trunk_id}."),
            ),
            TrunkRole::Sub { trunk_id, .. } => Error::fault(
                "PortInUseAsSubPort",
                409,
                format!("Port {port_id} is currently a subport for trunk {trunk_id}."),
            ),
        }
    }

    /// Why `port_id` cannot join another trunk (Neutron's `TrunkPortInUse` for a subport,
    /// `ParentPortInUse` for a parent).
    pub fn taken(&self, port_id: &str) -> Error {
        match self {
            TrunkRole::Parent { .. } => parent_in_use(port_id),
            TrunkRole::Sub { .. } => Error::fault(
                "TrunkPortInUse",
                409,
                format!("Port {port_id} is in use by another trunk."),
            ),
        }
    }
}

/// One subport in the parent port's `trunk_details`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubPortDetail {
    /// VLAN id.
    pub segmentation_id: u16,
    /// `vlan`.
    pub segmentation_type: String,
    /// The subport.
    pub port_id: String,
    /// The subport's MAC address (what a guest gives the VLAN interface).
    pub mac_address: String,
}

/// `trunk_details` of a parent port; `None` for every other port.
pub fn details(port: &Port) -> Option<Value> {
    match &port.trunk {
        Some(TrunkRole::Parent {
            trunk_id,
            sub_ports,
        }) => Some(json!({"trunk_id": trunk_id, "sub_ports": sub_ports})),
        _ => None,
    }
}

/// Neutron's `ParentPortInUse`.
pub fn parent_in_use(port_id: &str) -> Error {
    Error::fault(
        "ParentPortInUse",
        409,
        format!("Port {port_id} is currently in use and is not eligible for use as a parent port."),
    )
}

/// How a requested subport is segmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segmentation {
    /// A VLAN id, range-checked later (Neutron checks it after the MTU).
    Vlan(i64),
    /// Another type by name (refused as unknown once the MTU is checked).
    Other(i64),
    /// `inherit`: the subport network's own segmentation.
    Inherit,
    /// Missing or partial segmentation details (refused in Neutron's order).
    Missing,
}

/// A subport as a create or `add_subports` body asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubPortRequest {
    /// The port.
    pub port_id: String,
    /// Its segmentation.
    pub segmentation: Segmentation,
    /// The type as given, for messages.
    pub segmentation_type: Option<String>,
}

/// Neutron's `validate_subports`: a list of objects with unique, valid `port_id`s and no
/// segmentation id given twice for one type. Failures are its messages.
pub fn parse_sub_ports(value: &Value) -> std::result::Result<Vec<SubPortRequest>, String> {
    let Value::Array(items) = value else {
        return Err(format!(
            "Invalid data format for subports: '{}' is not a list",
            show(value)
        ));
    };
    let mut out: Vec<SubPortRequest> = Vec::with_capacity(items.len());
    let mut used: Vec<(String, i64)> = Vec::new();
    for item in items {
        let Value::Object(fields) = item else {
            return Err(format!(
                "Invalid data format for subport: '{}' is not a dict",
                show(item)
            ));
        };
        let port_id = match fields.get("port_id") {
            None => return Err("A valid port UUID must be specified".to_owned()),
            Some(Value::String(s)) if is_uuid(s) => s.clone(),
            Some(other) => return Err(format!("Invalid UUID for subport: '{}'", show(other))),
        };
        if out.iter().any(|s| s.port_id == port_id) {
            return Err(format!("Non unique UUID for subport: '{port_id}'"));
        }
        let kind = fields.get("segmentation_type");
        let kind = match kind {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => Some(show(other)),
        };
        let id = fields.get("segmentation_id").filter(|v| !v.is_null());
        let segmentation = match (kind.as_deref(), id) {
            (Some("inherit"), _) => Segmentation::Inherit,
            (Some(_), None) | (None, Some(_)) if fields.len() > 1 => {
                return Err(format!(
                    "Invalid subport details '{}': missing segmentation information. Must \
                     specify both segmentation_id and segmentation_type",
                    Value::Object(fields.clone())
                ))
            }
            (Some(kind), Some(id)) => {
                let number = match id {
                    Value::Number(n) => n.as_i64(),
                    Value::String(s) => s.trim().parse().ok(),
                    _ => None,
                }
                .ok_or_else(|| {
                    format!(
                        "Invalid subport details: segmentation_id '{}' is not an integer",
                        show(id)
                    )
                })?;
                if used.contains(&(kind.to_owned(), number)) {
                    return Err(format!(
                        "Segmentation ID '{number}' for '{port_id}' is not unique"
                    ));
                }
                used.push((kind.to_owned(), number));
                if kind == "vlan" {
                    Segmentation::Vlan(number)
                } else {
                    Segmentation::Other(number)
                }
            }
            _ => Segmentation::Missing,
        };
        out.push(SubPortRequest {
            port_id,
            segmentation,
            segmentation_type: kind,
        });
    }
    Ok(out)
}

/// The subports of an `add_subports` body (`{"sub_ports": [...]}`).
pub fn parse_additions(body: &Value) -> Result<Vec<SubPortRequest>> {
    let list = body
        .get("sub_ports")
        .ok_or_else(|| Error::InvalidInput("A list of subports is required".to_owned()))?;
    parse_sub_ports(list).map_err(Error::InvalidInput)
}

/// The port ids of a `remove_subports` body (`{"sub_ports": [{"port_id": ...}]}`).
pub fn parse_removals(body: &Value) -> Result<Vec<String>> {
    Ok(parse_additions(body)?
        .into_iter()
        .map(|r| r.port_id)
        .collect())
}

/// Checks one requested subport the way Neutron's `SubPortsValidator` does, in its order:
/// not the parent, an MTU no larger than the parent's, complete and known segmentation
/// details. `network` is the subport network's (type, MTU); `parent_mtu` the parent's.
/// Returns the VLAN id.
pub fn check_sub_port(
    request: &SubPortRequest,
    parent_port_id: &str,
    network_type: &str,
    network_mtu: u32,
    parent_mtu: u32,
) -> Result<u16> {
    if request.port_id == parent_port_id {
        return Err(parent_in_use(&request.port_id));
    }
    if network_mtu > parent_mtu {
        return Err(Error::fault(
            "SubPortMtuGreaterThanTrunkPortMtu",
            409,
            format!(
                "MTU {network_mtu} of subport {} cannot be greater than MTU {parent_mtu} of \
                 trunk {parent_port_id}.",
                request.port_id
            ),
        ));
    }
    match request.segmentation {
        Segmentation::Vlan(id) if (1..=4094).contains(&id) => Ok(id as u16),
        Segmentation::Vlan(id) => Err(Error::InvalidInput(format!(
            "Segmentation ID '{id}' is not in range"
        ))),
        Segmentation::Other(_) => Err(Error::InvalidInput(format!(
            "Unknown segmentation_type '{}'",
            request.segmentation_type.as_deref().unwrap_or_default()
        ))),
        // The network's own segmentation is VXLAN or flat here, never a VLAN.
        Segmentation::Inherit => Err(Error::InvalidInput(format!(
            "Unknown segmentation_type '{network_type}'"
        ))),
        Segmentation::Missing => Err(Error::InvalidInput(format!(
            "Invalid subport details '{}': missing segmentation information. Must specify \
             both segmentation_id and segmentation_type",
            json!({"port_id": request.port_id})
        ))),
    }
}

/// Neutron's `DuplicateSubPort`: a VLAN id already used on the trunk.
pub fn duplicate(trunk_id: &str, segmentation_id: u16) -> Error {
    Error::fault(
        "DuplicateSubPort",
        409,
        format!(
            "segmentation_type vlan and segmentation_id {segmentation_id} already in use on \
             trunk {trunk_id}."
        ),
    )
}

/// Neutron's `TrunkDisabled`: a disabled trunk's subports cannot change.
pub fn check_enabled(trunk: &Trunk) -> Result<()> {
    if trunk.admin_state_up {
        Ok(())
    } else {
        Err(Error::fault(
            "TrunkDisabled",
            409,
            format!("Trunk {} is currently disabled.", trunk.meta.id),
        ))
    }
}

/// What a create body asks for beyond the standard attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrunkRequest {
    /// `admin_state_up` (default true).
    pub admin_state_up: bool,
    /// The parent port.
    pub port_id: String,
    /// The subports.
    pub sub_ports: Vec<SubPortRequest>,
}

impl TrunkRequest {
    /// Reads the rest of a create body.
    pub fn from_input(input: &mut Input) -> Result<TrunkRequest> {
        let admin_state_up = input.boolean("admin_state_up")?.unwrap_or(true);
        let port_id = Input::required("port_id", input.take("port_id"))?;
        let port_id = crate::input::as_uuid("port_id", &port_id)?;
        let sub_ports = match input.take("sub_ports") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => {
                parse_sub_ports(&v).map_err(|reason| Error::invalid_attr("sub_ports", reason))?
            }
        };
        Ok(TrunkRequest {
            admin_state_up,
            port_id,
            sub_ports,
        })
    }
}

impl Trunk {
    /// The response of `get_subports`.
    pub fn sub_ports_body(&self) -> Value {
        json!({ "sub_ports": self.sub_ports })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "11111111-2222-3333-4444-555555555555";
    const B: &str = "11111111-2222-3333-4444-666666666666";

    #[test]
    fn subports_are_validated_with_neutrons_messages() {
        let ok = parse_sub_ports(&json!([
            {"port_id": A, "segmentation_type": "vlan", "segmentation_id": 101},
            {"port_id": B, "segmentation_type": "vlan", "segmentation_id": "102"},
        ]))
        .unwrap();
        assert_eq!(ok[1].segmentation, Segmentation::Vlan(102));
        assert_eq!(
            parse_sub_ports(&json!("x")).unwrap_err(),
            "Invalid data format for subports: 'x' is not a list"
        );
        assert_eq!(
            parse_sub_ports(&json!([{"segmentation_id": 1}])).unwrap_err(),
            "A valid port UUID must be specified"
        );
        assert_eq!(
            parse_sub_ports(&json!([{"port_id": "nope"}])).unwrap_err(),
            "Invalid UUID for subport: 'nope'"
        );
        assert_eq!(
            parse_sub_ports(&json!([{"port_id": A}, {"port_id": A}])).unwrap_err(),
            format!("Non unique UUID for subport: '{A}'")
        );
        assert!(
            parse_sub_ports(&json!([{"port_id": A, "segmentation_id": 3}]))
                .unwrap_err()
                .contains("missing segmentation information")
        );
        assert_eq!(
            parse_sub_ports(&json!([
                {"port_id": A, "segmentation_type": "vlan", "segmentation_id": 7},
                {"port_id": B, "segmentation_type": "vlan", "segmentation_id": 7},
            ]))
            .unwrap_err(),
            format!("Segmentation ID '7' for '{B}' is not unique")
        );
        assert!(parse_sub_ports(
            &json!([{"port_id": A, "segmentation_type": "vlan", "segmentation_id": "x"}])
        )
        .unwrap_err()
        .contains("is not an integer"));
    }

    #[test]
    fn subport_checks_follow_neutrons_order() {
        let request = |segmentation| SubPortRequest {
            port_id: A.to_owned(),
            segmentation,
            segmentation_type: Some("vlan".to_owned()),
        };
        assert_eq!(
            check_sub_port(&request(Segmentation::Vlan(101)), B, "vxlan", 1450, 1450).unwrap(),
            101
        );
        assert_eq!(
            check_sub_port(&request(Segmentation::Vlan(101)), A, "vxlan", 1450, 1450)
                .unwrap_err()
                .type_name(),
            "ParentPortInUse"
        );
        // The MTU is checked before the segmentation.
        assert_eq!(
            check_sub_port(&request(Segmentation::Vlan(0)), B, "vxlan", 1500, 1450)
                .unwrap_err()
                .type_name(),
            "SubPortMtuGreaterThanTrunkPortMtu"
        );
        for bad in [0, 4095] {
            assert_eq!(
                check_sub_port(&request(Segmentation::Vlan(bad)), B, "vxlan", 1450, 1450)
                    .unwrap_err()
                    .to_string(),
                format!("Invalid input for operation: Segmentation ID '{bad}' is not in range.")
            );
        }
        assert!(
            check_sub_port(&request(Segmentation::Inherit), B, "vxlan", 1450, 1450)
                .unwrap_err()
                .to_string()
                .contains("Unknown segmentation_type 'vxlan'")
        );
        assert!(
            check_sub_port(&request(Segmentation::Missing), B, "vxlan", 1450, 1450)
                .unwrap_err()
                .to_string()
                .contains("missing segmentation information")
        );
    }

    #[test]
    fn status_follows_the_ports() {
        assert_eq!(Status::of(None, &["ACTIVE"]), Status::Down);
        assert_eq!(Status::of(Some("DOWN"), &["ACTIVE"]), Status::Build);
        assert_eq!(
            Status::of(Some("ACTIVE"), &["ACTIVE", "DOWN"]),
            Status::Build
        );
        assert_eq!(
            Status::of(Some("ACTIVE"), &["ACTIVE", "ACTIVE"]),
            Status::Active
        );
        assert_eq!(Status::of(Some("ACTIVE"), &[]), Status::Active);
        assert_eq!(
            Status::of(Some("ACTIVE"), &["ACTIVE", "ERROR"]),
            Status::Degraded
        );
        assert_eq!(Status::of(Some("ERROR"), &["ACTIVE"]), Status::Error);
    }
}
