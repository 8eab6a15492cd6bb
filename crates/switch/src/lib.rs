//! vnet's Ethernet switch: ports, MAC learning with aging (per VLAN), flooding, 802.1Q
//! VLANs (access and trunk ports), and per-port bounded queues.
//!
//! The switch is sans-IO. A transport hands it a received frame with [`Switch::receive`];
//! the switch decides which ports get a copy and queues it there. The event loop then asks
//! [`Switch::take_pending`] which ports have something new and lets their transports drain
//! them. The switch knows frames and MAC addresses, never protocols, sockets or time
//! sources: the caller passes `now`. A frame may carry offloads still to do (a 64 KiB TCP
//! segment from a tap); a port whose peer cannot take that gets it done in software by
//! [`vnet_wire::offload::resolve`] on the way into its queue.

mod mac_table;
mod mirror;
mod port;
mod security;
mod vlan;

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};
use vnet_wire::vlan::VlanId;
use vnet_wire::{offload, Frame, FrameError, MacAddress};

pub use mac_table::{Learned, MacTable, Station, DEFAULT_AGING, DEFAULT_CAPACITY};
pub use mirror::MirrorSink;
pub use port::{
    MemoryBudget, Port, PortCounters, PortDropReason, PortId, PortPolicy, QueueLimits, QueueRoom,
    ReceiveLender, Remote, RemoteCounters, RemoteId,
};
pub use security::{IngressGuard, PortSecurity, DEFAULT_PORT_STATIONS, DEFAULT_STORM_PPS};
pub use vlan::{PortVlans, Vlan};

/// Bytes all ports' queues and transports' unfinished frames may hold together unless
/// configured: 64 ports' worth of full default queues.
pub const DEFAULT_MEMORY_LIMIT: usize = 256 << 20;

/// How the switch forwards frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardingMode {
    /// Learn source addresses and send known unicast to one port only.
    Learning,
    /// Send every frame to every other port, like QEMU's hub.
    Hub,
}

/// What the port a unicast frame goes to takes now ([`Switch::room_toward`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EgressPort {
    /// How much more its queue takes.
    pub room: QueueRoom,
    /// Whether its peer takes frames with offloads left to do.
    pub takes_offloads: bool,
    /// Whether its peer lends its receive buffers for such frames, untagged, and
    /// nothing waits in its queue to go before them.
    pub lends_receive: bool,
}

/// Settings of one switch.
#[derive(Debug, Clone, Copy)]
pub struct SwitchConfig {
    /// Learning switch or hub.
    pub mode: ForwardingMode,
    /// How long a learned station stays without being seen again.
    pub aging: Duration,
    /// Most stations the MAC table holds.
    pub mac_capacity: usize,
    /// How much each port may queue for a slow peer.
    pub queue_limits: QueueLimits,
    /// Most bytes all ports' queues and transports' unfinished frames hold together.
    pub memory_limit: usize,
    /// Most source addresses one port may use at once.
    pub port_stations: usize,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        Self {
            mode: ForwardingMode::Learning,
            aging: DEFAULT_AGING,
            mac_capacity: DEFAULT_CAPACITY,
            queue_limits: QueueLimits::default(),
            memory_limit: DEFAULT_MEMORY_LIMIT,
            port_stations: DEFAULT_PORT_STATIONS,
        }
    }
}

/// The switch: a set of ports and the table of where stations are.
#[derive(Debug)]
pub struct Switch {
    config: SwitchConfig,
    ports: BTreeMap<PortId, Port>,
    table: MacTable,
    next_port: u32,
    pending: Vec<PortId>,
    /// Where [`Switch::flood`] lists its targets, kept so that its room is reused.
    flood_targets: Vec<PortId>,
    /// Set once a full MAC table has been reported, so a flood of new addresses logs
    /// one warning rather than one per frame.
    reported_table_full: bool,
    mirrors: mirror::Mirrors,
    /// Stations that only their own port may send as (the gateway), with that port.
    pinned: Vec<(MacAddress, PortId)>,
    /// Checks frames from other ports must pass, each with the port that set it up.
    guards: Vec<(PortId, Box<dyn IngressGuard>)>,
    /// What all queues and unfinished frames hold together, shared with every port.
    memory: MemoryBudget,
}

impl Switch {
    /// A switch with no ports.
    pub fn new(config: SwitchConfig) -> Self {
        Self {
            config,
            ports: BTreeMap::new(),
            table: MacTable::new(config.aging, config.mac_capacity),
            next_port: 1,
            pending: Vec::new(),
            flood_targets: Vec::new(),
            reported_table_full: false,
            mirrors: mirror::Mirrors::default(),
            pinned: Vec::new(),
            guards: Vec::new(),
            memory: MemoryBudget::new(config.memory_limit),
        }
    }

    /// Adds a port named after what it connects to and returns its id. Its peer gets
    /// every frame ready for the wire.
    pub fn add_port(&mut self, name: impl Into<String>) -> PortId {
        self.add_port_taking_offloads(name, false)
    }

    /// Adds a port whose peer, if `takes_offloads`, gets frames with their offloads
    /// (partial checksums, TCP super-segments) left to it.
    pub fn add_port_taking_offloads(&mut self, name: impl Into<String>, takes_offloads: bool) -> PortId {
        self.add_port_on_vlans(name, takes_offloads, PortVlans::default())
    }

    /// Adds a port that carries `vlans` (see [`PortVlans`]), with the default port
    /// security; ordinary ports carry the default VLAN untagged.
    pub fn add_port_on_vlans(
        &mut self,
        name: impl Into<String>,
        takes_offloads: bool,
        vlans: PortVlans,
    ) -> PortId {
        self.add_port_with_policy(name, takes_offloads, PortPolicy { vlans, ..PortPolicy::default() })
    }

    /// Adds a port that follows `policy`: its VLANs and what it lets in.
    pub fn add_port_with_policy(
        &mut self,
        name: impl Into<String>,
        takes_offloads: bool,
        policy: PortPolicy,
    ) -> PortId {
        let id = PortId(self.next_port);
        self.next_port += 1;
        let memory = self.memory.clone();
        self.ports
            .insert(id, Port::new(name.into(), self.config.queue_limits, memory, takes_offloads, policy));
        id
    }

    /// Pins station `mac` to `port`: frames from any other port with `mac` as their
    /// source are dropped and counted, so no peer can take over that station's traffic
    /// (a guest claiming the gateway's MAC). The pin goes with the port.
    pub fn pin_station(&mut self, mac: MacAddress, port: PortId) {
        self.pinned.retain(|(pinned, _)| *pinned != mac);
        self.pinned.push((mac, port));
    }

    /// Makes every frame from a port other than `owner` pass `guard` (see
    /// [`IngressGuard`]). The guard goes with its port.
    pub fn add_guard(&mut self, owner: PortId, guard: Box<dyn IngressGuard>) {
        self.guards.push((owner, guard));
    }

    /// Removes a port, forgets its stations and discards what was queued for it. Returns
    /// the port so the caller can report its final counters.
    pub fn remove_port(&mut self, id: PortId) -> Option<Port> {
        self.pinned.retain(|(_, port)| *port != id);
        self.guards.retain(|(owner, _)| *owner != id);
        self.table.forget_port(id);
        self.mirrors.forget_port(id);
        self.pending.retain(|pending| *pending != id);
        self.ports.remove(&id)
    }

    /// A port by id.
    pub fn port(&self, id: PortId) -> Option<&Port> {
        self.ports.get(&id)
    }

    /// A port by id, for the transport that drains it.
    pub fn port_mut(&mut self, id: PortId) -> Option<&mut Port> {
        self.ports.get_mut(&id)
    }

    /// Every port, in the order they were added.
    pub fn ports(&self) -> impl Iterator<Item = (PortId, &Port)> {
        self.ports.iter().map(|(id, port)| (*id, port))
    }

    /// Bytes all ports' queues and transports' unfinished frames hold now.
    pub fn held_bytes(&self) -> usize {
        self.memory.held()
    }

    /// The memory budget, for a transport to charge what it holds for unfinished
    /// frames to.
    pub fn memory_budget(&self) -> MemoryBudget {
        self.memory.clone()
    }

    /// The MAC table, for inspection.
    pub fn mac_table(&self) -> &MacTable {
        &self.table
    }

    /// Switches one frame received on port `from`: a [`Frame`], or the
    /// [`FrameError`] of bytes too short or too long to be one, which is counted as a
    /// drop on `from`. A full destination queue is counted on the destination.
    pub fn receive(&mut self, from: PortId, frame: Result<Frame, FrameError>, now: Instant) {
        self.receive_from_remote(from, None, frame, now);
    }

    /// Switches one frame received on port `from` from its remote peer `remote` (see
    /// [`Port::add_remote`]), which the MAC table then records for the frame's source.
    pub fn receive_from_remote(
        &mut self,
        from: PortId,
        remote: Option<RemoteId>,
        frame: Result<Frame, FrameError>,
        now: Instant,
    ) {
        let Some(port) = self.ports.get_mut(&from) else {
            return;
        };
        let frame = match frame {
            Ok(frame) => {
                port.record_received(frame.len());
                frame
            }
            Err(error) => {
                port.record_received(error.len());
                let reason = match error {
                    FrameError::Runt(_) => PortDropReason::Runt,
                    FrameError::Oversize(_) => PortDropReason::Oversize,
                };
                return port.record_drop(reason);
            }
        };
        if frame.source().is_multicast() {
            return port.record_drop(PortDropReason::MulticastSource);
        }
        let source = frame.source();
        if self.pinned.iter().any(|(pinned, owner)| *pinned == source && *owner != from) {
            return port.record_drop(PortDropReason::PinnedSource);
        }
        if let Err(reason) =
            port.guard.admit_source(source, now, self.config.port_stations, self.config.aging)
        {
            return port.record_drop(reason);
        }
        let (frame, vlan) = match port.vlans().ingress(frame) {
            Ok(classified) => classified,
            Err(reason) => return port.record_drop(reason),
        };
        if self.guards.iter().any(|(owner, guard)| *owner != from && !guard.admits(&frame)) {
            return port.record_drop(PortDropReason::Guarded);
        }
        let destination = match self.config.mode {
            ForwardingMode::Hub => None,
            ForwardingMode::Learning => {
                self.learn(vlan, frame.source(), from, remote, now);
                self.unicast_destination(vlan, frame.destination(), now)
            }
        };
        let limited = destination.is_none()
            && (self.config.mode == ForwardingMode::Learning || frame.destination().is_multicast());
        if let Some(port) = self.ports.get_mut(&from).filter(|_| limited) {
            if !port.guard.admit_flood(now) {
                return port.record_drop(PortDropReason::Storm);
            }
        }
        self.mirrors.copy_received(from, &frame);
        match destination {
            Some(to) if to == from => {}
            Some(to) => self.deliver(from, to, frame, vlan),
            None => self.flood(from, frame, vlan),
        }
    }

    /// How much more the queue of the port that `destination` was learned on (in the
    /// VLAN of `from`'s untagged frames) takes now, and what its peer takes; None if
    /// frames to it would be flooded.
    pub fn room_toward(&self, from: PortId, destination: MacAddress, now: Instant) -> Option<EgressPort> {
        let vlan = self.ports.get(&from)?.vlans().untagged;
        let port = self.ports.get(&self.unicast_destination(vlan, destination, now)?)?;
        Some(EgressPort {
            room: port.room(),
            takes_offloads: port.takes_offloads(),
            // A frame in lent buffers may not queue behind one that waits for buffers.
            lends_receive: port.lender().is_some()
                && port.vlans().egress_tag(vlan).is_none()
                && port.queues_only_lent_frames(),
        })
    }

    /// The receive buffers of the peer a frame from port `from` to `destination` goes
    /// to, if that peer lends them and gets the frame as it is (untagged).
    pub fn lender_toward(
        &self,
        from: PortId,
        destination: MacAddress,
        now: Instant,
    ) -> Option<Rc<dyn ReceiveLender>> {
        let vlan = self.ports.get(&from)?.vlans().untagged;
        let port = self.ports.get(&self.unicast_destination(vlan, destination, now)?)?;
        (port.vlans().egress_tag(vlan).is_none()).then(|| port.lender().cloned()).flatten()
    }

    /// The remote peer behind port `port` that `frame`'s destination was learned behind
    /// (in the VLAN of the frame's tag, or of the port's untagged frames); None if it
    /// was not, and the frame goes to every remote.
    pub fn remote_toward(&self, port: PortId, frame: &Frame, now: Instant) -> Option<RemoteId> {
        let vlans = self.ports.get(&port)?.vlans();
        let vlan = match vnet_wire::vlan::tag_of(frame) {
            vnet_wire::vlan::Tag::Vlan(id) => Some(id),
            _ => vlans.untagged,
        };
        self.table.remote_of(vlan, frame.destination(), now)
    }

    /// Counts a frame port `port` received and its transport dropped before the switch
    /// saw it.
    pub fn record_drop(&mut self, port: PortId, reason: PortDropReason) {
        if let Some(port) = self.ports.get_mut(&port) {
            port.record_drop(reason);
        }
    }

    /// Puts into `into` (emptied first) the ports that were given frames since the last
    /// call, each once. Passing the same vector each time reuses its room.
    pub fn take_pending(&mut self, into: &mut Vec<PortId>) {
        into.clear();
        std::mem::swap(&mut self.pending, into);
        for id in into.iter() {
            if let Some(port) = self.ports.get_mut(id) {
                port.pending = false;
            }
        }
    }

    /// Copies frames to `sink` from now on: every frame a port sends into the switch, or
    /// with `port`, only those `port` sends and those it is given, as the switch carries
    /// them (untagged). The sink is dropped when it says it has had enough, or when its
    /// port goes away.
    pub fn add_mirror(&mut self, port: Option<PortId>, sink: Box<dyn MirrorSink>) {
        self.mirrors.add(port, sink);
    }

    /// Drops aged MAC table entries; call it now and then to bound memory.
    pub fn expire(&mut self, now: Instant) {
        let expired = self.table.expire(now);
        if expired > 0 {
            debug!(expired, "aged out MAC table entries");
        }
    }

    fn learn(
        &mut self,
        vlan: Vlan,
        source: MacAddress,
        port: PortId,
        remote: Option<RemoteId>,
        now: Instant,
    ) {
        match self.table.learn_behind(vlan, source, port, remote, now) {
            Learned::Moved { from } => debug!(%source, %from, to = %port, "station moved"),
            Learned::TableFull if !self.reported_table_full => {
                self.reported_table_full = true;
                warn!(%source, %port, "MAC table full; new stations' traffic is flooded until entries age out");
            }
            Learned::TableFull | Learned::Refreshed => {}
            Learned::New => self.reported_table_full = false,
        }
    }

    fn unicast_destination(&self, vlan: Vlan, destination: MacAddress, now: Instant) -> Option<PortId> {
        if destination.is_multicast() {
            return None;
        }
        self.table.lookup(vlan, destination, now)
    }

    /// Sends `frame` to every other port on `vlan`.
    fn flood(&mut self, from: PortId, frame: Frame, vlan: Vlan) {
        let mut targets = std::mem::take(&mut self.flood_targets);
        targets.clear();
        targets.extend(
            self.ports
                .iter()
                .filter(|(id, port)| **id != from && port.vlans().carries(vlan))
                .map(|(id, _)| *id),
        );
        for &to in &targets {
            self.deliver(from, to, frame.clone(), vlan);
        }
        self.flood_targets = targets;
    }

    /// Queues `frame` of `vlan`, which entered by port `from`, for port `to`: tagged if
    /// the port carries that VLAN tagged, with its offloads done if the peer cannot do
    /// them, and marked with `from`. A port that does not carry `vlan` never gets the
    /// frame.
    fn deliver(&mut self, from: PortId, to: PortId, frame: Frame, vlan: Vlan) {
        let Some(port) = self.ports.get_mut(&to) else {
            return;
        };
        if !port.vlans().carries(vlan) {
            return;
        }
        self.mirrors.copy_delivered(to, &frame);
        let tag = port.vlans().egress_tag(vlan);
        let queued = if frame.offload().is_none() || port.takes_offloads() {
            Self::enqueue_tagged(port, frame, tag, from)
        } else {
            Self::enqueue_resolved(port, &frame, tag, from)
        };
        if queued && !port.pending {
            port.pending = true;
            self.pending.push(to);
        }
    }

    /// Queues `frame` with its offloads done in software, for a peer that cannot do
    /// them. The queue's room is checked before anything is cut, so a segment that would
    /// not fit whole is dropped as one, and an absurd segment size is refused.
    fn enqueue_resolved(port: &mut Port, frame: &Frame, tag: Option<VlanId>, from: PortId) -> bool {
        let Ok(count) = offload::wire_frames(frame.as_bytes(), frame.offload()) else {
            port.record_drop(PortDropReason::BadOffload);
            return false;
        };
        let room = port.room();
        if count > room.frames || (!port.is_idle() && frame.len() > room.bytes) {
            port.record_drop(PortDropReason::QueueFull);
            return false;
        }
        let mut queued = false;
        let resolved =
            offload::resolve(frame, |segment| queued |= Self::enqueue_tagged(port, segment, tag, from));
        if resolved.is_err() {
            port.record_drop(PortDropReason::BadOffload);
        }
        queued
    }

    /// Queues `frame`, marked as having entered by `from`, with a tag for `tag`'s VLAN
    /// (as it is for None); a frame too long to take a tag is dropped as oversize.
    fn enqueue_tagged(port: &mut Port, frame: Frame, tag: Option<VlanId>, from: PortId) -> bool {
        let frame = match tag {
            None => frame,
            Some(vlan) => match vnet_wire::vlan::tag(&frame, vlan) {
                Some(tagged) => tagged,
                None => {
                    port.record_drop(PortDropReason::Oversize);
                    return false;
                }
            },
        };
        port.enqueue(frame.with_ingress_port(from.0))
    }
}

#[cfg(test)]
mod tests;
