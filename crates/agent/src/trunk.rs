//! The kernel side of trunk subports: the veth pairs of the node's plan, and the tc BPF
//! programs (`bpf/trunk.c`, built by clang at compile time, loaded with aya) with the two maps
//! that join each subport veth to its parent's tap and VLAN.
//!
//! Filters are netlink (cls_bpf) filters at a fixed priority and handle, so they outlive the
//! agent: a restarted agent loads the programs with fresh maps, fills the maps from the view,
//! then swaps its program into each filter in place (a replace, not a delete and add), so a
//! subport's traffic never stops.

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{HashMap as BpfMap, MapData};
use aya::programs::tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle};
use aya::programs::{SchedClassifier, TcAttachType};
use aya::Ebpf;
use isthmus_dataplane::trunk::Plan;

use crate::netlink::Netlink;
use crate::AgentError;

/// The programs, as clang built them.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/trunk.o"));

/// The priority of Isthmus's filter on a device's ingress.
const PRIORITY: u16 = 0x4953;
/// Its handle.
const HANDLE: TcHandle = TcHandle::new(0, 1);
/// The program on a parent tap.
const PARENT_PROGRAM: &str = "trunk_parent";
/// The program on a subport veth's node end.
const SUBPORT_PROGRAM: &str = "trunk_subport";

fn bpf_error(what: &str, e: impl std::fmt::Display) -> AgentError {
    AgentError::Kernel(format!("{what}: {e}"))
}

/// The loaded programs and maps of this agent process.
struct Loaded {
    ebpf: Ebpf,
    /// [parent tap ifindex, VLAN] → subport veth ifindex.
    to_subport: BpfMap<MapData, [u32; 2], u32>,
    /// Subport veth ifindex → [parent tap ifindex, VLAN].
    to_parent: BpfMap<MapData, u32, [u32; 2]>,
    /// Devices this process attached a program to, with the ifindex it had.
    attached: BTreeMap<String, u32>,
}

impl Loaded {
    fn load() -> Result<Loaded, AgentError> {
        let mut ebpf = Ebpf::load(OBJECT).map_err(|e| bpf_error("loading trunk programs", e))?;
        for name in [PARENT_PROGRAM, SUBPORT_PROGRAM] {
            classifier(&mut ebpf, name)?
                .load()
                .map_err(|e| bpf_error(&format!("verifying {name}"), e))?;
        }
        let to_subport = map(&mut ebpf, "to_subport")?;
        let to_parent = map(&mut ebpf, "to_parent")?;
        Ok(Loaded {
            ebpf,
            to_subport,
            to_parent,
            attached: BTreeMap::new(),
        })
    }

    /// Puts `program` on `device`'s ingress, replacing whatever program an earlier agent left
    /// in Isthmus's filter there, or making the filter.
    fn attach(&mut self, program: &str, device: &str, ifindex: u32) -> Result<(), AgentError> {
        if self.attached.get(device) == Some(&ifindex) {
            return Ok(());
        }
        // Already there is fine: the qdisc is shared with whatever else the device runs.
        let _ = tc::qdisc_add_clsact(device);
        let classifier = classifier(&mut self.ebpf, program)?;
        let replaced =
            SchedClassifierLink::attached(device, TcAttachType::Ingress, PRIORITY, HANDLE, None)
                .map_err(|e| bpf_error(device, e))
                .and_then(|link| {
                    classifier
                        .attach_to_link(link)
                        .map_err(|e| bpf_error(device, e))
                });
        let link = match replaced {
            Ok(link) => link,
            Err(_) => classifier
                .attach_with_options(
                    device,
                    TcAttachType::Ingress,
                    TcAttachOptions::Netlink(NlOptions {
                        priority: PRIORITY,
                        handle: HANDLE,
                        classid: None,
                    }),
                )
                .map_err(|e| bpf_error(&format!("attaching {program} to {device}"), e))?,
        };
        // The filter must outlive this process (see the module's note): aya would take it
        // down when the link is dropped.
        let link = classifier
            .take_link(link)
            .map_err(|e| bpf_error(device, e))?;
        std::mem::forget(link);
        self.attached.insert(device.to_owned(), ifindex);
        Ok(())
    }

    /// Makes the maps hold exactly `wanted` (subport veth ifindex → [parent ifindex, VLAN]).
    fn fill(&mut self, wanted: &BTreeMap<u32, [u32; 2]>) -> Result<(), AgentError> {
        let forward: BTreeMap<[u32; 2], u32> = wanted.iter().map(|(v, p)| (*p, *v)).collect();
        for (veth, parent) in wanted {
            if self.to_parent.get(veth, 0).ok() != Some(*parent) {
                self.to_parent
                    .insert(veth, parent, 0)
                    .map_err(|e| bpf_error("filling to_parent", e))?;
            }
            if self.to_subport.get(parent, 0).ok() != Some(*veth) {
                self.to_subport
                    .insert(parent, veth, 0)
                    .map_err(|e| bpf_error("filling to_subport", e))?;
            }
        }
        let stale: Vec<u32> = self
            .to_parent
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains_key(k))
            .collect();
        for key in stale {
            let _ = self.to_parent.remove(&key);
        }
        let stale: Vec<[u32; 2]> = self
            .to_subport
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !forward.contains_key(k))
            .collect();
        for key in stale {
            let _ = self.to_subport.remove(&key);
        }
        Ok(())
    }
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier, AgentError> {
    ebpf.program_mut(name)
        .ok_or_else(|| AgentError::Kernel(format!("{name} is not in the trunk object")))?
        .try_into()
        .map_err(|e| bpf_error(name, e))
}

fn map<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &str,
) -> Result<BpfMap<MapData, K, V>, AgentError> {
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| AgentError::Kernel(format!("{name} is not in the trunk object")))?;
    BpfMap::try_from(map).map_err(|e| bpf_error(name, e))
}

/// The trunk side of one agent: loaded on first need.
#[derive(Default)]
pub struct Trunks {
    loaded: Option<Loaded>,
    /// Parent taps that carried subports in an earlier pass of this process.
    parents: BTreeSet<String>,
}

impl std::fmt::Debug for Trunks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trunks")
            .field("loaded", &self.loaded.is_some())
            .field("parents", &self.parents)
            .finish()
    }
}

impl Trunks {
    /// Applies a pass's plan: veths removed and made, then the maps, then the filters.
    pub async fn apply(&mut self, netlink: &Netlink, plan: &Plan) -> Result<(), AgentError> {
        for veth in &plan.remove {
            netlink.delete_link(veth).await?;
        }
        for s in &plan.add {
            // Half a pair (one end deleted by hand) is made again whole.
            netlink.delete_link(&s.veth).await?;
            netlink.delete_link(&s.tap).await?;
            netlink.add_pair(&s.veth, &s.tap, s.mtu).await?;
        }
        if plan.wired.is_empty() && self.loaded.is_none() {
            return Ok(());
        }
        let mut wanted = BTreeMap::new();
        let mut devices: Vec<(&'static str, String, u32)> = Vec::new();
        for s in &plan.wired {
            let (Some(veth), Some(parent)) = (
                netlink.find(&s.veth).await?,
                netlink.find(&s.parent_tap).await?,
            ) else {
                // Gone meanwhile: the link event brings another pass.
                continue;
            };
            wanted.insert(veth, [parent, u32::from(s.vlan)]);
            devices.push((SUBPORT_PROGRAM, s.veth.clone(), veth));
            devices.push((PARENT_PROGRAM, s.parent_tap.clone(), parent));
        }
        let loaded = match &mut self.loaded {
            Some(loaded) => loaded,
            None => self.loaded.insert(Loaded::load()?),
        };
        // Maps before filters: a program never runs on a device whose entries are not there.
        loaded.fill(&wanted)?;
        for (program, device, ifindex) in &devices {
            loaded.attach(program, device, *ifindex)?;
        }
        // A parent that carries no subport any more gets its own traffic only.
        let parents: BTreeSet<String> = plan.wired.iter().map(|s| s.parent_tap.clone()).collect();
        for gone in self.parents.difference(&parents) {
            if let Err(e) = tc::qdisc_detach_program(gone, TcAttachType::Ingress, PARENT_PROGRAM) {
                tracing::debug!("{gone}: {e}");
            }
        }
        loaded
            .attached
            .retain(|device, _| devices.iter().any(|(_, d, _)| d == device));
        self.parents = parents;
        Ok(())
    }
}
