//! A switch port: its name, its bounded transmit queue and its counters.
//!
//! A port does not know how its frames travel (socket, tap, ring); the transport that owns
//! it drains [`Port::queued`] and reports back with [`Port::pop_sent`] or
//! [`Port::pop_dropped`]. The queue bound is what keeps one slow peer from stalling the
//! others: when it is full, that port alone loses the frame. All queues together are
//! bounded too, in the switch's [`MemoryBudget`], so that many slow peers cannot hold
//! memory without end; a port with an empty queue still takes one frame.

use std::cell::Cell;
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::fd::BorrowedFd;
use std::rc::Rc;

use vnet_wire::frame::{LendRefusal, LentTail};
use vnet_wire::Frame;

use crate::security::{PortGuard, PortSecurity};
use crate::PortVlans;

/// Everything a spec sets for its ports: the VLANs they carry and what they let in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortPolicy {
    /// `,vlan=` or `,trunk=`.
    pub vlans: PortVlans,
    /// `,lock=` and `,storm=`.
    pub security: PortSecurity,
}

/// Identifies a port for the lifetime of a switch. Numbers are never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortId(pub u32);

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a frame was not delivered. Every drop is counted under exactly one reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortDropReason {
    /// Received: shorter than an Ethernet header.
    Runt,
    /// Received: longer than the largest frame vnet carries.
    Oversize,
    /// Received: a multicast source address, which no real station uses.
    MulticastSource,
    /// To be sent: the port's queue was full because its peer is not reading.
    QueueFull,
    /// To be sent: the transport could not hand the frame over (peer gone, buffer full).
    SendFailed,
    /// Received: offload metadata (a virtio-net header) asking for what vnet cannot do,
    /// or pointing outside the frame.
    BadOffload,
    /// Received: an 802.1Q tag for a VLAN the port does not carry, or a malformed tag.
    VlanNotAllowed,
    /// Received: a VLAN tag (802.1Q or 802.1ad) behind the one the port takes off, or
    /// any 802.1ad tag: stacked VLANs, which could carry a frame into another VLAN.
    StackedVlanTag,
    /// Received: a source address pinned to another port (the gateway's), which no
    /// peer of this port may send from.
    PinnedSource,
    /// Received: a new source address on a port locked to its first one (`,lock=on`).
    Locked,
    /// Received: a new source address on a port that uses as many as it may.
    StationLimit,
    /// Received: a flooded frame (broadcast, multicast, unknown unicast) over the port's
    /// rate (`,storm=PPS`).
    Storm,
    /// Received: a frame another port's guard refused, such as ARP claiming the
    /// gateway's address.
    Guarded,
    /// To be sent: all ports' queues together held as much as the switch allows.
    MemoryBudget,
    /// Received: a virtio descriptor chain the guest's driver gave that vnet cannot read
    /// (a buffer outside guest memory, the wrong direction, no header, too long).
    BadDescriptor,
    /// To be sent: too long for the underlay of a tunnel port once encapsulated.
    UnderlayMtu,
}

impl PortDropReason {
    /// Every reason, in counter order.
    pub const ALL: [PortDropReason; 16] = [
        PortDropReason::Runt,
        PortDropReason::Oversize,
        PortDropReason::MulticastSource,
        PortDropReason::QueueFull,
        PortDropReason::SendFailed,
        PortDropReason::BadOffload,
        PortDropReason::VlanNotAllowed,
        PortDropReason::StackedVlanTag,
        PortDropReason::PinnedSource,
        PortDropReason::Locked,
        PortDropReason::StationLimit,
        PortDropReason::Storm,
        PortDropReason::Guarded,
        PortDropReason::MemoryBudget,
        PortDropReason::BadDescriptor,
        PortDropReason::UnderlayMtu,
    ];

    /// True for drops of frames the port received, false for frames it was to send.
    pub fn is_receive(self) -> bool {
        matches!(
            self,
            PortDropReason::Runt
                | PortDropReason::Oversize
                | PortDropReason::MulticastSource
                | PortDropReason::BadOffload
                | PortDropReason::VlanNotAllowed
                | PortDropReason::StackedVlanTag
                | PortDropReason::PinnedSource
                | PortDropReason::Locked
                | PortDropReason::StationLimit
                | PortDropReason::Storm
                | PortDropReason::Guarded
                | PortDropReason::BadDescriptor
        )
    }

    /// A short name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            PortDropReason::Runt => "runt",
            PortDropReason::Oversize => "oversize",
            PortDropReason::MulticastSource => "multicast_source",
            PortDropReason::QueueFull => "queue_full",
            PortDropReason::SendFailed => "send_failed",
            PortDropReason::BadOffload => "bad_offload",
            PortDropReason::VlanNotAllowed => "vlan_not_allowed",
            PortDropReason::StackedVlanTag => "stacked_vlan_tag",
            PortDropReason::PinnedSource => "pinned_source",
            PortDropReason::Locked => "locked",
            PortDropReason::StationLimit => "station_limit",
            PortDropReason::Storm => "storm",
            PortDropReason::Guarded => "guarded",
            PortDropReason::MemoryBudget => "memory_budget",
            PortDropReason::BadDescriptor => "bad_descriptor",
            PortDropReason::UnderlayMtu => "underlay_mtu",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Names one remote peer behind a port that reaches several (the VTEPs behind a VXLAN
/// port), in the order the port's transport added them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RemoteId(pub u16);

/// A remote peer behind a port, with what went to and came from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// Its address, as the transport writes it.
    pub name: String,
    /// Frames and bytes it sent and was sent.
    pub counters: RemoteCounters,
}

/// Frame and byte counts of one remote peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemoteCounters {
    /// Frames received from it.
    pub rx_frames: u64,
    /// Bytes received from it.
    pub rx_bytes: u64,
    /// Frames sent to it.
    pub tx_frames: u64,
    /// Bytes sent to it.
    pub tx_bytes: u64,
}

/// Frame, byte and drop counts of one port. "rx" is what the port's peer sent into the
/// switch; "tx" is what the switch delivered to the peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortCounters {
    /// Frames received from the peer, valid or not.
    pub rx_frames: u64,
    /// Bytes received from the peer.
    pub rx_bytes: u64,
    /// Received frames that were dropped.
    pub rx_dropped: u64,
    /// Frames handed to the peer.
    pub tx_frames: u64,
    /// Bytes handed to the peer.
    pub tx_bytes: u64,
    /// Frames meant for the peer that were dropped.
    pub tx_dropped: u64,
    drops_by_reason: [u64; PortDropReason::ALL.len()],
}

impl PortCounters {
    /// How many frames were dropped for `reason`.
    pub fn drops(&self, reason: PortDropReason) -> u64 {
        self.drops_by_reason[reason.index()]
    }

    fn record_drop(&mut self, reason: PortDropReason) {
        self.drops_by_reason[reason.index()] += 1;
        if reason.is_receive() {
            self.rx_dropped += 1;
        } else {
            self.tx_dropped += 1;
        }
    }
}

impl fmt::Display for PortCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rx_frames={} rx_bytes={} rx_dropped={} tx_frames={} tx_bytes={} tx_dropped={}",
            self.rx_frames, self.rx_bytes, self.rx_dropped, self.tx_frames, self.tx_bytes, self.tx_dropped
        )?;
        for reason in PortDropReason::ALL {
            let count = self.drops(reason);
            if count > 0 {
                write!(f, " drop.{}={count}", reason.name())?;
            }
        }
        Ok(())
    }
}

/// How much a port may hold for a peer that is not reading. Whichever limit is hit first
/// applies; a frame larger than the byte limit still fits into an empty queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Most frames queued at once.
    pub frames: usize,
    /// Most bytes queued at once.
    pub bytes: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self { frames: 1024, bytes: 4 << 20 }
    }
}

/// How much more a port's queue takes now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueRoom {
    /// Frames.
    pub frames: usize,
    /// Bytes.
    pub bytes: usize,
}

/// The bytes one switch's queues hold together with what its transports hold for
/// unfinished frames, and how many they may: one bound on the memory that peers can
/// make vnet hold. Cloned handles share it.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    held: Rc<Cell<usize>>,
    limit: usize,
}

impl MemoryBudget {
    pub(crate) fn new(limit: usize) -> Self {
        Self { held: Rc::default(), limit }
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held.get()
    }

    /// Whether `len` more bytes fit.
    pub fn admits(&self, len: usize) -> bool {
        self.held.get() + len <= self.limit
    }

    /// Counts `len` bytes as held.
    pub fn add(&self, len: usize) {
        self.held.set(self.held.get() + len);
    }

    /// Counts `len` held bytes as given back.
    pub fn remove(&self, len: usize) {
        self.held.set(self.held.get() - len);
    }
}

/// One port of the switch.
#[derive(Debug)]
pub struct Port {
    name: String,
    queue: VecDeque<Frame>,
    queued_bytes: usize,
    /// What all the switch's queues and unfinished frames hold together.
    memory: MemoryBudget,
    limits: QueueLimits,
    counters: PortCounters,
    /// Whether the peer takes frames with offloads left to do (a tap with a virtio-net
    /// header, the gateway); other peers get them done in software first.
    takes_offloads: bool,
    vlans: PortVlans,
    pub(crate) guard: PortGuard,
    /// Whatever drains the port, as a number its owner chose (the runtime's endpoint).
    owner: usize,
    /// The peers behind the port, for a transport that reaches several through it.
    remotes: Vec<Remote>,
    pub(crate) pending: bool,
    /// The peer's own receive buffers, if it lends them.
    lender: Option<Rc<dyn ReceiveLender>>,
    /// Queued frames that do not bring receive buffers of their own (a lent tail).
    queued_without_buffers: usize,
}

/// A port's peer that lends its own receive buffers for frames toward it, so that a
/// sender puts a frame's payload straight where the peer reads it (a vhost-user guest's
/// receive ring): a frame whose lent tail came from here is handed over without a copy.
pub trait ReceiveLender: fmt::Debug {
    /// A tail of `payload_len` bytes in the peer's receive buffers, behind room for
    /// `headers_len` bytes of headers, or why there is none.
    fn lend(&self, headers_len: usize, payload_len: usize) -> Result<Rc<LentTail>, LendRefusal>;
    /// Copies the stream socket `source`'s bytes from its peek offset on into `tail`
    /// (one this lender lent) without consuming them, and returns how many.
    fn peek_into(&self, tail: &LentTail, source: BorrowedFd<'_>) -> io::Result<usize>;
}

impl Port {
    pub(crate) fn new(
        name: String,
        limits: QueueLimits,
        memory: MemoryBudget,
        takes_offloads: bool,
        policy: PortPolicy,
    ) -> Self {
        Self {
            name,
            queue: VecDeque::new(),
            queued_bytes: 0,
            memory,
            limits,
            counters: PortCounters::default(),
            takes_offloads,
            vlans: policy.vlans,
            guard: PortGuard::new(policy.security),
            owner: 0,
            remotes: Vec::new(),
            pending: false,
            lender: None,
            queued_without_buffers: 0,
        }
    }

    /// Adds a remote peer behind the port, named `name`; None once the port has as many
    /// as a [`RemoteId`] numbers.
    pub fn add_remote(&mut self, name: String) -> Option<RemoteId> {
        let id = RemoteId(u16::try_from(self.remotes.len()).ok()?);
        self.remotes.push(Remote { name, counters: RemoteCounters::default() });
        Some(id)
    }

    /// The remote peers behind the port, in the order they were added.
    pub fn remotes(&self) -> &[Remote] {
        &self.remotes
    }

    /// Counts a frame of `len` bytes from remote `id`.
    pub fn record_remote_received(&mut self, id: RemoteId, len: usize) {
        if let Some(remote) = self.remotes.get_mut(usize::from(id.0)) {
            remote.counters.rx_frames += 1;
            remote.counters.rx_bytes += len as u64;
        }
    }

    /// Counts a frame of `len` bytes sent to remote `id`.
    pub fn record_remote_sent(&mut self, id: RemoteId, len: usize) {
        if let Some(remote) = self.remotes.get_mut(usize::from(id.0)) {
            remote.counters.tx_frames += 1;
            remote.counters.tx_bytes += len as u64;
        }
    }

    /// The number of whatever drains the port, as set with [`Port::set_owner`].
    pub fn owner(&self) -> usize {
        self.owner
    }

    /// Records who drains the port; the switch only keeps the number.
    pub fn set_owner(&mut self, owner: usize) {
        self.owner = owner;
    }

    /// Whether the peer takes frames with offloads left to do.
    pub fn takes_offloads(&self) -> bool {
        self.takes_offloads
    }

    /// Lets senders put frames' payloads into the peer's own receive buffers.
    pub fn set_lender(&mut self, lender: Rc<dyn ReceiveLender>) {
        self.lender = Some(lender);
    }

    /// The peer's receive buffers, if it lends them.
    pub fn lender(&self) -> Option<&Rc<dyn ReceiveLender>> {
        self.lender.as_ref()
    }

    /// The VLANs the port carries.
    pub fn vlans(&self) -> &PortVlans {
        &self.vlans
    }

    /// What the port lets in besides its VLANs.
    pub fn security(&self) -> PortSecurity {
        self.guard.security()
    }

    /// What the port is connected to, for logs (for example `stream:unix:/run/vm.sock pid=42`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The port's counters so far.
    pub fn counters(&self) -> &PortCounters {
        &self.counters
    }

    /// Frames waiting for the peer, oldest first.
    pub fn queued(&self) -> impl ExactSizeIterator<Item = &Frame> {
        self.queue.iter()
    }

    /// How much more the queue takes before it drops.
    pub fn room(&self) -> QueueRoom {
        QueueRoom {
            frames: self.limits.frames.saturating_sub(self.queue.len()),
            bytes: self.limits.bytes.saturating_sub(self.queued_bytes),
        }
    }

    /// True when nothing waits for the peer.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty()
    }

    /// Whether every queued frame brings its own receive buffers (a tail lent by a
    /// [`ReceiveLender`]), so none of them waits for the peer to post more.
    pub fn queues_only_lent_frames(&self) -> bool {
        self.queued_without_buffers == 0
    }

    /// Removes the oldest queued frame after the transport delivered it.
    pub fn pop_sent(&mut self) -> Option<Frame> {
        let frame = self.pop()?;
        self.counters.tx_frames += 1;
        self.counters.tx_bytes += frame.len() as u64;
        Some(frame)
    }

    /// Removes the oldest queued frame because the transport could not deliver it, for
    /// `reason`.
    pub fn pop_dropped(&mut self, reason: PortDropReason) -> Option<Frame> {
        let frame = self.pop()?;
        self.counters.record_drop(reason);
        Some(frame)
    }

    pub(crate) fn record_received(&mut self, len: usize) {
        self.counters.rx_frames += 1;
        self.counters.rx_bytes += len as u64;
    }

    pub(crate) fn record_drop(&mut self, reason: PortDropReason) {
        self.counters.record_drop(reason);
    }

    /// Queues `frame` unless the queue is full, or all queues together hold what they
    /// may and this one is not empty. Returns whether it was queued.
    pub(crate) fn enqueue(&mut self, frame: Frame) -> bool {
        let over_frames = self.queue.len() >= self.limits.frames;
        let over_bytes = !self.queue.is_empty() && self.queued_bytes + frame.len() > self.limits.bytes;
        if over_frames || over_bytes {
            self.counters.record_drop(PortDropReason::QueueFull);
            return false;
        }
        if !self.queue.is_empty() && !self.memory.admits(frame.len()) {
            self.counters.record_drop(PortDropReason::MemoryBudget);
            return false;
        }
        self.queued_bytes += frame.len();
        self.memory.add(frame.len());
        self.queued_without_buffers += usize::from(!brings_buffers(&frame));
        self.queue.push_back(frame);
        true
    }

    fn pop(&mut self) -> Option<Frame> {
        let frame = self.queue.pop_front()?;
        self.queued_bytes -= frame.len();
        self.memory.remove(frame.len());
        self.queued_without_buffers -= usize::from(!brings_buffers(&frame));
        Some(frame)
    }
}

/// Whether `frame`'s tail lies in receive buffers a [`ReceiveLender`] lent for it.
fn brings_buffers(frame: &Frame) -> bool {
    frame.tail().is_some_and(|tail| tail.ticket() != 0)
}

impl Drop for Port {
    fn drop(&mut self) {
        self.memory.remove(self.queued_bytes);
    }
}
