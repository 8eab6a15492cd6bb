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
use std::sync::atomic::Ordering;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestMemory};

/// Length of the header before each frame: `virtio_net_hdr` with `num_buffers`, as
/// virtio 1.0 always has it.
pub const NET_HEADER_LEN: usize = 12;
/// The most receive chains one frame may take with mergeable buffers: a 64 KiB frame in
/// buffers of 1 KiB or more.
pub const MAX_RECEIVE_BUFFERS: usize = 64;

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
}

/// Copies the header and frame of one transmit chain into `header` and `frame`,
/// returning the frame's length.
pub fn read_transmitted<M: GuestMemory>(
    chain: impl Iterator<Item = Descriptor>,
    memory: &M,
    header: &mut [u8; NET_HEADER_LEN],
    frame: &mut [u8],
) -> Result<usize, ChainFault> {
    let mut header_len = 0;
    let mut frame_len = 0;
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
        if left == 0 {
            continue;
        }
        let end = frame_len + left;
        let into = frame.get_mut(frame_len..end).ok_or(ChainFault::TooLong)?;
        memory.read_slice(into, address).map_err(|_| ChainFault::OutsideMemory)?;
        frame_len = end;
    }
    if header_len < NET_HEADER_LEN {
        return Err(ChainFault::NoHeader);
    }
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

/// Bytes still to be written into receive buffers: the header, then the frame.
struct Outgoing<'a> {
    parts: [&'a [u8]; 2],
}

impl Outgoing<'_> {
    fn is_empty(&self) -> bool {
        self.parts.iter().all(|part| part.is_empty())
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
        Ok(written)
    }
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
    frame: &[u8],
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
    let mut outgoing = Outgoing { parts: [&header, frame] };
    let mut fault = None;
    for chain in chains[..count].iter().flatten() {
        let written = match fault {
            None => fill_chain(chain.clone(), memory, &mut outgoing).unwrap_or_else(|e| {
                fault = Some(e);
                0
            }),
            Some(_) => 0,
        };
        queue.add_used(memory, chain.head_index(), written).map_err(|_| ChainFault::RingIndex)?;
    }
    fault.map_or(Ok(Delivery::Delivered), Err)
}

/// Returns every chain in `chains` used with nothing written, and reports `fault`.
fn give_back_empty<M: GuestMemory>(
    queue: &mut Queue,
    memory: &M,
    chains: &[Option<DescriptorChain<&M>>],
    fault: ChainFault,
) -> Result<Delivery, ChainFault> {
    for chain in chains.iter().flatten() {
        queue.add_used(memory, chain.head_index(), 0).map_err(|_| ChainFault::RingIndex)?;
    }
    Err(fault)
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
