//! The Isthmus resource model: Neutron v2.0 wire types, their validation, IPAM and list
//! queries. Pure: no I/O, no clock, no randomness (ids, times and random bytes come in as
//! arguments).

pub mod addr;
pub mod address_group;
pub mod address_scope;
pub mod dns_record;
pub mod error;
pub mod floating_ip;
pub mod input;
pub mod ipam;
pub mod keystone;
pub mod kubernetes;
pub mod lbaas;
pub mod mac;
pub mod meta;
pub mod namespace_binding;
pub mod network;
pub mod node;
pub mod policy;
pub mod port;
pub mod query;
pub mod quota;
pub mod rbac;
pub mod resource;
pub mod roles;
pub mod router;
pub mod security_group;
pub mod subnet;
pub mod subnet_pool;
pub mod time;
pub mod trunk;
pub mod view;
pub mod wire;

pub use address_group::AddressGroup;
pub use address_scope::AddressScope;
pub use error::{Error, Result};
pub use floating_ip::FloatingIp;
pub use meta::{Caller, Meta};
pub use network::{Network, NetworkLimits, NetworkType};
pub use port::{Port, PortRequest};
pub use rbac::RbacPolicy;
pub use router::Router;
pub use security_group::{SecurityGroup, SecurityGroupRule};
pub use subnet::Subnet;
pub use subnet_pool::SubnetPool;
pub use trunk::Trunk;
