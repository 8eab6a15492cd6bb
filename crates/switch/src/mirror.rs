//! Port mirroring: copies of frames for whoever watches the switch, such as a packet
//! capture. The switch hands each mirror the frames it asked for; what the sink does with
//! them (a pcap file, a socket) is its own business, and the switch knows nothing of it.

use std::fmt;

use vnet_wire::Frame;

use crate::PortId;

/// Where a mirror's copies go.
pub trait MirrorSink: Send {
    /// Takes a copy of a frame that port `port` sent into the switch (`received`) or was
    /// given by it. Returns false once the sink wants no more, which ends the mirror.
    fn copy(&mut self, port: PortId, received: bool, frame: &Frame) -> bool;
}

/// Identifies one mirror of a switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MirrorId(pub u64);

struct Mirror {
    id: MirrorId,
    /// Only frames to and from this port; every received frame if None.
    port: Option<PortId>,
    sink: Box<dyn MirrorSink>,
}

/// The mirrors of one switch.
#[derive(Default)]
pub(crate) struct Mirrors {
    mirrors: Vec<Mirror>,
    next_id: u64,
}

impl fmt::Debug for Mirrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mirrors").field("count", &self.mirrors.len()).finish()
    }
}

impl Mirrors {
    pub(crate) fn add(&mut self, port: Option<PortId>, sink: Box<dyn MirrorSink>) -> MirrorId {
        let id = MirrorId(self.next_id);
        self.next_id += 1;
        self.mirrors.push(Mirror { id, port, sink });
        id
    }

    pub(crate) fn remove(&mut self, id: MirrorId) -> bool {
        let before = self.mirrors.len();
        self.mirrors.retain(|mirror| mirror.id != id);
        self.mirrors.len() != before
    }

    /// A frame `from` sent into the switch: every mirror of all ports or of `from` gets it.
    pub(crate) fn copy_received(&mut self, from: PortId, frame: &Frame) {
        if !self.mirrors.is_empty() {
            self.mirrors.retain_mut(|mirror| {
                mirror.port.is_some_and(|port| port != from) || mirror.sink.copy(from, true, frame)
            });
        }
    }

    /// A frame the switch gives `to`: only mirrors of `to` get it, so a mirror of all
    /// ports sees each frame once.
    pub(crate) fn copy_delivered(&mut self, to: PortId, frame: &Frame) {
        if !self.mirrors.is_empty() {
            self.mirrors.retain_mut(|mirror| mirror.port != Some(to) || mirror.sink.copy(to, false, frame));
        }
    }
}
