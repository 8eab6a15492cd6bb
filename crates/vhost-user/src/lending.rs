//! A guest's transmit buffers, lent to the frames taken from them, so that a frame's
//! payload crosses vnet where the guest wrote it (to a host socket through an iovec)
//! instead of being copied into vnet's buffers.
//!
//! A transmit chain stays out of the used ring while a frame holds it. The loop turn
//! that took it lets the switch and the gateway handle its frame; then [`Lending::settle`]
//! gives every chain back: a frame still queued somewhere (a slow port, a capture) is
//! first copied whole ([`Frame::detach`]), so no port can hold a guest's buffers, and
//! with them its transmit ring, past that turn.
//!
//! This module knows frames, guest memory and descriptor indexes; nothing of the rings'
//! layout or of ports.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vnet_wire::frame::{LentMemory, LentTail};
use vnet_wire::Frame;

/// Tails kept for reuse: one per transmit descriptor a ring of the largest size has.
const SPARE_TAILS: usize = 1024;

/// A guest's memory as frames' tails read it; holding it keeps the mapping alive even
/// after QEMU has sent a new memory table.
pub struct GuestLentMemory(Arc<GuestMemoryMmap>);

impl GuestLentMemory {
    /// Guest memory as mapped now.
    pub fn new(memory: Arc<GuestMemoryMmap>) -> Self {
        Self(memory)
    }

    /// Whether this is `memory`, the same mapping.
    pub fn is(&self, memory: &Arc<GuestMemoryMmap>) -> bool {
        Arc::ptr_eq(&self.0, memory)
    }

    /// The guest memory a frame's tail is lent from, if a vhost-user guest lent it.
    pub fn of(memory: &dyn LentMemory) -> Option<&GuestMemoryMmap> {
        memory.as_any().downcast_ref::<GuestLentMemory>().map(|lent| &*lent.0)
    }
}

impl LentMemory for GuestLentMemory {
    fn read(&self, address: u64, into: &mut [u8]) -> bool {
        self.0.read_slice(into, GuestAddress(address)).is_ok()
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Tails to lend, kept for reuse, and the guest memory they are lent from.
pub struct TailPool {
    memory: Option<Rc<GuestLentMemory>>,
    spare: Vec<Rc<LentTail>>,
    limit: usize,
}

impl TailPool {
    /// A pool that keeps up to `limit` tails.
    pub fn new(limit: usize) -> Self {
        Self { memory: None, spare: Vec::new(), limit }
    }

    /// An empty tail in `memory`, which must be what the guest's memory is now: a kept
    /// one that no frame holds any more, or a new one.
    pub fn take(&mut self, memory: &Arc<GuestMemoryMmap>) -> Rc<LentTail> {
        let memory = match &self.memory {
            Some(lent) if lent.is(memory) => Rc::clone(lent),
            _ => {
                let lent = Rc::new(GuestLentMemory::new(Arc::clone(memory)));
                self.memory = Some(Rc::clone(&lent));
                lent
            }
        };
        let free = self.spare.iter().rposition(|tail| Rc::strong_count(tail) == 1);
        let Some(mut tail) = free.map(|position| self.spare.swap_remove(position)) else {
            return Rc::new(LentTail::new(memory));
        };
        Rc::get_mut(&mut tail).expect("a free tail has no other holder").reset(memory);
        tail
    }

    /// Keeps `tail` for reuse while there is room; a frame may hold it still, and it is
    /// reused once none does.
    pub fn keep(&mut self, tail: Rc<LentTail>) {
        if self.spare.len() < self.limit {
            self.spare.push(tail);
        }
    }
}

/// The transmit chains out with frames, and the tails to lend next.
pub struct Lending {
    tails: TailPool,
    /// Each frame lent from the guest's buffers, and the index of its chain.
    out: Vec<(Frame, u16)>,
    /// When the first chain still out was lent.
    since: Option<Instant>,
}

impl Default for Lending {
    fn default() -> Self {
        Self { tails: TailPool::new(SPARE_TAILS), out: Vec::new(), since: None }
    }
}

impl Lending {
    /// An empty tail in `memory`, which must be what the guest's memory is now.
    pub fn tail_in(&mut self, memory: &Arc<GuestMemoryMmap>) -> Rc<LentTail> {
        self.tails.take(memory)
    }

    /// Keeps `tail`, unused, for the next frame.
    pub fn keep(&mut self, tail: Rc<LentTail>) {
        if Rc::strong_count(&tail) == 1 {
            self.tails.keep(tail);
        }
    }

    /// Notes that `frame` holds the transmit chain `index` from `now` on.
    pub fn lent(&mut self, frame: Frame, index: u16, now: Instant) {
        self.since.get_or_insert(now);
        self.out.push((frame, index));
    }

    /// When chains are out: the time [`Lending::settle`] is due.
    pub fn due(&self) -> Option<Instant> {
        self.since
    }

    /// Gives every chain back through `used`, copying first each frame another holder
    /// still has, and keeps the tails no frame holds any more. Returns how many chains
    /// went back, and how many of their frames were copied.
    pub fn settle(&mut self, mut used: impl FnMut(u16)) -> (u64, u64) {
        self.since = None;
        let mut out = std::mem::take(&mut self.out);
        let (settled, mut copied) = (out.len() as u64, 0);
        for (frame, index) in out.drain(..) {
            if frame.lent_elsewhere() {
                frame.detach();
                copied += 1;
            }
            used(index);
            if let Some(tail) = frame.into_lent_tail() {
                self.keep(tail);
            }
        }
        self.out = out;
        (settled, copied)
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestMemoryBackend;
    use vnet_wire::frame::LentSegment;
    use vnet_wire::{FrameBuffer, Offload};

    use super::*;

    fn memory() -> Arc<GuestMemoryMmap> {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        memory.write_slice(&[0x77; 1000], GuestAddress(0x1000)).unwrap();
        Arc::new(memory)
    }

    /// A frame of an 18-byte head and 1000 bytes lent from `memory` at 0x1000.
    fn lend_frame(lending: &mut Lending, memory: &Arc<GuestMemoryMmap>) -> Frame {
        let mut tail = lending.tail_in(memory);
        let host = memory.get_host_address(GuestAddress(0x1000)).unwrap().cast_const();
        assert!(Rc::get_mut(&mut tail).unwrap().push(LentSegment { address: 0x1000, host, len: 1000 }));
        Frame::with_lent_tail(FrameBuffer::copy_of(&[0x11; 18]), tail, Offload::NONE).unwrap()
    }

    #[test]
    fn settling_gives_every_chain_back_and_copies_only_frames_still_held() {
        let memory = memory();
        let mut lending = Lending::default();
        let now = Instant::now();
        let handled = lend_frame(&mut lending, &memory);
        lending.lent(handled.clone(), 3, now);
        drop(handled);
        let queued = lend_frame(&mut lending, &memory);
        lending.lent(queued.clone(), 7, now);
        assert_eq!(lending.due(), Some(now));
        let mut used = Vec::new();
        assert_eq!(lending.settle(|index| used.push(index)), (2, 1));
        assert_eq!(used, [3, 7]);
        assert_eq!(lending.due(), None);
        assert!(!queued.lent_elsewhere(), "the queued frame was copied");
        memory.write_slice(&[0; 1000], GuestAddress(0x1000)).unwrap();
        assert_eq!(&queued.as_bytes()[18..], &[0x77; 1000][..], "it reads the copy, not the guest's buffer");
        assert_eq!(
            lending.tails.spare.len(),
            1,
            "the handled frame's tail is kept; the queued one's is not free"
        );
    }

    #[test]
    fn a_new_memory_table_gives_new_tails_a_new_memory() {
        let (first, second) = (memory(), memory());
        let mut lending = Lending::default();
        let tail = lending.tail_in(&first);
        lending.keep(tail);
        let _tail = lending.tail_in(&second);
        assert!(Arc::ptr_eq(&lending.tails.memory.as_ref().unwrap().0, &second));
    }
}
