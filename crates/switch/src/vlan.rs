//! Which VLANs a port carries (802.1Q): an access port carries one VLAN untagged, a
//! trunk port carries the default VLAN untagged and its listed VLANs tagged. Inside the
//! switch every frame is untagged and travels with the VLAN it belongs to; this module
//! decides that VLAN on the way in and the tag on the way out. It knows tags, not
//! addresses or queues.

use std::collections::BTreeSet;

use vnet_wire::vlan::{self, Tag, VlanId};
use vnet_wire::Frame;

use crate::PortDropReason;

/// The VLAN a frame belongs to inside the switch: None is the default VLAN, which
/// untagged frames of ordinary ports are on.
pub type Vlan = Option<VlanId>;

/// The VLANs of one port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortVlans {
    /// The VLAN of the frames the port's peer sends and gets untagged.
    pub untagged: Vlan,
    /// The VLANs the port's peer sends and gets tagged.
    pub tagged: BTreeSet<VlanId>,
}

impl PortVlans {
    /// An ordinary port: the default VLAN, untagged.
    pub const DEFAULT: PortVlans = PortVlans { untagged: None, tagged: BTreeSet::new() };

    /// An access port of `vlan`: untagged inside the peer, VLAN `vlan` in the switch.
    pub fn access(vlan: VlanId) -> Self {
        Self { untagged: Some(vlan), tagged: BTreeSet::new() }
    }

    /// A trunk port carrying `vlans` tagged (and the default VLAN untagged).
    pub fn trunk(vlans: impl IntoIterator<Item = VlanId>) -> Self {
        Self { untagged: None, tagged: vlans.into_iter().collect() }
    }

    /// Whether the port carries `vlan`.
    pub fn carries(&self, vlan: Vlan) -> bool {
        self.untagged == vlan || vlan.is_some_and(|id| self.tagged.contains(&id))
    }

    /// The VLAN of a frame the peer sent, and the frame as the switch carries it
    /// (untagged), or why it is refused: a tag for a VLAN the port does not carry, a
    /// malformed one, or a second tag behind the first (stacked VLANs, which vnet does
    /// not carry and which would let a frame hop into the VLAN of its inner tag).
    pub(crate) fn ingress(&self, frame: Frame) -> Result<(Frame, Vlan), PortDropReason> {
        let (frame, vlan) = match vlan::tag_of(&frame) {
            Tag::Untagged => (frame, self.untagged),
            Tag::Priority => (vlan::untag(&frame), self.untagged),
            Tag::Vlan(id) if self.tagged.contains(&id) || self.untagged == Some(id) => {
                (vlan::untag(&frame), Some(id))
            }
            Tag::Vlan(_) | Tag::Invalid => return Err(PortDropReason::VlanNotAllowed),
        };
        if vlan::is_tagged(&frame) {
            return Err(PortDropReason::StackedVlanTag);
        }
        Ok((frame, vlan))
    }

    /// The tag a frame of `vlan` gets toward the peer, None to send it untagged. The
    /// port must carry `vlan`.
    pub(crate) fn egress_tag(&self, vlan: Vlan) -> Option<VlanId> {
        if self.untagged == vlan {
            None
        } else {
            vlan
        }
    }
}
