//! The datapath of a vhost-user-net device: frames out of the guest's transmit ring and
//! into its receive ring, each behind the 12-byte `virtio_net_hdr` virtio 1.0 puts before
//! every frame.
//!
//! Every descriptor the guest's driver wrote is untrusted. `virtio-queue` walks the
//! chains (bounding their length by the ring size and refusing indexes past the table);
//! here every address and length is checked against guest memory before a byte moves,
//! a chain may not mix directions, and a frame may not outgrow its buffer or spread over
//! more than [`MAX_RECEIVE_BUFFERS`] chains. A bad chain costs only its own frame.
//!
//! This module knows rings, guest memory and byte counts; nothing of ports or sockets.

use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};

use virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};
use vnet_wire::frame::{LentSegment, LentTail};
use vnet_wire::{FrameBuffer, MAX_FRAME_LEN};

/// Length of the header before each frame: `virtio_net_hdr` with `num_buffers`, as
/// virtio 1.0 always has it.
pub const NET_HEADER_LEN: usize = 12;
/// The most receive chains one frame may take with mergeable buffers: a 64 KiB frame in
/// buffers of 1 KiB or more.
pub const MAX_RECEIVE_BUFFERS: usize = 64;

/// Bytes before the first entry of the used ring (flags and index), and per entry.
const USED_RING_HEADER: u64 = 4;
const USED_ENTRY: u64 = 8;
/// Bytes before the first entry of the available ring (flags and index).
const AVAIL_RING_HEADER: u64 = 4;

/// What is wrong with a descriptor chain the guest gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainFault {
    /// A buffer lies (partly) outside guest memory.
    OutsideMemory,
    /// A transmit chain holds a buffer the device may write, or a receive chain one it
    /// may only read.
    WrongDirection,
    /// A transmit chain shorter than the header.
    NoHeader,
    /// A transmitted frame longer than vnet carries.
    TooLong,
    /// A receive buffer too small for the frame, where buffers cannot be merged.
    BufferTooSmall,
    /// A frame would need more than [`MAX_RECEIVE_BUFFERS`] receive chains.
    TooManyBuffers,
    /// The ring's available index runs more than a ring ahead of the device.
    RingIndex,
    /// A sound transmit chain whose frame cannot be lent as it lies; it is copied.
    NotLendable,
}

/// Walks one transmit chain: copies its first [`NET_HEADER_LEN`] bytes into `header`
/// and hands each following piece of the frame (guest address, length; never empty) to
/// `frame_piece`, in order.
fn walk_transmitted<M: GuestMemory>(
    chain: impl Iterator<Item = Descriptor>,
    memory: &M,
    header: &mut [u8; NET_HEADER_LEN],
    mut frame_piece: impl FnMut(GuestAddress, usize) -> Result<(), ChainFault>,
) -> Result<(), ChainFault> {
    let mut header_len = 0;
    for descriptor in chain {
        if descriptor.is_write_only() {
            return Err(ChainFault::WrongDirection);
        }
        let mut address = descriptor.addr();
        let mut left = descriptor.len() as usize;
        if header_len < NET_HEADER_LEN {
            let n = left.min(NET_HEADER_LEN - header_len);
            memory
                .read_slice(&mut header[header_len..header_len + n], address)
                .map_err(|_| ChainFault::OutsideMemory)?;
            header_len += n;
            left -= n;
            address = address.checked_add(n as u64).ok_or(ChainFault::OutsideMemory)?;
        }
        if left > 0 {
            frame_piece(address, left)?;
        }
    }
    if header_len < NET_HEADER_LEN {
        return Err(ChainFault::NoHeader);
    }
    Ok(())
}

/// Copies the header and frame of one transmit chain into `header` and `frame`,
/// returning the frame's length.
pub fn read_transmitted<M: GuestMemory>(
    chain: impl Iterator<Item = Descriptor>,
    memory: &M,
    header: &mut [u8; NET_HEADER_LEN],
    frame: &mut [u8],
) -> Result<usize, ChainFault> {
    let mut frame_len = 0;
    walk_transmitted(chain, memory, header, |address, len| {
        let end = frame_len + len;
        let into = frame.get_mut(frame_len..end).ok_or(ChainFault::TooLong)?;
        memory.read_slice(into, address).map_err(|_| ChainFault::OutsideMemory)?;
        frame_len = end;
        Ok(())
    })?;
    Ok(frame_len)
}

/// Bytes of a transmitted frame copied into vnet's buffer before the rest is lent: room
/// for every header a reader looks at (Ethernet, a VLAN tag, IPv6 and the longest TCP
/// header take 138).
pub const LENT_HEAD_LEN: usize = 192;

/// Takes one transmit chain without copying its payload: the header into `header`, the
/// frame's first [`LENT_HEAD_LEN`] bytes (fewer if it is shorter) into `head`, and the
/// rest, where it lies in guest memory, into `tail`. Returns the frame's length.
/// [`ChainFault::NotLendable`] means the chain is sound so far but the rest spans more
/// pieces than a tail holds: copy it instead.
pub fn lend_transmitted<M: GuestMemory>(
    chain: impl Iterator<Item = Descriptor>,
    memory: &M,
    header: &mut [u8; NET_HEADER_LEN],
    head: &mut FrameBuffer,
    tail: &mut LentTail,
) -> Result<usize, ChainFault> {
    let mut frame_len = 0usize;
    walk_transmitted(chain, memory, header, |mut address, mut left| {
        frame_len =
            frame_len.checked_add(left).filter(|&len| len <= MAX_FRAME_LEN).ok_or(ChainFault::TooLong)?;
        if head.len() < LENT_HEAD_LEN {
            let n = left.min(LENT_HEAD_LEN - head.len());
            memory.read_slice(&mut head.spare_mut()[..n], address).map_err(|_| ChainFault::OutsideMemory)?;
            head.commit(n);
            left -= n;
            address = address.checked_add(n as u64).ok_or(ChainFault::OutsideMemory)?;
        }
        if left == 0 {
            return Ok(());
        }
        let slices =
            memory.get_slices(address, left, Permissions::Read).map_err(|_| ChainFault::OutsideMemory)?;
        for slice in slices {
            let slice = slice.map_err(|_| ChainFault::OutsideMemory)?;
            let segment = LentSegment {
                address: address.raw_value(),
                host: slice.ptr_guard().as_ptr(),
                len: slice.len(),
            };
            if !tail.push(segment) {
                return Err(ChainFault::NotLendable);
            }
            address = address.checked_add(slice.len() as u64).ok_or(ChainFault::OutsideMemory)?;
        }
        Ok(())
    })?;
    Ok(frame_len)
}

/// The bytes a receive chain can take.
pub fn receive_capacity(chain: impl Iterator<Item = Descriptor>) -> Result<usize, ChainFault> {
    let mut capacity = 0usize;
    for descriptor in chain {
        if !descriptor.is_write_only() {
            return Err(ChainFault::WrongDirection);
        }
        capacity = capacity.saturating_add(descriptor.len() as usize);
    }
    Ok(capacity)
}

/// A frame to put into a receive ring: its bytes in vnet's buffers, then, if it was
/// lent by another guest, the pieces of that guest's memory that hold the rest.
#[derive(Clone, Copy)]
pub struct Outbound<'a> {
    /// The frame, or its head if it is lent.
    pub bytes: &'a [u8],
    /// The rest, in the other guest's memory.
    pub lent: Option<(&'a [LentSegment], &'a GuestMemoryMmap)>,
}

impl<'a> Outbound<'a> {
    /// A frame wholly in vnet's buffers.
    pub fn bytes(bytes: &'a [u8]) -> Self {
        Self { bytes, lent: None }
    }

    fn len(&self) -> usize {
        self.bytes.len() + self.lent.map_or(0, |(segments, _)| segments.iter().map(|s| s.len).sum())
    }
}

/// Bytes still to be written into receive buffers: the header, then the frame's bytes,
/// then what is left of its lent pieces (the first one `lent_done` bytes in).
struct Outgoing<'a> {
    parts: [&'a [u8]; 2],
    lent: &'a [LentSegment],
    lent_done: usize,
    source: Option<&'a GuestMemoryMmap>,
}

impl Outgoing<'_> {
    fn is_empty(&self) -> bool {
        self.parts.iter().all(|part| part.is_empty()) && self.lent.is_empty()
    }

    /// Writes up to `len` bytes at `address`, returning how many were written.
    fn write_to<M: GuestMemory>(
        &mut self,
        memory: &M,
        mut address: vm_memory::GuestAddress,
        mut len: usize,
    ) -> Result<usize, ChainFault> {
        let mut written = 0;
        for part in &mut self.parts {
            if len == 0 {
                break;
            }
            let n = part.len().min(len);
            if n == 0 {
                continue;
            }
            memory.write_slice(&part[..n], address).map_err(|_| ChainFault::OutsideMemory)?;
            *part = &part[n..];
            written += n;
            len -= n;
            address = address.checked_add(n as u64).ok_or(ChainFault::OutsideMemory)?;
        }
        while len > 0 {
            let (Some(segment), Some(source)) = (self.lent.first(), self.source) else {
                break;
            };
            let n = (segment.len - self.lent_done).min(len);
            let from = GuestAddress(segment.address + self.lent_done as u64);
            copy_between_guests(source, from, memory, address, n)?;
            self.lent_done += n;
            if self.lent_done == segment.len {
                self.lent = &self.lent[1..];
                self.lent_done = 0;
            }
            written += n;
            len -= n;
            address = address.checked_add(n as u64).ok_or(ChainFault::OutsideMemory)?;
        }
        Ok(written)
    }
}

/// Copies `len` bytes at `from` in one guest's memory to `to` in another's, with no
/// buffer of vnet's between.
fn copy_between_guests<M: GuestMemory>(
    source: &GuestMemoryMmap,
    mut from: GuestAddress,
    memory: &M,
    to: GuestAddress,
    len: usize,
) -> Result<(), ChainFault> {
    fn outside<E>(_: E) -> ChainFault {
        ChainFault::OutsideMemory
    }
    for target in memory.get_slices(to, len, Permissions::Write).map_err(outside)? {
        let target = target.map_err(outside)?;
        let mut done = 0;
        for piece in source.get_slices(from, target.len(), Permissions::Read).map_err(outside)? {
            let piece = piece.map_err(outside)?;
            piece.copy_to_volatile_slice(target.subslice(done, piece.len()).map_err(outside)?);
            done += piece.len();
        }
        from = from.checked_add(target.len() as u64).ok_or(ChainFault::OutsideMemory)?;
    }
    Ok(())
}

/// Writes what is left of `outgoing` into one receive chain, returning the bytes it took.
fn fill_chain<M: GuestMemory>(
    chain: impl Iterator<Item = Descriptor>,
    memory: &M,
    outgoing: &mut Outgoing<'_>,
) -> Result<u32, ChainFault> {
    let mut written = 0usize;
    for descriptor in chain {
        if outgoing.is_empty() {
            break;
        }
        written += outgoing.write_to(memory, descriptor.addr(), descriptor.len() as usize)?;
    }
    Ok(written as u32)
}

/// Whether a frame went into the receive ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// It did.
    Delivered,
    /// The guest has not posted enough buffers; nothing was taken.
    NoRoom,
}

/// Puts `frame` behind `header` into the receive ring. With `mergeable` buffers the frame
/// may spread over several chains, and the header says how many; otherwise one chain
/// must hold it. A chain that cannot take it is given back used and empty, and the frame
/// is lost.
pub fn deliver<M: GuestMemory>(
    queue: &mut Queue,
    memory: &M,
    mut header: [u8; NET_HEADER_LEN],
    frame: Outbound<'_>,
    mergeable: bool,
) -> Result<Delivery, ChainFault> {
    check_ring_index(queue, memory)?;
    let needed = NET_HEADER_LEN + frame.len();
    let mut chains: [Option<DescriptorChain<&M>>; MAX_RECEIVE_BUFFERS] =
        [const { None }; MAX_RECEIVE_BUFFERS];
    let mut count = 0;
    let mut capacity = 0usize;
    while capacity < needed {
        if count == MAX_RECEIVE_BUFFERS {
            return give_back_empty(queue, memory, &chains[..count], ChainFault::TooManyBuffers);
        }
        let Some(chain) = queue.pop_descriptor_chain(memory) else {
            for _ in 0..count {
                queue.go_to_previous_position();
            }
            return Ok(Delivery::NoRoom);
        };
        let chain_capacity = receive_capacity(chain.clone());
        chains[count] = Some(chain);
        count += 1;
        match chain_capacity {
            Ok(n) if !mergeable && n < needed => {
                return give_back_empty(queue, memory, &chains[..count], ChainFault::BufferTooSmall)
            }
            Ok(n) => capacity += n,
            Err(fault) => return give_back_empty(queue, memory, &chains[..count], fault),
        }
    }
    header[10..12].copy_from_slice(&(count as u16).to_le_bytes());
    let (lent, source) = frame.lent.map_or((&[][..], None), |(segments, source)| (segments, Some(source)));
    let mut outgoing = Outgoing { parts: [&header, frame.bytes], lent, lent_done: 0, source };
    let mut fault = None;
    let mut used = [(0u16, 0u32); MAX_RECEIVE_BUFFERS];
    for (chain, entry) in chains[..count].iter().flatten().zip(&mut used) {
        let written = match fault {
            None => fill_chain(chain.clone(), memory, &mut outgoing).unwrap_or_else(|e| {
                fault = Some(e);
                0
            }),
            Some(_) => 0,
        };
        *entry = (chain.head_index(), written);
    }
    publish_used(queue, memory, &used[..count])?;
    fault.map_or(Ok(Delivery::Delivered), Err)
}

/// Asks the guest to kick once it posts buffers beyond those it has posted already
/// (too few for the frame waiting): the event index goes to the ring's available index,
/// not to the first buffer vnet has not taken. True if buffers came meanwhile.
pub fn ask_for_buffers_beyond_posted<M: GuestMemory>(queue: &mut virtio_queue::Queue, memory: &M) -> bool {
    let Ok(available) = queue.avail_idx(memory, std::sync::atomic::Ordering::Acquire) else {
        return false;
    };
    let next = queue.next_avail();
    queue.set_next_avail(available.0);
    let _ = queue.enable_notification(memory);
    queue.set_next_avail(next);
    queue.avail_idx(memory, std::sync::atomic::Ordering::Acquire).is_ok_and(|now| now != available)
}

/// Receive chains taken off the ring for one frame before it is built: where the
/// header and the frame's head go (the chains' first bytes, in at most
/// [`HEAD_PIECES`] pieces), and each chain's head index and capacity.
#[derive(Debug, Clone)]
pub struct ReservedChains {
    head_pieces: [(GuestAddress, usize); HEAD_PIECES],
    head_piece_count: usize,
    chains: [(u16, u32); MAX_RECEIVE_BUFFERS],
    count: usize,
}

/// The most pieces the header and head of a frame in reserved chains may span.
pub const HEAD_PIECES: usize = 4;

/// Why [`reserve`] took no receive chains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreserved {
    /// The guest has not posted enough buffers yet.
    NoBuffers,
    /// Its buffers are in more pieces than a tail or the head may span.
    Unlendable,
    /// A chain is bad; it was given back empty.
    Fault(ChainFault),
}

/// Takes receive chains off the ring for a frame of `head_len` bytes (the virtio-net
/// header and the frame's headers) and `payload_len` more, and puts where the payload
/// goes into `tail`. Takes nothing if it cannot take all.
pub fn reserve<M: GuestMemory>(
    queue: &mut Queue,
    memory: &M,
    head_len: usize,
    payload_len: usize,
    tail: &mut LentTail,
) -> Result<ReservedChains, Unreserved> {
    check_ring_index(queue, memory).map_err(Unreserved::Fault)?;
    tail.clear();
    let mut chains: [Option<DescriptorChain<&M>>; MAX_RECEIVE_BUFFERS] =
        [const { None }; MAX_RECEIVE_BUFFERS];
    let mut reserved = ReservedChains {
        head_pieces: [(GuestAddress(0), 0); HEAD_PIECES],
        head_piece_count: 0,
        chains: [(0, 0); MAX_RECEIVE_BUFFERS],
        count: 0,
    };
    let mut placing = Placing { skip: head_len, left: payload_len };
    let mut capacity = 0usize;
    while capacity < head_len + payload_len {
        let count = reserved.count;
        let chain = match queue.pop_descriptor_chain(memory) {
            Some(chain) if count < MAX_RECEIVE_BUFFERS => chain,
            popped => {
                let why = if popped.is_some() { Unreserved::Unlendable } else { Unreserved::NoBuffers };
                return give_up(queue, count + usize::from(popped.is_some()), why);
            }
        };
        let index = chain.head_index();
        chains[count] = Some(chain.clone());
        let mut chain_capacity = 0usize;
        for descriptor in chain {
            if !descriptor.is_write_only() {
                give_back_empty(queue, memory, &chains[..=count], ChainFault::WrongDirection)
                    .map_err(Unreserved::Fault)?;
                return Err(Unreserved::Fault(ChainFault::WrongDirection));
            }
            chain_capacity = chain_capacity.saturating_add(descriptor.len() as usize);
            if let Err(why) = placing.place(memory, descriptor, &mut reserved, tail) {
                return give_up(queue, count + 1, why);
            }
        }
        reserved.chains[count] = (index, chain_capacity.min(u32::MAX as usize) as u32);
        reserved.count += 1;
        capacity = capacity.saturating_add(chain_capacity);
    }
    Ok(reserved)
}

/// Puts `count` chains just taken back on the ring, and says why.
fn give_up(queue: &mut Queue, count: usize, why: Unreserved) -> Result<ReservedChains, Unreserved> {
    for _ in 0..count {
        queue.go_to_previous_position();
    }
    Err(why)
}

/// Where the next receive buffer's bytes go while chains are reserved: `skip` more
/// bytes of header and head, then `left` more of payload.
struct Placing {
    skip: usize,
    left: usize,
}

impl Placing {
    /// Notes where `descriptor`'s bytes go: header and head pieces into `reserved`,
    /// payload pieces into `tail`.
    fn place<M: GuestMemory>(
        &mut self,
        memory: &M,
        descriptor: Descriptor,
        reserved: &mut ReservedChains,
        tail: &mut LentTail,
    ) -> Result<(), Unreserved> {
        let outside = Unreserved::Fault(ChainFault::OutsideMemory);
        let mut address = descriptor.addr();
        let mut len = descriptor.len() as usize;
        let head = self.skip.min(len);
        if head > 0 {
            let piece =
                reserved.head_pieces.get_mut(reserved.head_piece_count).ok_or(Unreserved::Unlendable)?;
            *piece = (address, head);
            reserved.head_piece_count += 1;
            self.skip -= head;
            len -= head;
            address = address.checked_add(head as u64).ok_or(outside)?;
        }
        let payload = self.left.min(len);
        if payload == 0 {
            return Ok(());
        }
        for slice in memory.get_slices(address, payload, Permissions::Write).map_err(|_| outside)? {
            let slice = slice.map_err(|_| outside)?;
            let host = slice.ptr_guard_mut().as_ptr();
            if !tail.push(LentSegment { address: address.raw_value(), host, len: slice.len() }) {
                return Err(Unreserved::Unlendable);
            }
            address = address.unchecked_add(slice.len() as u64);
        }
        self.left -= payload;
        Ok(())
    }
}

/// Completes a frame whose payload was put into `reserved` chains: writes `header` (its
/// buffer count filled in) and the frame's `head` in front of the payload, and gives the
/// chains back used, `payload_len` bytes of payload behind them.
pub fn deliver_reserved<M: GuestMemory>(
    queue: &mut Queue,
    memory: &M,
    mut header: [u8; NET_HEADER_LEN],
    head: &[u8],
    payload_len: usize,
    reserved: &ReservedChains,
) -> Result<(), ChainFault> {
    header[10..12].copy_from_slice(&(reserved.count as u16).to_le_bytes());
    let mut outgoing = Outgoing { parts: [&header, head], lent: &[], lent_done: 0, source: None };
    for &(address, len) in &reserved.head_pieces[..reserved.head_piece_count] {
        outgoing.write_to(memory, address, len)?;
    }
    if !outgoing.is_empty() {
        return Err(ChainFault::BufferTooSmall);
    }
    let mut left = NET_HEADER_LEN + head.len() + payload_len;
    let mut used = [(0u16, 0u32); MAX_RECEIVE_BUFFERS];
    for (entry, &(index, capacity)) in used.iter_mut().zip(&reserved.chains[..reserved.count]) {
        let written = left.min(capacity as usize);
        *entry = (index, written as u32);
        left -= written;
    }
    publish_used(queue, memory, &used[..reserved.count])
}

/// Gives `reserved` chains back to the guest used and empty: for a frame that never
/// came.
pub fn give_back_reserved<M: GuestMemory>(
    queue: &mut Queue,
    memory: &M,
    reserved: &ReservedChains,
) -> Result<(), ChainFault> {
    let mut used = [(0u16, 0u32); MAX_RECEIVE_BUFFERS];
    for (entry, &(index, _)) in used.iter_mut().zip(&reserved.chains[..reserved.count]) {
        *entry = (index, 0);
    }
    publish_used(queue, memory, &used[..reserved.count])
}

/// Returns every chain in `chains` used with nothing written, and reports `fault`.
fn give_back_empty<M: GuestMemory>(
    queue: &mut Queue,
    memory: &M,
    chains: &[Option<DescriptorChain<&M>>],
    fault: ChainFault,
) -> Result<Delivery, ChainFault> {
    let mut used = [(0u16, 0u32); MAX_RECEIVE_BUFFERS];
    for (chain, entry) in chains.iter().flatten().zip(&mut used) {
        *entry = (chain.head_index(), 0);
    }
    publish_used(queue, memory, &used[..chains.len()])?;
    Err(fault)
}

/// Puts the `(head, length)` entries of one frame into the used ring and only then moves
/// the used index past all of them, so that the driver never sees part of a frame
/// (virtio 1.0, 5.1.6.4.2). `virtio-queue` writes the last entry and publishes the index
/// with release ordering; the others are written here first.
fn publish_used<M: GuestMemory>(
    queue: &mut Queue,
    memory: &M,
    used: &[(u16, u32)],
) -> Result<(), ChainFault> {
    let Some((&(last_head, last_len), earlier)) = used.split_last() else {
        return Ok(());
    };
    let start = queue.next_used();
    for (offset, &(head, len)) in earlier.iter().enumerate() {
        if head >= queue.size() {
            return Err(ChainFault::RingIndex);
        }
        let position = start.wrapping_add(offset as u16);
        let slot = u64::from(position % queue.size());
        let entry = queue
            .used_ring()
            .checked_add(USED_RING_HEADER + slot * USED_ENTRY)
            .ok_or(ChainFault::OutsideMemory)?;
        let entry = vm_memory::GuestAddress(entry);
        memory.write_obj(u32::from(head).to_le(), entry).map_err(|_| ChainFault::OutsideMemory)?;
        memory.write_obj(len.to_le(), entry.unchecked_add(4)).map_err(|_| ChainFault::OutsideMemory)?;
    }
    queue.set_next_used(start.wrapping_add(earlier.len() as u16));
    queue.add_used(memory, last_head, last_len).map_err(|_| ChainFault::RingIndex)
}

/// Whether the driver asked to be interrupted for the used entries added since the used
/// index stood at `since`: by its `used_event` with EVENT_IDX, else unless it set
/// `VRING_AVAIL_F_NO_INTERRUPT`. Kept here, not in `virtio-queue`, because
/// [`publish_used`] adds a frame's entries in one step.
pub fn needs_interrupt<M: GuestMemory>(queue: &Queue, memory: &M, since: u16) -> bool {
    fence(Ordering::SeqCst);
    if !queue.event_idx_enabled() {
        return read_driver_u16(queue, memory, 0)
            .is_none_or(|flags| u32::from(flags) & VRING_AVAIL_F_NO_INTERRUPT == 0);
    }
    let Some(used_event) = read_driver_u16(queue, memory, AVAIL_RING_HEADER + 2 * u64::from(queue.size()))
    else {
        return true;
    };
    let now = Wrapping(queue.next_used());
    now - Wrapping(used_event) - Wrapping(1) < now - Wrapping(since)
}

/// The little-endian `u16` the driver keeps `offset` bytes into its available ring.
fn read_driver_u16<M: GuestMemory>(queue: &Queue, memory: &M, offset: u64) -> Option<u16> {
    let address = queue.avail_ring().checked_add(offset)?;
    memory.load::<u16>(vm_memory::GuestAddress(address), Ordering::Relaxed).ok().map(u16::from_le)
}

/// Refuses a ring whose driver claims more available entries than the ring holds,
/// which `virtio-queue` would otherwise only log.
pub fn check_ring_index<M: GuestMemory>(queue: &Queue, memory: &M) -> Result<(), ChainFault> {
    let available = queue.avail_idx(memory, Ordering::Acquire).map_err(|_| ChainFault::OutsideMemory)?;
    let pending = available - Wrapping(queue.next_avail());
    if pending.0 > queue.size() {
        return Err(ChainFault::RingIndex);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

    use super::*;

    const WRITE: u16 = VRING_DESC_F_WRITE as u16;
    const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    /// Where test buffers live, clear of the mock ring at address 0.
    const BUFFERS: u64 = 0x10000;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40000)]).unwrap()
    }

    fn descriptor(address: u64, len: u32, flags: u16) -> Descriptor {
        Descriptor::new(address, len, flags, 0)
    }

    fn header_and(frame: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0xAA; NET_HEADER_LEN];
        bytes.extend_from_slice(frame);
        bytes
    }

    #[test]
    fn a_transmit_chain_gives_its_header_and_frame_whatever_the_split() {
        let memory = memory();
        let frame: Vec<u8> = (0..100).collect();
        memory.write_slice(&header_and(&frame), GuestAddress(BUFFERS)).unwrap();
        let chain = [
            descriptor(BUFFERS, 5, 0),
            descriptor(BUFFERS + 5, 0, 0),
            descriptor(BUFFERS + 5, 20, 0),
            descriptor(BUFFERS + 25, 87, 0),
        ];
        let (mut header, mut out) = ([0; NET_HEADER_LEN], [0; 200]);
        assert_eq!(read_transmitted(chain.into_iter(), &memory, &mut header, &mut out), Ok(100));
        assert_eq!(header, [0xAA; NET_HEADER_LEN]);
        assert_eq!(&out[..100], &frame[..]);
    }

    /// An empty tail in memory that tests never read through it.
    fn lent_tail() -> LentTail {
        struct Unread;
        impl vnet_wire::frame::LentMemory for Unread {
            fn read(&self, _: u64, _: &mut [u8]) -> bool {
                false
            }

            fn as_any(&self) -> &dyn std::any::Any {
                self
            }
        }
        LentTail::new(std::rc::Rc::new(Unread))
    }

    /// Lends `chain` from `memory`, returning the result, the head and the tail.
    fn lend(
        chain: &[Descriptor],
        memory: &GuestMemoryMmap,
    ) -> (Result<usize, ChainFault>, FrameBuffer, LentTail) {
        let (mut header, mut head) = ([0; NET_HEADER_LEN], FrameBuffer::small());
        let mut tail = lent_tail();
        let result = lend_transmitted(chain.iter().copied(), memory, &mut header, &mut head, &mut tail);
        (result, head, tail)
    }

    #[test]
    fn a_lent_chain_copies_its_head_and_leaves_the_rest_where_it_lies() {
        let memory = memory();
        let frame: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        memory.write_slice(&header_and(&frame), GuestAddress(BUFFERS)).unwrap();
        let chain = [descriptor(BUFFERS, 100, 0), descriptor(BUFFERS + 100, 912, 0)];
        let (result, head, tail) = lend(&chain, &memory);
        assert_eq!(result, Ok(1000));
        assert_eq!(head.data(), &frame[..LENT_HEAD_LEN]);
        assert_eq!(tail.len(), 1000 - LENT_HEAD_LEN);
        let frame =
            vnet_wire::Frame::with_lent_tail(head, std::rc::Rc::new(tail), vnet_wire::Offload::NONE).unwrap();
        let lent: Vec<(u64, usize)> = frame
            .parts(0..1000)
            .filter_map(|part| match part {
                vnet_wire::frame::FramePart::Lent(segment) => Some((segment.address, segment.len)),
                vnet_wire::frame::FramePart::Bytes(_) => None,
            })
            .collect();
        let start = BUFFERS + (NET_HEADER_LEN + LENT_HEAD_LEN) as u64;
        assert_eq!(lent, [(start, 100 + 912 - NET_HEADER_LEN - LENT_HEAD_LEN)]);
        let host = memory.get_host_address(GuestAddress(start)).unwrap();
        assert!(
            matches!(frame.parts(500..501).next(), Some(vnet_wire::frame::FramePart::Lent(s)) if s.host == host.wrapping_add(500 - LENT_HEAD_LEN).cast_const())
        );
    }

    #[test]
    fn a_chain_in_more_pieces_than_a_tail_holds_is_copied_and_a_bad_one_refused() {
        let memory = memory();
        let mut chain = vec![descriptor(BUFFERS, (NET_HEADER_LEN + LENT_HEAD_LEN) as u32, 0)];
        chain.extend(
            (0..=vnet_wire::frame::MAX_LENT_SEGMENTS as u64).map(|i| descriptor(BUFFERS + i * 64, 64, 0)),
        );
        assert_eq!(lend(&chain, &memory).0, Err(ChainFault::NotLendable));
        let outside = [descriptor(BUFFERS, 300, 0), descriptor(0x3ff00, 0x200, 0)];
        assert_eq!(lend(&outside, &memory).0, Err(ChainFault::OutsideMemory));
        let writable = [descriptor(BUFFERS, 300, WRITE)];
        assert_eq!(lend(&writable, &memory).0, Err(ChainFault::WrongDirection));
        let too_long =
            [descriptor(BUFFERS, 300, 0), descriptor(BUFFERS, 0x10000, 0), descriptor(BUFFERS, 0x10000, 0)];
        assert_eq!(lend(&too_long, &memory).0, Err(ChainFault::TooLong));
        assert_eq!(lend(&[descriptor(BUFFERS, 5, 0)], &memory).0, Err(ChainFault::NoHeader));
    }

    #[test]
    fn a_transmit_chain_that_is_outside_memory_writable_short_or_too_long_is_refused() {
        let memory = memory();
        let (mut header, mut out) = ([0; NET_HEADER_LEN], [0; 64]);
        let mut read =
            |chain: &[Descriptor]| read_transmitted(chain.iter().copied(), &memory, &mut header, &mut out);
        assert_eq!(read(&[descriptor(0x3_fff0, 64, 0)]), Err(ChainFault::OutsideMemory));
        assert_eq!(read(&[descriptor(u64::MAX - 4, 64, 0)]), Err(ChainFault::OutsideMemory));
        assert_eq!(read(&[descriptor(BUFFERS, 64, WRITE)]), Err(ChainFault::WrongDirection));
        assert_eq!(read(&[descriptor(BUFFERS, 11, 0)]), Err(ChainFault::NoHeader));
        assert_eq!(read(&[]), Err(ChainFault::NoHeader));
        assert_eq!(read(&[descriptor(BUFFERS, 12 + 65, 0)]), Err(ChainFault::TooLong));
        assert_eq!(read(&[descriptor(BUFFERS, u32::MAX, 0)]), Err(ChainFault::TooLong));
    }

    #[test]
    fn a_descriptor_loop_ends_at_the_ring_size() {
        let memory = memory();
        let queue = MockSplitQueue::new(&memory, 16);
        let looped = [
            RawDescriptor::from(Descriptor::new(BUFFERS, 12, NEXT, 1)),
            RawDescriptor::from(Descriptor::new(BUFFERS, 100, NEXT, 0)),
        ];
        queue.add_desc_chains(&looped, 0).unwrap();
        let mut queue: Queue = queue.create_queue().unwrap();
        let chain = queue.pop_descriptor_chain(&memory).unwrap();
        let (mut header, mut out) = ([0; NET_HEADER_LEN], vec![0; 4096]);
        let read = read_transmitted(chain, &memory, &mut header, &mut out);
        assert!(matches!(read, Ok(len) if len <= 16 * 100), "{read:?}");
    }

    /// A receive ring of `size` whose chains are one writable buffer of each length in
    /// `buffers`, one after another in memory.
    fn receive_ring<'a>(
        memory: &'a GuestMemoryMmap,
        size: u16,
        buffers: &[u32],
    ) -> MockSplitQueue<'a, GuestMemoryMmap> {
        let queue = MockSplitQueue::new(memory, size);
        let mut address = BUFFERS;
        let table: Vec<RawDescriptor> = buffers
            .iter()
            .map(|&len| {
                let descriptor = RawDescriptor::from(Descriptor::new(address, len, WRITE, 0));
                address += u64::from(len);
                descriptor
            })
            .collect();
        queue.add_desc_chains(&table, 0).unwrap();
        queue
    }

    #[test]
    fn a_frame_spreads_over_mergeable_buffers_and_says_how_many() {
        let memory = memory();
        let mock = receive_ring(&memory, 16, &[40, 40, 40, 40]);
        let mut queue: Queue = mock.create_queue().unwrap();
        let frame: Vec<u8> = (0..90).collect();
        assert_eq!(
            deliver(&mut queue, &memory, [0; NET_HEADER_LEN], Outbound::bytes(&frame), true),
            Ok(Delivery::Delivered)
        );
        assert_eq!(queue.next_avail(), 3);
        assert_eq!(queue.next_used(), 3);
        let mut written = vec![0; NET_HEADER_LEN + 90];
        memory.read_slice(&mut written, GuestAddress(BUFFERS)).unwrap();
        assert_eq!(u16::from_le_bytes([written[10], written[11]]), 3);
        assert_eq!(&written[NET_HEADER_LEN..], &frame[..]);
        let used_len =
            |entry: u64| memory.read_obj::<u32>(mock.used_addr().unchecked_add(4 + 8 * entry + 4)).unwrap();
        assert_eq!([used_len(0), used_len(1), used_len(2)], [40, 40, 22]);
        let used_heads =
            |entry: u64| memory.read_obj::<u32>(mock.used_addr().unchecked_add(4 + 8 * entry)).unwrap();
        assert_eq!([used_heads(0), used_heads(1), used_heads(2)], [0, 1, 2]);
        assert_eq!(queue.used_idx(&memory, Ordering::Acquire).unwrap().0, 3);
    }

    #[test]
    fn a_frame_lent_by_another_guest_goes_from_its_memory_straight_into_the_buffers() {
        let (memory, sender) = (memory(), self::tests::memory());
        let lent: Vec<u8> = (0..150u32).map(|i| (i * 7) as u8).collect();
        sender.write_slice(&lent[..100], GuestAddress(0x20000)).unwrap();
        sender.write_slice(&lent[100..], GuestAddress(0x30000)).unwrap();
        let segments = [
            LentSegment { address: 0x20000, host: std::ptr::null(), len: 100 },
            LentSegment { address: 0x30000, host: std::ptr::null(), len: 50 },
        ];
        let head = [0xEE; 30];
        let mock = receive_ring(&memory, 16, &[64, 64, 64, 64]);
        let mut queue: Queue = mock.create_queue().unwrap();
        let frame = Outbound { bytes: &head, lent: Some((&segments, &sender)) };
        assert_eq!(deliver(&mut queue, &memory, [0; NET_HEADER_LEN], frame, true), Ok(Delivery::Delivered));
        assert_eq!(queue.next_used(), 3, "12 + 30 + 150 bytes fill three 64-byte buffers");
        let mut written = vec![0; NET_HEADER_LEN + 180];
        memory.read_slice(&mut written, GuestAddress(BUFFERS)).unwrap();
        assert_eq!(&written[NET_HEADER_LEN..NET_HEADER_LEN + 30], &head[..]);
        assert_eq!(&written[NET_HEADER_LEN + 30..], &lent[..]);
    }

    #[test]
    fn reserved_buffers_take_the_payload_first_and_the_headers_after() {
        let memory = memory();
        let mock = receive_ring(&memory, 16, &[40, 40, 40, 40]);
        let mut queue: Queue = mock.create_queue().unwrap();
        let mut tail = lent_tail();
        let reserved = reserve(&mut queue, &memory, NET_HEADER_LEN + 30, 60, &mut tail).unwrap();
        assert_eq!(queue.next_avail(), 3, "102 bytes take three 40-byte buffers");
        let payload: Vec<u8> = (100..160).collect();
        let mut filled = 0;
        for segment in tail.segments() {
            memory
                .write_slice(&payload[filled..filled + segment.len], GuestAddress(segment.address))
                .unwrap();
            filled += segment.len;
        }
        assert_eq!(filled, 60);
        let head = [0xEE; 30];
        deliver_reserved(&mut queue, &memory, [0; NET_HEADER_LEN], &head, 60, &reserved).unwrap();
        let mut written = vec![0; NET_HEADER_LEN + 90];
        memory.read_slice(&mut written, GuestAddress(BUFFERS)).unwrap();
        assert_eq!(u16::from_le_bytes([written[10], written[11]]), 3);
        assert_eq!(&written[NET_HEADER_LEN..NET_HEADER_LEN + 30], &head[..]);
        assert_eq!(&written[NET_HEADER_LEN + 30..], &payload[..]);
        let used_len =
            |entry: u64| memory.read_obj::<u32>(mock.used_addr().unchecked_add(4 + 8 * entry + 4)).unwrap();
        assert_eq!([used_len(0), used_len(1), used_len(2)], [40, 40, 22]);
        assert_eq!(queue.next_used(), 3);
    }

    #[test]
    fn without_enough_buffers_nothing_is_reserved_and_unused_ones_go_back_empty() {
        let memory = memory();
        let mock = receive_ring(&memory, 16, &[40, 40]);
        let mut queue: Queue = mock.create_queue().unwrap();
        assert_eq!(reserve(&mut queue, &memory, 50, 60, &mut lent_tail()).err(), Some(Unreserved::NoBuffers));
        assert_eq!(queue.next_avail(), 0, "what was taken went back to the ring");
        let reserved = reserve(&mut queue, &memory, 50, 20, &mut lent_tail()).unwrap();
        give_back_reserved(&mut queue, &memory, &reserved).unwrap();
        let used_len =
            |entry: u64| memory.read_obj::<u32>(mock.used_addr().unchecked_add(4 + 8 * entry + 4)).unwrap();
        assert_eq!([used_len(0), used_len(1)], [0, 0]);
        assert_eq!(queue.next_used(), 2);
    }

    #[test]
    fn a_payload_in_more_pieces_than_a_tail_holds_is_not_reserved() {
        let memory = memory();
        let buffers = [64u32; 2 * vnet_wire::frame::MAX_LENT_SEGMENTS];
        let mock = receive_ring(&memory, 256, &buffers);
        let mut queue: Queue = mock.create_queue().unwrap();
        let payload = 64 * (vnet_wire::frame::MAX_LENT_SEGMENTS + 1);
        assert_eq!(
            reserve(&mut queue, &memory, NET_HEADER_LEN, payload, &mut lent_tail()).err(),
            Some(Unreserved::Unlendable)
        );
        assert_eq!(queue.next_avail(), 0);
    }

    #[test]
    fn a_frame_in_many_buffers_interrupts_once_as_the_driver_asked() {
        let memory = memory();
        let mock = receive_ring(&memory, 16, &[40; 8]);
        let used_event = mock.avail_addr().unchecked_add(4 + 2 * 16);
        let mut queue: Queue = mock.create_queue().unwrap();
        // The mock lays its used ring over the available ring's `used_event`.
        queue.set_used_ring_address(Some(0x2000), Some(0));
        queue.set_event_idx(true);
        memory.write_obj(1u16, used_event).unwrap();
        assert_eq!(
            deliver(&mut queue, &memory, [0; NET_HEADER_LEN], Outbound::bytes(&[0; 90]), true),
            Ok(Delivery::Delivered)
        );
        assert!(needs_interrupt(&queue, &memory, 0), "used_event 1 lies inside the frame's entries 0..3");
        memory.write_obj(5u16, used_event).unwrap();
        assert!(!needs_interrupt(&queue, &memory, 0), "the driver asked for a call past entry 5");
        assert_eq!(
            deliver(&mut queue, &memory, [0; NET_HEADER_LEN], Outbound::bytes(&[0; 90]), true),
            Ok(Delivery::Delivered)
        );
        assert!(needs_interrupt(&queue, &memory, 3), "entries 3..6 pass used_event 5");

        queue.set_event_idx(false);
        assert!(needs_interrupt(&queue, &memory, 3));
        memory.write_obj(VRING_AVAIL_F_NO_INTERRUPT as u16, mock.avail_addr()).unwrap();
        assert!(!needs_interrupt(&queue, &memory, 3));
    }

    #[test]
    fn the_used_index_wraps_in_the_middle_of_a_frame() {
        let memory = memory();
        let mock = receive_ring(&memory, 16, &[40, 40, 40]);
        let mut queue: Queue = mock.create_queue().unwrap();
        queue.set_next_used(u16::MAX - 1);
        assert_eq!(
            deliver(&mut queue, &memory, [0; NET_HEADER_LEN], Outbound::bytes(&[0; 90]), true),
            Ok(Delivery::Delivered)
        );
        assert_eq!(queue.next_used(), 1);
        assert_eq!(queue.used_idx(&memory, Ordering::Acquire).unwrap().0, 1);
        let used_head =
            |slot: u64| memory.read_obj::<u32>(mock.used_addr().unchecked_add(4 + 8 * slot)).unwrap();
        assert_eq!([used_head(14), used_head(15), used_head(0)], [0, 1, 2]);
    }

    #[test]
    fn without_room_nothing_is_taken_and_the_frame_waits() {
        let memory = memory();
        let mut queue: Queue = receive_ring(&memory, 16, &[40, 40]).create_queue().unwrap();
        assert_eq!(
            deliver(&mut queue, &memory, [0; NET_HEADER_LEN], Outbound::bytes(&[0; 100]), true),
            Ok(Delivery::NoRoom)
        );
        assert_eq!((queue.next_avail(), queue.next_used()), (0, 0));
        let mut queue: Queue = MockSplitQueue::new(&memory, 16).create_queue().unwrap();
        assert_eq!(
            deliver(&mut queue, &memory, [0; NET_HEADER_LEN], Outbound::bytes(&[0; 10]), true),
            Ok(Delivery::NoRoom)
        );
    }

    #[test]
    fn bad_receive_buffers_cost_the_frame_and_are_given_back_empty() {
        let memory = memory();
        let mut queue: Queue = receive_ring(&memory, 128, &[1; 100]).create_queue().unwrap();
        let fault = deliver(&mut queue, &memory, [0; NET_HEADER_LEN], Outbound::bytes(&[0; 90]), true);
        assert_eq!(fault, Err(ChainFault::TooManyBuffers));
        assert_eq!(queue.next_used() as usize, MAX_RECEIVE_BUFFERS);

        let mut queue: Queue = receive_ring(&memory, 16, &[40]).create_queue().unwrap();
        let fault = deliver(&mut queue, &memory, [0; NET_HEADER_LEN], Outbound::bytes(&[0; 90]), false);
        assert_eq!((fault, queue.next_used()), (Err(ChainFault::BufferTooSmall), 1));

        let mock = MockSplitQueue::new(&memory, 16);
        mock.add_desc_chains(&[RawDescriptor::from(Descriptor::new(BUFFERS, 200, 0, 0))], 0).unwrap();
        let mut queue: Queue = mock.create_queue().unwrap();
        assert_eq!(
            deliver(&mut queue, &memory, [0; NET_HEADER_LEN], Outbound::bytes(&[0; 90]), true),
            Err(ChainFault::WrongDirection)
        );

        let mock = MockSplitQueue::new(&memory, 16);
        mock.add_desc_chains(&[RawDescriptor::from(Descriptor::new(0x3_ffc0, 200, WRITE, 0))], 0).unwrap();
        let mut queue: Queue = mock.create_queue().unwrap();
        assert_eq!(
            deliver(&mut queue, &memory, [0; NET_HEADER_LEN], Outbound::bytes(&[0; 90]), true),
            Err(ChainFault::OutsideMemory)
        );
        assert_eq!(queue.next_used(), 1);
    }

    #[test]
    fn an_available_index_more_than_a_ring_ahead_is_refused() {
        let memory = memory();
        let mock = receive_ring(&memory, 16, &[2000]);
        memory.write_obj(40u16, mock.avail_addr().unchecked_add(2)).unwrap();
        let mut queue: Queue = mock.create_queue().unwrap();
        assert_eq!(check_ring_index(&queue, &memory), Err(ChainFault::RingIndex));
        assert_eq!(
            deliver(&mut queue, &memory, [0; NET_HEADER_LEN], Outbound::bytes(&[0; 90]), true),
            Err(ChainFault::RingIndex)
        );
    }
}
