//! A guest's receive buffers, lent to whoever sends it a frame, so that the gateway peeks
//! a host socket's bytes straight into them: host → guest without a copy in vnet.
//!
//! [`ReceiveLending::lend`] takes receive chains off the ring for a frame's payload and
//! hands out where the payload goes as a [`LentTail`]; the sender fills it
//! ([`ReceiveLending::peek_into`]), builds the frame's headers in front of it and sends
//! the frame through the switch as usual. When the frame reaches this guest's port,
//! [`ReceiveLending::take`] finds its chains and the port writes only the headers. A
//! frame that goes elsewhere, or is dropped, leaves its chains unclaimed; they go back
//! to the guest empty ([`ReceiveLending::unclaimed`]).
//!
//! This module knows frames, guest memory and the receive ring; nothing of the gateway.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::fd::BorrowedFd;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use vhost_user_backend::VringT;
use vm_memory::GuestAddressSpace;
use vnet_runtime::sys::{self, ForeignWritable};
use vnet_switch::ReceiveLender;
use vnet_wire::frame::{LendRefusal, LentTail};

use crate::device::{NetDevice, RX_RING};
use crate::lending::TailPool;
use crate::rings::{self, ReservedChains, Unreserved, NET_HEADER_LEN};

/// Frames whose chains may be out at once; more are not lent.
const MAX_RESERVED: usize = 64;
/// Tails kept for reuse.
const SPARE_TAILS: usize = 2 * MAX_RESERVED;

/// The receive chains lent out for frames on their way to the guest.
pub struct ReceiveLending {
    device: Arc<Mutex<NetDevice>>,
    state: RefCell<State>,
}

struct State {
    next_ticket: u64,
    /// Each lent tail (a frame holds it too while on its way) and its chains.
    reserved: VecDeque<(Rc<LentTail>, ReservedChains)>,
    tails: TailPool,
}

impl fmt::Debug for ReceiveLending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceiveLending").field("reserved", &self.state.borrow().reserved.len()).finish()
    }
}

impl ReceiveLending {
    /// Lending from the receive ring of `device`.
    pub fn new(device: Arc<Mutex<NetDevice>>) -> Self {
        let state = State { next_ticket: 0, reserved: VecDeque::new(), tails: TailPool::new(SPARE_TAILS) };
        Self { device, state: RefCell::new(state) }
    }

    /// The chains lent for `tail`, taken back from the lent ones: the frame it belongs to
    /// has reached this guest's port.
    pub fn take(&self, tail: &LentTail) -> Option<ReservedChains> {
        let mut state = self.state.borrow_mut();
        let position = state.reserved.iter().position(|(lent, _)| std::ptr::eq(&**lent, tail))?;
        let (lent, chains) = state.reserved.remove(position)?;
        state.tails.keep(lent);
        Some(chains)
    }

    /// Takes back the chains whose frame no holder has any more: it was dropped on the
    /// way, or went elsewhere. They go back to the guest empty, through `give_back`.
    pub fn unclaimed(&self, mut give_back: impl FnMut(&ReservedChains)) {
        let mut state = self.state.borrow_mut();
        let mut reserved = std::mem::take(&mut state.reserved);
        reserved.retain(|(tail, chains)| {
            if Rc::strong_count(tail) > 1 {
                return true;
            }
            give_back(chains);
            state.tails.keep(Rc::clone(tail));
            false
        });
        state.reserved = reserved;
    }

    /// Forgets every lent chain without giving it back: the ring was reset or is gone.
    pub fn forget(&self) {
        self.state.borrow_mut().reserved.clear();
    }
}

impl ReceiveLender for ReceiveLending {
    fn lend(&self, headers_len: usize, payload_len: usize) -> Result<Rc<LentTail>, LendRefusal> {
        let device = self.device.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let negotiated = device.negotiated();
        let takes_as_is = negotiated.mergeable_buffers
            && negotiated.guest_checksum
            && negotiated.guest_tso4
            && negotiated.guest_tso6;
        let mut state = self.state.borrow_mut();
        if !takes_as_is || state.reserved.len() >= MAX_RESERVED || !device.ring_usable(RX_RING) {
            return Err(LendRefusal::Unable);
        }
        let memory = device.memory().memory().into_inner();
        let mut tail = state.tails.take(&memory);
        let lent_tail = Rc::get_mut(&mut tail).expect("a fresh tail has one holder");
        state.next_ticket += 1;
        lent_tail.set_ticket(state.next_ticket);
        let mut ring = device.ring(RX_RING).get_mut();
        let queue = ring.get_queue_mut();
        let head_len = NET_HEADER_LEN + headers_len;
        let mut reserved = rings::reserve(queue, &*memory, head_len, payload_len, lent_tail);
        // Too few buffers: the guest is to kick once it posts more, unless it just did.
        if reserved.as_ref().err() == Some(&Unreserved::NoBuffers)
            && rings::ask_for_buffers_beyond_posted(queue, &*memory)
        {
            reserved = rings::reserve(queue, &*memory, head_len, payload_len, lent_tail);
        }
        match reserved {
            Ok(chains) => {
                state.reserved.push_back((Rc::clone(&tail), chains));
                Ok(tail)
            }
            Err(why) => {
                state.tails.keep(tail);
                Err(if why == Unreserved::NoBuffers { LendRefusal::NoBuffers } else { LendRefusal::Unable })
            }
        }
    }

    fn peek_into(&self, tail: &LentTail, source: BorrowedFd<'_>) -> io::Result<usize> {
        let state = self.state.borrow();
        if !state.reserved.iter().any(|(lent, _)| std::ptr::eq(&**lent, tail)) {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        let regions = tail.segments().iter().map(|segment| {
            // SAFETY: the segment lies in receive buffers this lender took off the
            // guest's ring for this tail and has not given back: guest memory, mapped
            // writable while the tail's memory handle lives, which no Rust reference
            // covers (vnet reaches guest memory through vm-memory's volatile accessors).
            unsafe { ForeignWritable::new(segment.host.cast_mut(), segment.len) }
        });
        sys::peek_into_foreign(source, regions)
    }
}
