//! The one frame type every layer passes ([`Frame`]), and the pooled buffers frames live
//! in ([`FrameBuffer`]).
//!
//! A buffer comes from a per-thread pool, is filled by one writer (a read from a socket
//! or tap, a peek from a host socket, a header built in front of a payload) and is then
//! frozen into one or more frames that share it. Cloning a frame (flooding it to many
//! ports) counts a reference; when the last frame of a buffer is dropped, the buffer goes
//! back to the pool. Steady traffic therefore allocates nothing per frame. Buffers come
//! in two sizes: small ones for frames up to a standard MTU, large ones for 64 KiB
//! segments and stream reads. This file knows lengths and Ethernet addresses, nothing
//! about ports or sockets.
//!
//! A frame may also leave its tail where its sender put it ([`LentTail`]): a guest's
//! transmit buffers, lent by the transport that took the frame off the guest's ring. Its
//! head (every header) is in a pooled buffer; the rest is reached through the
//! [`LentMemory`] it lives in. A reader that can take the frame in pieces ([`Frame::parts`],
//! an iovec for the kernel) copies nothing; one that asks for contiguous bytes
//! ([`Frame::as_bytes`]) gets the frame copied whole once, and every clone of it shares
//! that copy.

use std::cell::{OnceCell, RefCell};
use std::fmt;
use std::ops::Range;
use std::rc::Rc;

use smoltcp::wire::EthernetFrame;

use crate::{MacAddress, Offload, ETHERNET_HEADER_LEN, MAX_FRAME_LEN};

/// Room kept free in front of a frame's first byte in a fresh buffer, for headers
/// written in front of a payload (or a tag) without moving it.
pub const HEADROOM: usize = 128;
/// Size of a small buffer: a 1518-byte frame and its headroom, rounded up.
pub const SMALL_BUFFER: usize = 2048;
/// Size of a large buffer: the largest frame and its headroom.
pub const LARGE_BUFFER: usize = HEADROOM + MAX_FRAME_LEN;
/// Free buffers each pool keeps for reuse; beyond these, returned buffers are freed.
const POOLED_SMALL: usize = 4096;
const POOLED_LARGE: usize = 256;

/// The most pieces of guest memory one lent tail may span: a 64 KiB segment in a guest's
/// receive buffers of 1 KiB or more, or in pages and the linear part before them.
pub const MAX_LENT_SEGMENTS: usize = 64;

/// Why bytes are not a frame vnet will switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Shorter than an Ethernet header: this many bytes.
    Runt(usize),
    /// Longer than [`MAX_FRAME_LEN`]: this many bytes.
    Oversize(usize),
}

impl FrameError {
    /// How long the refused bytes were.
    pub fn len(self) -> usize {
        match self {
            FrameError::Runt(len) | FrameError::Oversize(len) => len,
        }
    }

    /// Always false: kept beside [`FrameError::len`] for the usual pair.
    pub fn is_empty(self) -> bool {
        false
    }
}

/// Checks that `len` bytes can be a frame.
fn check_len(len: usize) -> Result<(), FrameError> {
    if len < ETHERNET_HEADER_LEN {
        return Err(FrameError::Runt(len));
    }
    if len > MAX_FRAME_LEN {
        return Err(FrameError::Oversize(len));
    }
    Ok(())
}

thread_local! {
    static POOL: RefCell<Pool> = const { RefCell::new(Pool { small: Vec::new(), large: Vec::new() }) };
    /// The storage of every empty buffer of this thread.
    static NO_STORAGE: Rc<[u8]> = Rc::from(Vec::new());
}

/// Free buffers of this thread, by size.
struct Pool {
    small: Vec<Rc<[u8]>>,
    large: Vec<Rc<[u8]>>,
}

/// How many buffers this thread's pool holds free now, small and large.
pub fn pooled_buffers() -> (usize, usize) {
    POOL.with(|pool| {
        let pool = pool.borrow();
        (pool.small.len(), pool.large.len())
    })
}

/// A buffer of `size` bytes, reused from the pool if one is free.
fn take_storage(size: usize) -> Rc<[u8]> {
    let reused = POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        match size {
            SMALL_BUFFER => pool.small.pop(),
            LARGE_BUFFER => pool.large.pop(),
            _ => None,
        }
    });
    reused.unwrap_or_else(|| std::iter::repeat_n(0u8, size).collect())
}

/// Shared ownership of one buffer; the last owner gives it back to the pool.
struct Storage(Rc<[u8]>);

impl Clone for Storage {
    fn clone(&self) -> Self {
        Storage(Rc::clone(&self.0))
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        if Rc::strong_count(&self.0) != 1 {
            return;
        }
        let buffer = Rc::clone(&self.0);
        // A thread that is ending has no pool left; the buffer is then simply freed.
        let _ = POOL.try_with(|pool| {
            let mut pool = pool.borrow_mut();
            let (free, limit) = match buffer.len() {
                SMALL_BUFFER => (&mut pool.small, POOLED_SMALL),
                LARGE_BUFFER => (&mut pool.large, POOLED_LARGE),
                _ => return,
            };
            if free.len() < limit {
                // The list takes its full size at once, so that it never grows while
                // traffic flows.
                free.reserve_exact(limit - free.len());
                free.push(buffer);
            }
        });
    }
}

/// Memory outside vnet's buffers that frames' tails are lent from, such as the guest
/// memory a VM shares with its vhost-user backend. Its owner keeps it mapped while a
/// [`LentTail`] holds it.
pub trait LentMemory {
    /// Copies the bytes at guest address `address` into `into`; false if some of them
    /// cannot be read.
    fn read(&self, address: u64, into: &mut [u8]) -> bool;
    /// The memory as its lender's own type, for a lender that copies between memories
    /// of its kind directly (one guest's buffers into another's).
    fn as_any(&self) -> &dyn std::any::Any;
}

/// One piece of a lent tail: where it is for its owner (`address`) and in this process
/// (`host`, for the kernel to read through an iovec; vnet's code never reads it there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LentSegment {
    /// The address in the lender's memory, for [`LentMemory::read`].
    pub address: u64,
    /// The address in this process.
    pub host: *const u8,
    /// Its length in bytes.
    pub len: usize,
}

/// Why a peer lent no receive buffers for a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LendRefusal {
    /// It has not posted enough yet: the frame waits, as one queued for it would.
    NoBuffers,
    /// It cannot take this frame in lent buffers: send it in vnet's own.
    Unable,
}

/// A part of a frame, in order, as [`Frame::parts`] gives them.
#[derive(Debug, Clone, Copy)]
pub enum FramePart<'a> {
    /// Bytes in one of vnet's buffers.
    Bytes(&'a [u8]),
    /// Bytes still in lent memory.
    Lent(LentSegment),
}

/// The tail of a frame that stays in [`LentMemory`] while the frame crosses vnet. Its
/// lender keeps the memory readable until it has seen the last frame holding the tail
/// dropped, or has had the frame copied whole with [`Frame::detach`].
pub struct LentTail {
    memory: Rc<dyn LentMemory>,
    segments: [LentSegment; MAX_LENT_SEGMENTS],
    count: usize,
    len: usize,
    /// A number the lender gave the tail, to know it again.
    ticket: u64,
    /// The whole frame, once a reader needed it contiguous or the lender took its
    /// memory back.
    whole: OnceCell<(Storage, usize)>,
}

impl LentTail {
    /// An empty tail in `memory`.
    pub fn new(memory: Rc<dyn LentMemory>) -> Self {
        let none = LentSegment { address: 0, host: std::ptr::null(), len: 0 };
        Self {
            memory,
            segments: [none; MAX_LENT_SEGMENTS],
            count: 0,
            len: 0,
            ticket: 0,
            whole: OnceCell::new(),
        }
    }

    /// Empties the tail for reuse, in `memory`.
    pub fn reset(&mut self, memory: Rc<dyn LentMemory>) {
        self.memory = memory;
        self.ticket = 0;
        self.clear();
    }

    /// Drops its pieces, keeping its memory and number.
    pub fn clear(&mut self) {
        self.count = 0;
        self.len = 0;
        self.whole = OnceCell::new();
    }

    /// Gives the tail the number `ticket`, for its lender to know it by.
    pub fn set_ticket(&mut self, ticket: u64) {
        self.ticket = ticket;
    }

    /// The number its lender gave it (0 if none).
    pub fn ticket(&self) -> u64 {
        self.ticket
    }

    /// Its pieces, in order.
    pub fn segments(&self) -> &[LentSegment] {
        &self.segments[..self.count]
    }

    /// Appends a piece; false (and nothing appended) if the tail has
    /// [`MAX_LENT_SEGMENTS`] already.
    pub fn push(&mut self, segment: LentSegment) -> bool {
        let Some(slot) = self.segments.get_mut(self.count) else {
            return false;
        };
        *slot = segment;
        self.count += 1;
        self.len += segment.len;
        true
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `head` followed by the tail, copied into one buffer the first time it is asked
    /// for. Bytes that cannot be read any more come out as zeros.
    fn whole(&self, head: &[u8]) -> &[u8] {
        let (storage, start) = self.whole.get_or_init(|| {
            let mut buffer = FrameBuffer::for_len(head.len() + self.len);
            buffer.extend_from_slice(head);
            for segment in self.segments() {
                let into = &mut buffer.spare_mut()[..segment.len];
                if !self.memory.read(segment.address, into) {
                    into.fill(0);
                }
                buffer.commit(segment.len);
            }
            (buffer.storage.clone(), buffer.start)
        });
        let start = *start;
        &storage.0[start..start + head.len() + self.len]
    }
}

/// A pooled buffer being filled by one writer: `data` is what has been written, with
/// free room before it (for headers) and after it (for more data).
pub struct FrameBuffer {
    storage: Storage,
    start: usize,
    end: usize,
}

impl FrameBuffer {
    /// A small buffer (frames up to [`SMALL_BUFFER`] less [`HEADROOM`]), empty, with
    /// [`HEADROOM`] in front.
    pub fn small() -> Self {
        Self::of_size(SMALL_BUFFER, HEADROOM)
    }

    /// A large buffer (any frame), empty, with [`HEADROOM`] in front.
    pub fn large() -> Self {
        Self::of_size(LARGE_BUFFER, HEADROOM)
    }

    /// A large buffer, empty, with no headroom: for stream reads, where frames are cut
    /// out of what was read.
    pub fn large_without_headroom() -> Self {
        Self::of_size(LARGE_BUFFER, 0)
    }

    /// A buffer with no room at all, which holds no memory of its own: for a holder that
    /// may need no room for a while. Writing into it first moves it to a real buffer.
    pub fn empty() -> Self {
        Self { storage: Storage(NO_STORAGE.with(Rc::clone)), start: 0, end: 0 }
    }

    /// The smallest buffer that holds `len` bytes after [`HEADROOM`].
    pub fn for_len(len: usize) -> Self {
        if HEADROOM + len <= SMALL_BUFFER {
            Self::small()
        } else {
            Self::large()
        }
    }

    /// The smallest buffer that holds `bytes` after [`HEADROOM`], with them as its data;
    /// what is longer than a large buffer holds is cut off.
    pub fn copy_of(bytes: &[u8]) -> Self {
        let mut buffer = Self::for_len(bytes.len());
        buffer.extend_from_slice(bytes);
        buffer
    }

    /// A buffer of exactly `bytes.len()` bytes, with no headroom and no spare room,
    /// holding them: for data kept a while that is neither small nor whole, such as
    /// the part of a large frame that has arrived. It is not pooled.
    pub fn fitted(bytes: &[u8]) -> Self {
        Self { storage: Storage(Rc::from(bytes)), start: 0, end: bytes.len() }
    }

    fn of_size(size: usize, start: usize) -> Self {
        Self { storage: Storage(take_storage(size)), start, end: start }
    }

    /// The whole buffer, to write into; frames cut from it with
    /// [`FrameBuffer::share`] must all be gone, which is checked.
    fn storage_mut(&mut self) -> &mut [u8] {
        if Rc::get_mut(&mut self.storage.0).is_none() {
            // Frames still share this buffer: carry on in a fresh copy of it.
            let mut fresh = take_storage(self.storage.0.len());
            Rc::get_mut(&mut fresh).expect("a pooled buffer has one owner").copy_from_slice(&self.storage.0);
            self.storage = Storage(fresh);
        }
        Rc::get_mut(&mut self.storage.0).expect("checked or replaced above")
    }

    /// What has been written.
    pub fn data(&self) -> &[u8] {
        &self.storage.0[self.start..self.end]
    }

    /// What has been written, to change in place.
    pub fn data_mut(&mut self) -> &mut [u8] {
        let (start, end) = (self.start, self.end);
        &mut self.storage_mut()[start..end]
    }

    /// How many bytes have been written.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The free room after the data, to write into before [`FrameBuffer::commit`].
    pub fn spare_mut(&mut self) -> &mut [u8] {
        let end = self.end;
        &mut self.storage_mut()[end..]
    }

    /// Whether frames cut from this buffer with [`FrameBuffer::share`] still exist, so
    /// that writing into it would first move it.
    pub fn is_shared(&self) -> bool {
        Rc::strong_count(&self.storage.0) > 1
    }

    /// How much room is free after the data.
    pub fn spare_len(&self) -> usize {
        self.storage.0.len() - self.end
    }

    /// The bytes of memory the buffer holds: headroom, data and spare room.
    pub fn capacity(&self) -> usize {
        self.storage.0.len()
    }

    /// How much room is free before the data.
    pub fn headroom(&self) -> usize {
        self.start
    }

    /// Takes `len` bytes written into [`FrameBuffer::spare_mut`] as data.
    pub fn commit(&mut self, len: usize) {
        self.end = (self.end + len).min(self.storage.0.len());
    }

    /// Appends `bytes` after the data; what does not fit is cut off.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        let spare = self.spare_mut();
        let len = bytes.len().min(spare.len());
        spare[..len].copy_from_slice(&bytes[..len]);
        self.commit(len);
    }

    /// Makes `len` bytes of headroom part of the data, in front, and returns them to
    /// write a header into. Panics if there is not that much headroom.
    pub fn prepend(&mut self, len: usize) -> &mut [u8] {
        assert!(len <= self.start, "{len} bytes of header do not fit into {} of headroom", self.start);
        self.start -= len;
        let (start, end) = (self.start, self.start + len);
        &mut self.storage_mut()[start..end]
    }

    /// Drops the first `len` bytes of data (they become headroom).
    pub fn advance(&mut self, len: usize) {
        self.start = (self.start + len).min(self.end);
    }

    /// Empties the buffer, keeping `headroom` in front.
    pub fn clear(&mut self, headroom: usize) {
        self.start = headroom.min(self.storage.0.len());
        self.end = self.start;
    }

    /// The data as a frame that still needs `offload` done.
    pub fn freeze(self, offload: Offload) -> Result<Frame, FrameError> {
        self.share(0..self.len(), offload)
    }

    /// `range` of the data as a frame sharing this buffer. Writing into the buffer
    /// afterwards first moves it to a fresh one, so the frame never changes.
    pub fn share(&self, range: Range<usize>, offload: Offload) -> Result<Frame, FrameError> {
        let len = range.len();
        check_len(len)?;
        let start = self.start + range.start;
        assert!(start + len <= self.end, "a shared frame lies within the data");
        Ok(Frame {
            storage: self.storage.clone(),
            start: start as u32,
            len: len as u32,
            offload,
            ingress_port: 0,
            tail: None,
        })
    }
}

impl fmt::Debug for FrameBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameBuffer").field("start", &self.start).field("len", &self.len()).finish()
    }
}

/// One Ethernet frame without FCS, as every QEMU backend hands it over, with what it
/// still needs done before it is what the wire carries ([`Offload`]).
///
/// Construction checks the length once; the address accessors can then never fail.
///
/// A frame also remembers the number of the switch port it entered by
/// ([`Frame::ingress_port`]), so that whoever receives it can tell its senders apart
/// by where they are, not only by the addresses they claim.
#[derive(Clone)]
pub struct Frame {
    storage: Storage,
    start: u32,
    len: u32,
    offload: Offload,
    ingress_port: u32,
    /// The rest of the frame, after the bytes in `storage`, where it was lent from.
    tail: Option<Rc<LentTail>>,
}

impl Frame {
    /// A frame of `head`'s data followed by `tail`, that still needs `offload` done.
    /// `head` should hold every header a reader of the frame looks at.
    pub fn with_lent_tail(
        head: FrameBuffer,
        tail: Rc<LentTail>,
        offload: Offload,
    ) -> Result<Self, FrameError> {
        check_len(head.len() + tail.len())?;
        if head.len() < ETHERNET_HEADER_LEN + 4 {
            return Err(FrameError::Runt(head.len()));
        }
        Ok(Frame { tail: Some(tail), ..head.freeze(offload)? })
    }

    /// The lent tail, for its lender to take back once this is the last frame holding
    /// it.
    pub fn into_lent_tail(mut self) -> Option<Rc<LentTail>> {
        self.tail.take()
    }

    /// Whether the frame's tail is still in lent memory, and frames other than this one
    /// hold it.
    pub fn lent_elsewhere(&self) -> bool {
        self.tail.as_ref().is_some_and(|tail| tail.whole.get().is_none() && Rc::strong_count(tail) > 1)
    }

    /// Copies the frame whole out of lent memory, for every frame sharing its tail, so
    /// that the lender may take the memory back.
    pub fn detach(&self) {
        if let Some(tail) = &self.tail {
            tail.whole(self.head());
        }
    }

    /// The frame's first bytes, in one of vnet's buffers: the whole frame, unless its
    /// tail is lent; then the bytes before the tail, which hold its headers (at least
    /// an Ethernet header and a VLAN tag's length).
    pub fn head(&self) -> &[u8] {
        let start = self.start as usize;
        &self.storage.0[start..start + self.len as usize]
    }

    /// For a frame whose tail is still lent: its head, the pieces of its tail in order,
    /// and the memory they are in.
    pub fn lent_parts(&self) -> Option<(&[u8], &[LentSegment], &dyn LentMemory)> {
        let tail = self.lent_tail()?;
        Some((self.head(), tail.segments(), &*tail.memory))
    }

    /// The frame's lent tail, whether or not it has been copied whole since.
    pub fn tail(&self) -> Option<&LentTail> {
        self.tail.as_deref()
    }

    /// The frame's tail, while it is still lent.
    pub fn lent_tail(&self) -> Option<&LentTail> {
        self.tail.as_deref().filter(|tail| tail.whole.get().is_none())
    }

    /// The bytes of `range` of the frame, as pieces in order, without copying any:
    /// slices of vnet's buffers, and segments of lent memory for a system call to read.
    pub fn parts(&self, range: Range<usize>) -> impl Iterator<Item = FramePart<'_>> {
        let lent = self.lent_tail();
        let bytes = if lent.is_some() { self.head() } else { self.as_bytes() };
        let in_bytes = range.start.min(bytes.len())..range.end.min(bytes.len());
        let first = (!in_bytes.is_empty()).then(|| FramePart::Bytes(&bytes[in_bytes]));
        let mut offset = bytes.len();
        let segments = lent.map(LentTail::segments).unwrap_or(&[]).iter().filter_map(move |segment| {
            let (start, end) = (offset, offset + segment.len);
            offset = end;
            let (from, to) = (range.start.max(start), range.end.min(end));
            (from < to).then(|| {
                let skip = from - start;
                FramePart::Lent(LentSegment {
                    address: segment.address + skip as u64,
                    host: segment.host.wrapping_add(skip),
                    len: to - from,
                })
            })
        });
        first.into_iter().chain(segments)
    }

    /// A frame holding a copy of `bytes`, in a pooled buffer, that still needs
    /// `offload` done.
    pub fn copy_from_slice(bytes: &[u8], offload: Offload) -> Result<Self, FrameError> {
        check_len(bytes.len())?;
        let mut buffer = FrameBuffer::for_len(bytes.len());
        buffer.extend_from_slice(bytes);
        buffer.freeze(offload)
    }

    /// The same bytes, with `offload` still to do.
    pub fn with_offload(self, offload: Offload) -> Self {
        Self { offload, ..self }
    }

    /// The same bytes, marked as having entered the switch by port number `port`.
    pub fn with_ingress_port(self, port: u32) -> Self {
        Self { ingress_port: port, ..self }
    }

    /// The number of the switch port the frame entered by; 0 for a frame no switch has
    /// carried yet.
    pub fn ingress_port(&self) -> u32 {
        self.ingress_port
    }

    /// What the frame still needs done before it is what the wire carries.
    pub fn offload(&self) -> Offload {
        self.offload
    }

    /// The destination MAC address.
    pub fn destination(&self) -> MacAddress {
        self.header().dst_addr()
    }

    /// The source MAC address.
    pub fn source(&self) -> MacAddress {
        self.header().src_addr()
    }

    /// The whole frame, header included. A frame with a lent tail is copied whole the
    /// first time; [`Frame::parts`] reads it without a copy.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.tail {
            None => self.head(),
            Some(tail) => tail.whole(self.head()),
        }
    }

    /// The frame's length in bytes, header included.
    pub fn len(&self) -> usize {
        self.len as usize + self.tail.as_ref().map_or(0, |tail| tail.len())
    }

    /// Always false: a [`Frame`] holds at least an Ethernet header.
    pub fn is_empty(&self) -> bool {
        false
    }

    fn header(&self) -> EthernetFrame<&[u8]> {
        EthernetFrame::new_unchecked(self.head())
    }
}

/// A frame reads as its bytes, as [`Frame::as_bytes`] gives them.
impl std::ops::Deref for Frame {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsRef<[u8]> for Frame {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl PartialEq for Frame {
    fn eq(&self, other: &Self) -> bool {
        self.offload == other.offload && self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Frame {}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("destination", &self.destination())
            .field("source", &self.source())
            .field("len", &self.len())
            .field("offload", &self.offload)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_bytes(dst: [u8; 6], src: [u8; 6], payload_len: usize) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&dst);
        v.extend_from_slice(&src);
        v.extend_from_slice(&[0x08, 0x00]);
        v.resize(ETHERNET_HEADER_LEN + payload_len, 0xab);
        v
    }

    #[test]
    fn addresses_are_read_from_the_header() {
        let dst = [0xff; 6];
        let src = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let frame = Frame::copy_from_slice(&frame_bytes(dst, src, 46), Offload::NONE).unwrap();
        assert_eq!(frame.destination(), MacAddress(dst));
        assert_eq!(frame.source(), MacAddress(src));
        assert_eq!(frame.len(), 60);
    }

    #[test]
    fn runts_and_giants_are_refused() {
        assert_eq!(Frame::copy_from_slice(&[0; 13], Offload::NONE), Err(FrameError::Runt(13)));
        let giant = frame_bytes([1; 6], [2; 6], MAX_FRAME_LEN - ETHERNET_HEADER_LEN + 1);
        assert_eq!(
            Frame::copy_from_slice(&giant, Offload::NONE),
            Err(FrameError::Oversize(MAX_FRAME_LEN + 1))
        );
        let largest = frame_bytes([1; 6], [2; 6], MAX_FRAME_LEN - ETHERNET_HEADER_LEN);
        assert_eq!(Frame::copy_from_slice(&largest, Offload::NONE).unwrap().len(), MAX_FRAME_LEN);
    }

    #[test]
    fn a_buffer_goes_back_to_the_pool_when_its_last_frame_is_dropped() {
        let bytes = frame_bytes([1; 6], [2; 6], 100);
        // Warm the pool, so the buffer below is a reused one.
        drop(Frame::copy_from_slice(&bytes, Offload::NONE).unwrap());
        let (small_before, _) = pooled_buffers();
        let frame = Frame::copy_from_slice(&bytes, Offload::NONE).unwrap();
        let flooded = frame.clone();
        assert_eq!(pooled_buffers().0, small_before - 1);
        drop(frame);
        assert_eq!(pooled_buffers().0, small_before - 1, "a clone still holds the buffer");
        drop(flooded);
        assert_eq!(pooled_buffers().0, small_before);
    }

    #[test]
    fn frames_shared_from_a_buffer_do_not_change_when_it_is_written_again() {
        let mut buffer = FrameBuffer::large_without_headroom();
        buffer.extend_from_slice(&frame_bytes([1; 6], [2; 6], 10));
        buffer.extend_from_slice(&frame_bytes([3; 6], [4; 6], 10));
        let first = buffer.share(0..24, Offload::NONE).unwrap();
        let second = buffer.share(24..48, Offload::NONE).unwrap();
        buffer.advance(48);
        buffer.data_mut();
        buffer.extend_from_slice(&[0xee; 30]);
        assert_eq!(first.destination(), MacAddress([1; 6]));
        assert_eq!(second.source(), MacAddress([4; 6]));
        assert_eq!(buffer.data(), &[0xee; 30][..]);
    }

    /// Lent memory over a vector: guest address N is byte N.
    struct VecMemory(Vec<u8>);

    impl LentMemory for VecMemory {
        fn read(&self, address: u64, into: &mut [u8]) -> bool {
            let start = address as usize;
            match self.0.get(start..start + into.len()) {
                Some(bytes) => {
                    into.copy_from_slice(bytes);
                    true
                }
                None => false,
            }
        }

        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    }

    /// A frame whose first 20 bytes are in a buffer and whose next 30 and 50 bytes are
    /// lent from two places of `memory`, and those 100 bytes as they should read.
    fn lent_frame(memory: &Rc<VecMemory>) -> (Frame, Vec<u8>) {
        let head = frame_bytes([1; 6], [2; 6], 6);
        let mut tail = LentTail::new(memory.clone());
        for (address, len) in [(100u64, 30usize), (40, 50)] {
            let host = memory.0.as_ptr().wrapping_add(address as usize);
            assert!(tail.push(LentSegment { address, host, len }));
        }
        let mut expected = head.clone();
        expected.extend_from_slice(&memory.0[100..130]);
        expected.extend_from_slice(&memory.0[40..90]);
        let frame = Frame::with_lent_tail(FrameBuffer::copy_of(&head), Rc::new(tail), Offload::NONE).unwrap();
        (frame, expected)
    }

    fn memory() -> Rc<VecMemory> {
        Rc::new(VecMemory((0..=255).collect()))
    }

    #[test]
    fn a_lent_tail_is_read_in_parts_without_a_copy() {
        let memory = memory();
        let (frame, expected) = lent_frame(&memory);
        assert_eq!(frame.len(), 100);
        assert_eq!(frame.head(), &expected[..20]);
        assert_eq!(frame.destination(), MacAddress([1; 6]));
        let parts: Vec<FramePart<'_>> = frame.parts(15..60).collect();
        assert_eq!(parts.len(), 3);
        assert!(matches!(parts[0], FramePart::Bytes(bytes) if bytes == &expected[15..20]));
        assert!(matches!(parts[1], FramePart::Lent(LentSegment { address: 100, len: 30, .. })));
        let FramePart::Lent(last) = parts[2] else { panic!("a lent segment") };
        assert_eq!((last.address, last.len), (40, 10));
        assert_eq!(last.host, memory.0.as_ptr().wrapping_add(40));
        let skipping_head: Vec<FramePart<'_>> = frame.parts(55..100).collect();
        assert!(matches!(skipping_head[..], [FramePart::Lent(LentSegment { address: 45, len: 45, .. })]));
    }

    #[test]
    fn a_lent_frame_read_whole_is_copied_once_for_all_its_clones() {
        let memory = memory();
        let (frame, expected) = lent_frame(&memory);
        let flooded = frame.clone();
        assert!(frame.lent_elsewhere());
        assert_eq!(frame.as_bytes(), &expected[..]);
        assert!(!flooded.lent_elsewhere(), "the clone reads the copy now");
        assert!(
            matches!(flooded.parts(0..100).collect::<Vec<_>>()[..], [FramePart::Bytes(b)] if b == &expected[..])
        );
        assert_eq!(frame, flooded);
    }

    #[test]
    fn a_detached_frame_no_longer_needs_its_lender() {
        let memory = memory();
        let (frame, expected) = lent_frame(&memory);
        let queued = frame.clone();
        frame.detach();
        let tail = frame.into_lent_tail().expect("it had a tail");
        assert_eq!(Rc::strong_count(&tail), 2, "the queued frame holds it too");
        assert_eq!(queued.as_bytes(), &expected[..]);
        drop(queued);
        assert_eq!(Rc::strong_count(&tail), 1, "the lender has it back");
    }

    #[test]
    fn the_switch_reads_a_lent_frame_s_addresses_and_tag_without_copying_it() {
        let memory = memory();
        let (frame, _) = lent_frame(&memory);
        assert_eq!(frame.source(), MacAddress([2; 6]));
        assert_eq!(crate::vlan::tag_of(&frame), crate::vlan::Tag::Untagged);
        assert!(!crate::vlan::is_tagged(&frame));
        assert!(frame.lent_parts().is_some(), "nothing was copied");
    }

    #[test]
    fn a_lent_tail_holds_at_most_its_segments_and_a_frame_at_most_the_largest() {
        let memory = memory();
        let mut tail = LentTail::new(memory.clone());
        let segment = LentSegment { address: 0, host: memory.0.as_ptr(), len: 4096 };
        let pushed = (0..MAX_LENT_SEGMENTS + 1).filter(|_| tail.push(segment)).count();
        assert_eq!(pushed, MAX_LENT_SEGMENTS);
        let head = FrameBuffer::copy_of(&frame_bytes([1; 6], [2; 6], 0));
        assert_eq!(
            Frame::with_lent_tail(head, Rc::new(tail), Offload::NONE).err(),
            Some(FrameError::Oversize(ETHERNET_HEADER_LEN + MAX_LENT_SEGMENTS * 4096))
        );
    }

    #[test]
    fn headers_go_in_front_of_a_payload_without_moving_it() {
        let mut buffer = FrameBuffer::small();
        buffer.extend_from_slice(b"payload");
        buffer.prepend(ETHERNET_HEADER_LEN).copy_from_slice(&frame_bytes([5; 6], [6; 6], 0));
        let frame = buffer.freeze(Offload::NONE).unwrap();
        assert_eq!(frame.destination(), MacAddress([5; 6]));
        assert_eq!(&frame.as_bytes()[ETHERNET_HEADER_LEN..], b"payload");
    }
}
