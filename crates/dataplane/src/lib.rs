//! The data plane logic of an Isthmus node, pure: the node's view of the desired state (as
//! the controller's watch streams it), the kernel state it implies, and the plan that turns
//! what the kernel has into that. Agents read the kernel and apply plans; nothing here does
//! I/O.

pub mod dhcp;
pub mod dhcp6;
pub mod dns;
pub mod filter;
pub mod l2;
pub mod lb;
pub mod metadata;
pub mod nft;
pub mod node;
pub mod plan;
pub mod pod;
pub mod pool;
pub mod ra;
pub mod router;
pub mod trunk;
pub mod view;
