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

struct Mirror {
    /// Only frames to and from this port; every received frame if None.
    port: Option<PortId>,
    sink: Box<dyn MirrorSink>,
}

/// The mirrors of one switch.
#[derive(Default)]
pub(crate) struct Mirrors {
    mirrors: Vec<Mirror>,
}

impl fmt::Debug for Mirrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mirrors").field("count", &self.mirrors.len()).finish()
    }
}

impl Mirrors {
    pub(crate) fn add(&mut self, port: Option<PortId>, sink: Box<dyn MirrorSink>) {
        self.mirrors.push(Mirror { port, sink });
    }

    /// Ends the mirrors of `port`, which is going away.
    pub(crate) fn forget_port(&mut self, port: PortId) {
        self.mirrors.retain(|mirror| mirror.port != Some(port));
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
