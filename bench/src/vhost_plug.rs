//! The vhost-user plug: the bench's own vhost-user-net frontend. It does what QEMU and a
//! Linux guest's virtio-net driver do together, with a namespace's tap standing in for
//! the guest's network stack: it makes the guest's memory (a memfd shared with the
//! backend), lays out two split virtqueues and packet buffers in it, hands all of it to
//! the backend over the vhost-user socket as QEMU would (with rust-vmm's `vhost`
//! frontend), and then drives the rings as the driver would: receive buffers kept
//! posted (mergeable, 4 KiB each, as Linux sizes them), each received frame written to
//! the tap with one `writev`, each frame read from the tap straight into a transmit
//! buffer, published and kicked, and transmit buffers taken back from the used ring. The
//! tap carries the same 12-byte `virtio_net_hdr` the rings do (`IFF_VNET_HDR`), with the
//! checksum and TSO offloads the device agreed to, so offloads cross whole, as they
//! would from a guest.
//!
//! One thread, woken by `poll` on the tap and the two call eventfds; notifications are
//! suppressed with event indexes as Linux's driver does. Every index and length the
//! backend writes into the rings is checked before it is used. What the backend should
//! not do but a driver could survive (a frame's receive buffers published one by one, a
//! call that never came) is counted on stderr; `VHOST_PLUG_DEBUG=1` adds both rings'
//! indexes at each lost call.
//!
//! Nothing here knows which program serves the socket, nor anything of the bench's
//! scenarios.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{fence, AtomicU16, Ordering};

use anyhow::{bail, Context, Result};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MRG_RXBUF,
};
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The receive ring (the device writes frames for the guest into it).
const RX: usize = 0;
/// The transmit ring.
const TX: usize = 1;
/// Descriptors per ring: QEMU's default `rx_queue_size` and `tx_queue_size`.
const RING_SIZE: u16 = 256;
/// The `virtio_net_hdr` before every frame (virtio 1.0: with `num_buffers`).
const NET_HEADER_LEN: usize = 12;
/// One receive buffer, header included, unless asked otherwise: Linux's largest
/// mergeable buffer (a page).
pub const DEFAULT_RX_BUFFER: usize = 4096;
/// Room for one receive buffer: up to a whole 64 KiB frame and its header.
const RX_SLOT: usize = 68 * 1024;
/// One transmit buffer: the header and the largest frame the tap hands over (a 64 KiB
/// TSO segment with its headers), rounded up to whole pages.
const TX_BUFFER: usize = 68 * 1024;
/// The most receive buffers one frame may take: a 64 KiB frame in 4 KiB buffers, with
/// room to spare.
const MAX_MERGED: usize = 64;
/// Where each ring's three parts lie in guest memory: descriptor table, available ring
/// and used ring, each ring in a 64 KiB slot of its own.
const RING_SLOT: usize = 0x1_0000;
const AVAIL_OFFSET: usize = 0x4000;
const USED_OFFSET: usize = 0x5000;
/// Where the receive buffers begin, after both rings.
const RX_BUFFERS: usize = 2 * RING_SLOT;
/// Where the transmit buffers begin.
const TX_BUFFERS: usize = RX_BUFFERS + RING_SIZE as usize * RX_SLOT;
/// The guest's memory: everything above, in 64 MiB.
const MEMORY_SIZE: usize = 64 << 20;
const _: () = assert!(TX_BUFFERS + RING_SIZE as usize * TX_BUFFER <= MEMORY_SIZE);
const _: () = assert!(USED_OFFSET + 4 + 8 * RING_SIZE as usize + 2 <= RING_SLOT);
const _: () = assert!(AVAIL_OFFSET + 4 + 2 * RING_SIZE as usize + 2 <= USED_OFFSET);
/// How long `poll` sleeps before the plug looks at the rings anyway. Work found after
/// such a timeout means a notification was lost, which the plug reports.
const POLL_TIMEOUT_MS: u16 = 1000;

const fn bit(feature: u32) -> u64 {
    1 << feature
}

/// The features a Linux guest's virtio-net driver with QEMU's vhost-user-net asks for, of
/// those the plug can handle: virtio 1.0, mergeable receive buffers, event indexes, and
/// checksum and TCP segmentation offloads both ways.
const WANTED_FEATURES: u64 = bit(VIRTIO_F_VERSION_1)
    | bit(VIRTIO_NET_F_MRG_RXBUF)
    | bit(VIRTIO_RING_F_EVENT_IDX)
    | bit(VIRTIO_NET_F_CSUM)
    | bit(VIRTIO_NET_F_GUEST_CSUM)
    | bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_HOST_TSO6)
    | bit(VIRTIO_NET_F_GUEST_TSO4)
    | bit(VIRTIO_NET_F_GUEST_TSO6);

nix::ioctl_write_ptr_bad!(tun_set_vnet_hdr_size, libc::TUNSETVNETHDRSZ, libc::c_int);

/// Connects to the vhost-user socket `socket` as a frontend, creates tap `ifname`, and
/// moves frames between them until the backend goes away. Receive buffers are
/// `rx_buffer` bytes each, header included.
pub fn run(socket: &Path, ifname: &str, rx_buffer: usize) -> Result<()> {
    if !(NET_HEADER_LEN + 14..=RX_SLOT).contains(&rx_buffer) {
        bail!("receive buffers of {rx_buffer} bytes: the plug takes {} to {RX_SLOT}", NET_HEADER_LEN + 14);
    }
    let memory = GuestMemory::create(MEMORY_SIZE)?;
    let mut rings = [SplitRing::new(RX), SplitRing::new(TX)];
    let configs = rings.each_ref().map(|ring| ring.config(&memory));
    let stream =
        UnixStream::connect(socket).with_context(|| format!("connecting to {}", socket.display()))?;
    let watch = stream.try_clone()?;
    let mut rx_buffer = rx_buffer;
    let session = Session::start(Frontend::from_stream(stream, 2), &memory, &configs, |features| {
        // Without mergeable buffers each buffer must hold a whole frame, as Linux's "big
        // packets" do.
        if features & bit(VIRTIO_NET_F_MRG_RXBUF) == 0 {
            rx_buffer = RX_SLOT;
        }
        // As a driver does before it tells the device it is ready: every receive buffer
        // posted, so the backend has room from its first frame on.
        for id in 0..RING_SIZE {
            let address = RX_BUFFERS + usize::from(id) * RX_SLOT;
            let flags = VRING_DESC_F_WRITE as u16;
            write_descriptor(&memory, &rings[RX], id, address as u64, rx_buffer as u32, flags);
            push_available(&memory, &mut rings[RX], id);
        }
    })?;
    let tap = open_tap(ifname, tap_offloads(session.features))?;
    let mut plug = Plug {
        memory,
        rings,
        tap,
        watch,
        event_idx: session.features & bit(VIRTIO_RING_F_EVENT_IDX) != 0,
        mergeable: session.features & bit(VIRTIO_NET_F_MRG_RXBUF) != 0,
        rx_buffer,
        tx_free: (0..RING_SIZE).collect(),
        tap_drained: false,
        tx_held: [false; RING_SIZE as usize],
        partial_frames: Tally::new(
            "times the used ring held part of a mergeable frame (its buffers were not used together)",
        ),
        lost_calls: Tally::new(
            "poll timeouts with used buffers waiting: the backend used them without a call",
        ),
        empty_buffers: Tally::new(
            "receive buffers given back empty (taken for a frame that never came); dropped, as Linux's driver drops them",
        ),
        session,
    };
    // The backend may not have looked at the receive ring since it was enabled.
    plug.kick(RX, true)?;
    plug.relay()
}

/// The guest's memory: one memfd, mapped shared here and by the backend.
struct GuestMemory {
    file: File,
    base: *mut u8,
    size: usize,
}

impl GuestMemory {
    fn create(size: usize) -> Result<Self> {
        // SAFETY: the name is a NUL-terminated string; memfd_create returns a new
        // descriptor or -1.
        let fd = unsafe { libc::memfd_create(c"vnet-bench-guest".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("memfd_create");
        }
        // SAFETY: fd is a descriptor memfd_create just returned, owned by nothing else.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        file.set_len(size as u64).context("sizing the guest memory")?;
        // SAFETY: a new shared mapping of the whole memfd; the kernel picks the address,
        // so nothing else in this process is mapped there.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error()).context("mapping the guest memory");
        }
        Ok(Self { file, base: base.cast(), size })
    }

    /// The address of guest physical address `offset` in this process.
    fn at(&self, offset: usize, len: usize) -> *mut u8 {
        assert!(offset.checked_add(len).is_some_and(|end| end <= self.size), "outside guest memory");
        // SAFETY: offset + len lies within the mapping (checked above).
        unsafe { self.base.add(offset) }
    }

    /// The u16 at `offset`, which the backend may read or write at any time.
    fn u16_at(&self, offset: usize) -> &AtomicU16 {
        assert!(offset.is_multiple_of(2));
        // SAFETY: the pointer is within the mapping (checked by `at`), 2-aligned (the
        // mapping is page-aligned and the offset even), and valid as long as `self`
        // lives; every access to it from this process goes through this atomic.
        unsafe { AtomicU16::from_ptr(self.at(offset, 2).cast()) }
    }

    /// The region as the vhost-user memory table gives it: guest physical address 0,
    /// at this process's own mapping address.
    fn region(&self) -> VhostUserMemoryRegionInfo {
        VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: self.size as u64,
            userspace_addr: self.base as u64,
            mmap_offset: 0,
            mmap_handle: self.file.as_raw_fd(),
        }
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: base and size are the mapping made in `create`; nothing borrows it
        // once the memory is dropped (every user borrows `self`).
        unsafe { libc::munmap(self.base.cast(), self.size) };
    }
}

/// One split virtqueue as its driver sees it: where its parts lie, and the driver's
/// own indexes.
struct SplitRing {
    descriptors: usize,
    available: usize,
    used: usize,
    /// The available index as last published.
    next_available: u16,
    /// The available index when the device was last kicked (or chose not to be).
    kicked_at: u16,
    /// The next used entry to look at.
    next_used: u16,
}

impl SplitRing {
    /// Ring `index`; a fresh memfd is zeroed, so its flags, indexes and event fields
    /// start at 0.
    fn new(index: usize) -> Self {
        let base = index * RING_SLOT;
        Self {
            descriptors: base,
            available: base + AVAIL_OFFSET,
            used: base + USED_OFFSET,
            next_available: 0,
            kicked_at: 0,
            next_used: 0,
        }
    }

    fn config(&self, memory: &GuestMemory) -> VringConfigData {
        let address = |offset| memory.at(offset, 1) as u64;
        VringConfigData {
            queue_max_size: RING_SIZE,
            queue_size: RING_SIZE,
            flags: 0,
            desc_table_addr: address(self.descriptors),
            used_ring_addr: address(self.used),
            avail_ring_addr: address(self.available),
            log_addr: None,
        }
    }
}

/// The ring operations, on `Plug` since they need the memory and a ring at once.
impl Plug {
    /// Looks at the next used entry of ring `index` without taking it.
    fn peek_used(&self, index: usize, ahead: u16) -> Option<(u16, usize)> {
        let ring = &self.rings[index];
        let used_idx = self.memory.u16_at(ring.used + 2).load(Ordering::Acquire);
        if used_idx.wrapping_sub(ring.next_used) <= ahead {
            return None;
        }
        let slot = usize::from(ring.next_used.wrapping_add(ahead) % RING_SIZE);
        let entry = self.memory.at(ring.used + 4 + 8 * slot, 8);
        // SAFETY: `entry` is 8 bytes within the mapping, 4-aligned; the backend wrote it
        // before it published the used index read above (Acquire).
        let [id, len] = unsafe { std::ptr::read_volatile(entry.cast::<[u32; 2]>()) };
        Some((u16::try_from(id).unwrap_or(u16::MAX), len as usize))
    }

    /// Used entries of ring `index` not yet taken.
    fn used_pending(&self, index: usize) -> u16 {
        let ring = &self.rings[index];
        self.memory.u16_at(ring.used + 2).load(Ordering::Acquire).wrapping_sub(ring.next_used)
    }

    /// Asks for a call when the used index of ring `index` passes `event` (with event
    /// indexes), or for calls at all (without), or for none (`event` None). Followed by
    /// a full barrier, so that a used index read after it is no older than the request.
    fn request_call(&self, index: usize, event: Option<u16>) {
        let ring = &self.rings[index];
        if self.event_idx {
            // No call wanted: an event index just behind the driver is never crossed
            // before the driver looks again.
            let event = event.unwrap_or(ring.next_used.wrapping_sub(1));
            let used_event = ring.available + 4 + 2 * usize::from(RING_SIZE);
            self.memory.u16_at(used_event).store(event, Ordering::Relaxed);
        } else {
            let flags = if event.is_some() { 0 } else { VRING_AVAIL_F_NO_INTERRUPT as u16 };
            self.memory.u16_at(ring.available).store(flags, Ordering::Relaxed);
        }
        fence(Ordering::SeqCst);
    }

    /// Kicks ring `index` if the device asked to be told of what was published since the
    /// last kick (or `always`).
    fn kick(&mut self, index: usize, always: bool) -> Result<()> {
        // The available index is published before the device's wish is read.
        fence(Ordering::SeqCst);
        let ring = &self.rings[index];
        let (new, old) = (ring.next_available, ring.kicked_at);
        if new == old && !always {
            return Ok(());
        }
        let wanted = if self.event_idx {
            let avail_event = self.memory.u16_at(ring.used + 4 + 8 * usize::from(RING_SIZE));
            let event = avail_event.load(Ordering::Relaxed);
            need_event(event, new, old)
        } else {
            self.memory.u16_at(ring.used).load(Ordering::Relaxed) & VRING_USED_F_NO_NOTIFY as u16 == 0
        };
        self.rings[index].kicked_at = new;
        if wanted || always {
            self.session.kicks[index].write(1).context("kicking the backend")?;
        }
        Ok(())
    }
}

/// The vhost-user session with the backend, and the eventfds it was given.
struct Session {
    _frontend: Frontend,
    features: u64,
    kicks: [EventFd; 2],
    calls: [EventFd; 2],
}

impl Session {
    /// QEMU's sequence: owner, features and protocol features, the memory table, then
    /// each ring's size, base, addresses, kick and call descriptors, and enabling it.
    /// `driver_ready` runs once the features are agreed, before the rings start: where
    /// the guest's driver fills its receive ring.
    fn start(
        mut frontend: Frontend,
        memory: &GuestMemory,
        rings: &[VringConfigData; 2],
        driver_ready: impl FnOnce(u64),
    ) -> Result<Self> {
        frontend.set_owner().context("SET_OWNER")?;
        let offered = frontend.get_features().context("GET_FEATURES")?;
        let protocol = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let mut reply_ack = false;
        if offered & protocol != 0 {
            let offered = frontend.get_protocol_features().context("GET_PROTOCOL_FEATURES")?;
            let wanted = VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::RESET_DEVICE;
            let acked = offered & wanted;
            frontend.set_protocol_features(acked).context("SET_PROTOCOL_FEATURES")?;
            reply_ack = acked.contains(VhostUserProtocolFeatures::REPLY_ACK);
        }
        let required = bit(VIRTIO_F_VERSION_1);
        if offered & required != required {
            bail!("the backend does not offer virtio 1.0 (features {offered:#x})");
        }
        let features = offered & (WANTED_FEATURES | protocol);
        frontend.set_features(features).context("SET_FEATURES")?;
        driver_ready(features);
        // QEMU asks for an acknowledgement of the memory table where it can.
        if reply_ack {
            frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        frontend.set_mem_table(&[memory.region()]).context("SET_MEM_TABLE")?;
        frontend.set_hdr_flags(VhostUserHeaderFlag::empty());
        let eventfd = || EventFd::new(EFD_NONBLOCK).context("an eventfd");
        let kicks = [eventfd()?, eventfd()?];
        let calls = [eventfd()?, eventfd()?];
        for (index, ring) in rings.iter().enumerate() {
            frontend.set_vring_num(index, RING_SIZE).context("SET_VRING_NUM")?;
            frontend.set_vring_base(index, 0).context("SET_VRING_BASE")?;
            frontend.set_vring_addr(index, ring).context("SET_VRING_ADDR")?;
            frontend.set_vring_kick(index, &kicks[index]).context("SET_VRING_KICK")?;
            frontend.set_vring_call(index, &calls[index]).context("SET_VRING_CALL")?;
        }
        if features & protocol != 0 {
            for index in [RX, TX] {
                frontend.set_vring_enable(index, true).context("SET_VRING_ENABLE")?;
            }
        }
        Ok(Self { _frontend: frontend, features, kicks, calls })
    }
}

/// The plug at work: guest memory, both rings, the tap and the session.
struct Plug {
    memory: GuestMemory,
    rings: [SplitRing; 2],
    tap: File,
    /// The session's socket, watched for the backend going away.
    watch: UnixStream,
    session: Session,
    event_idx: bool,
    mergeable: bool,
    /// The length of each receive buffer.
    rx_buffer: usize,
    /// Transmit descriptors (each with its own buffer) not in the ring.
    tx_free: Vec<u16>,
    /// Whether the last read found the tap empty.
    tap_drained: bool,
    /// Which transmit descriptors the backend holds.
    tx_held: [bool; RING_SIZE as usize],
    partial_frames: Tally,
    empty_buffers: Tally,
    lost_calls: Tally,
}

impl Plug {
    fn relay(&mut self) -> Result<()> {
        loop {
            self.receive()?;
            self.transmit()?;
            if self.arm() {
                continue;
            }
            let wait_for_tap = !self.tx_free.is_empty();
            let (tap, watch) = (self.tap.as_fd(), self.watch.as_fd());
            // SAFETY: the call eventfds live in `self.session` for as long as these
            // borrows (this iteration of the loop).
            let [rx_call, tx_call] =
                self.session.calls.each_ref().map(|call| unsafe { BorrowedFd::borrow_raw(call.as_raw_fd()) });
            let mut fds = [
                PollFd::new(rx_call, PollFlags::POLLIN),
                PollFd::new(tx_call, PollFlags::POLLIN),
                PollFd::new(watch, PollFlags::POLLIN),
                PollFd::new(tap, if wait_for_tap { PollFlags::POLLIN } else { PollFlags::empty() }),
            ];
            let ready = match nix::poll::poll(&mut fds, PollTimeout::from(POLL_TIMEOUT_MS)) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e).context("poll"),
            };
            if ready == 0 {
                // Nothing woke the plug. Used buffers it asked to be called for (all
                // receive buffers; transmit buffers once it ran out) mean a call was lost.
                let rx_waiting = self.used_pending(RX) > 0;
                let tx_waiting = self.tx_free.is_empty() && self.used_pending(TX) > 0;
                if rx_waiting || tx_waiting {
                    self.lost_calls.add();
                    if std::env::var_os("VHOST_PLUG_DEBUG").is_some() {
                        self.dump();
                    }
                }
            }
            if fds[2].any().unwrap_or(false) {
                // The backend sends nothing unasked once the rings run: it closed.
                return Ok(());
            }
            if fds[3].any().unwrap_or(false) {
                self.tap_drained = false;
            }
            for call in &self.session.calls {
                let _ = call.read();
            }
        }
    }

    fn dump(&self) {
        for index in [RX, TX] {
            let ring = &self.rings[index];
            let m = &self.memory;
            eprintln!(
                "ring {index}: used idx {} next_used {} avail idx {} next_available {} kicked_at {} avail_event {} used_event {} tx_free {} drained {}",
                m.u16_at(ring.used + 2).load(Ordering::SeqCst),
                ring.next_used,
                m.u16_at(ring.available + 2).load(Ordering::SeqCst),
                ring.next_available,
                ring.kicked_at,
                m.u16_at(ring.used + 4 + 8 * usize::from(RING_SIZE)).load(Ordering::SeqCst),
                m.u16_at(ring.available + 4 + 2 * usize::from(RING_SIZE)).load(Ordering::SeqCst),
                self.tx_free.len(),
                self.tap_drained,
            );
        }
    }

    /// Asks for the notifications the plug needs before it sleeps, and says whether work
    /// arrived meanwhile (so it must not sleep).
    fn arm(&mut self) -> bool {
        let next_used = self.rings[RX].next_used;
        self.request_call(RX, Some(next_used));
        let rx_waiting = self.rx_frame_waiting();
        let tx_waiting = if self.tx_free.is_empty() {
            // Out of transmit buffers: a call when three quarters of them are back, as
            // Linux's driver asks when its queue stops.
            let in_flight = self.rings[TX].next_available.wrapping_sub(self.rings[TX].next_used);
            let event = self.rings[TX].next_used.wrapping_add(in_flight * 3 / 4);
            self.request_call(TX, Some(event));
            self.used_pending(TX) > 0
        } else {
            self.request_call(TX, None);
            false
        };
        rx_waiting || tx_waiting || (!self.tap_drained && !self.tx_free.is_empty())
    }

    /// Whether the receive ring holds a whole frame (or something the plug must refuse).
    fn rx_frame_waiting(&self) -> bool {
        let Some((id, len)) = self.peek_used(RX, 0) else { return false };
        let Ok(first) = self.rx_buffer(id, len) else { return true };
        if !self.mergeable || len < NET_HEADER_LEN {
            return true;
        }
        // SAFETY: `first` is a buffer of at least NET_HEADER_LEN bytes that the backend
        // handed back; nothing else writes it now.
        let header = unsafe { std::ptr::read_volatile(first.add(10).cast::<[u8; 2]>()) };
        usize::from(self.used_pending(RX)) >= usize::from(u16::from_le_bytes(header))
    }

    /// Writes every complete frame in the receive ring to the tap and posts its buffers
    /// again.
    fn receive(&mut self) -> Result<()> {
        let mut worked = false;
        let mut iov = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; MAX_MERGED];
        let mut ids = [0u16; MAX_MERGED];
        while let Some((id, len)) = self.peek_used(RX, 0) {
            let first = self.rx_buffer(id, len).context("the receive ring")?;
            if len < NET_HEADER_LEN {
                self.empty_buffers.add();
                let ring = &mut self.rings[RX];
                ring.next_used = ring.next_used.wrapping_add(1);
                self.push_available(RX, id);
                worked = true;
                continue;
            }
            let count = if self.mergeable {
                // SAFETY: `first` is a buffer of at least NET_HEADER_LEN bytes (checked by
                // rx_buffer) that the backend handed back; nothing else writes it now.
                let header = unsafe { std::ptr::read_volatile(first.add(10).cast::<[u8; 2]>()) };
                usize::from(u16::from_le_bytes(header))
            } else {
                1
            };
            if count == 0 || count > MAX_MERGED {
                bail!("the backend says a frame spans {count} receive buffers");
            }
            if usize::from(self.used_pending(RX)) < count {
                // The backend published the first buffers of a frame before the rest
                // (virtio 1.0 5.1.6.4.2 says it must not). Linux's driver would drop the
                // frame and misread the rest; the plug waits for them instead, and counts.
                self.partial_frames.add();
                break;
            }
            let mut total = 0;
            for (n, slot) in iov.iter_mut().enumerate().take(count) {
                let (id, len) = self.peek_used(RX, n as u16).context("a used entry vanished")?;
                let buffer = self.rx_buffer(id, len).context("the receive ring")?;
                *slot = libc::iovec { iov_base: buffer.cast(), iov_len: len };
                ids[n] = id;
                total += len;
            }
            if total < NET_HEADER_LEN + 14 {
                bail!("the backend used {total} bytes for a frame");
            }
            // One writev per frame; what the tap does not take is lost, as a guest's
            // stack may drop a frame, so the result is not looked at.
            // SAFETY: each iovec points at a receive buffer of guest memory the backend
            // handed back, no longer than the buffer; the kernel only reads them.
            unsafe { libc::writev(self.tap.as_raw_fd(), iov.as_ptr(), count as libc::c_int) };
            let ring = &mut self.rings[RX];
            ring.next_used = ring.next_used.wrapping_add(count as u16);
            for &id in &ids[..count] {
                self.push_available(RX, id);
            }
            worked = true;
        }
        if worked {
            self.kick(RX, false)?;
        }
        Ok(())
    }

    /// The receive buffer of descriptor `id`, checked to hold `len` bytes.
    fn rx_buffer(&self, id: u16, len: usize) -> Result<*mut u8> {
        if id >= RING_SIZE || len > self.rx_buffer {
            bail!("the backend used descriptor {id} for {len} bytes");
        }
        Ok(self.memory.at(RX_BUFFERS + usize::from(id) * RX_SLOT, self.rx_buffer))
    }

    /// Takes back used transmit buffers, then reads frames from the tap into free ones
    /// and publishes them.
    fn transmit(&mut self) -> Result<()> {
        while let Some((id, _)) = self.peek_used(TX, 0) {
            if !self.tx_held.get(usize::from(id)).is_some_and(|held| *held) {
                bail!("the backend gave back transmit descriptor {id}, which it did not hold");
            }
            self.tx_held[usize::from(id)] = false;
            self.rings[TX].next_used = self.rings[TX].next_used.wrapping_add(1);
            self.tx_free.push(id);
        }
        while !self.tap_drained {
            let Some(id) = self.tx_free.pop() else { break };
            let offset = TX_BUFFERS + usize::from(id) * TX_BUFFER;
            let buffer = self.memory.at(offset, TX_BUFFER);
            // SAFETY: `buffer` is TX_BUFFER bytes of guest memory that only this plug
            // uses while the descriptor is free.
            let read = unsafe { libc::read(self.tap.as_raw_fd(), buffer.cast(), TX_BUFFER) };
            if read < 0 {
                self.tx_free.push(id);
                let error = io::Error::last_os_error();
                match error.kind() {
                    io::ErrorKind::WouldBlock => self.tap_drained = true,
                    io::ErrorKind::Interrupted => continue,
                    _ => return Err(error).context("reading the tap"),
                }
                break;
            }
            let len = read as usize;
            if len < NET_HEADER_LEN {
                self.tx_free.push(id);
                continue;
            }
            // The tap leaves num_buffers alone; a driver sets it to zero on transmit.
            // SAFETY: within the buffer read into above, which the plug still owns.
            unsafe { std::ptr::write_volatile(buffer.add(10).cast::<[u8; 2]>(), [0, 0]) };
            self.write_descriptor(TX, id, offset as u64, len as u32, 0);
            self.tx_held[usize::from(id)] = true;
            self.push_available(TX, id);
            self.kick(TX, false)?;
        }
        Ok(())
    }
}

impl Plug {
    fn write_descriptor(&self, index: usize, id: u16, address: u64, len: u32, flags: u16) {
        write_descriptor(&self.memory, &self.rings[index], id, address, len, flags);
    }

    fn push_available(&mut self, index: usize, id: u16) {
        push_available(&self.memory, &mut self.rings[index], id);
    }
}

/// Whether moving an index from `old` to `new` passes `event` (virtio's
/// `vring_need_event`): the other side asked to be told once the index passes `event`.
fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// A count of something the backend should not do, reported on stderr when it reaches 1,
/// 10, 100, ...
struct Tally {
    what: &'static str,
    count: u64,
    next_report: u64,
}

impl Tally {
    fn new(what: &'static str) -> Self {
        Self { what, count: 0, next_report: 1 }
    }

    fn add(&mut self) {
        self.count += 1;
        if self.count == self.next_report {
            eprintln!("vhost-plug: {} {}", self.count, self.what);
            self.next_report *= 10;
        }
    }
}

/// Writes descriptor `id` of `ring`: one buffer, no chain.
fn write_descriptor(memory: &GuestMemory, ring: &SplitRing, id: u16, address: u64, len: u32, flags: u16) {
    assert!(id < RING_SIZE);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&address.to_le_bytes());
    bytes[8..12].copy_from_slice(&len.to_le_bytes());
    bytes[12..14].copy_from_slice(&flags.to_le_bytes());
    let at = memory.at(ring.descriptors + 16 * usize::from(id), 16);
    // SAFETY: 16 bytes within the mapping; the descriptor is not in the available ring,
    // so the backend does not read it now.
    unsafe { std::ptr::write_volatile(at.cast::<[u8; 16]>(), bytes) };
}

/// Puts descriptor `id` in the available ring of `ring` and publishes the new index.
fn push_available(memory: &GuestMemory, ring: &mut SplitRing, id: u16) {
    let slot = usize::from(ring.next_available % RING_SIZE);
    memory.u16_at(ring.available + 4 + 2 * slot).store(id, Ordering::Relaxed);
    ring.next_available = ring.next_available.wrapping_add(1);
    // Release: the descriptor and the slot are written before the index that shows them.
    memory.u16_at(ring.available + 2).store(ring.next_available, Ordering::Release);
}

/// The offloads the tap may hand the plug (`TUNSETOFFLOAD`): those the device takes, as
/// a guest's driver gives its network stack the offloads the device agreed to. Frames
/// the plug writes to the tap may carry any offload.
fn tap_offloads(features: u64) -> libc::c_uint {
    let has = |feature| features & bit(feature) != 0;
    let mut offloads = 0;
    if has(VIRTIO_NET_F_CSUM) {
        offloads |= libc::TUN_F_CSUM;
        if has(VIRTIO_NET_F_HOST_TSO4) {
            offloads |= libc::TUN_F_TSO4;
        }
        if has(VIRTIO_NET_F_HOST_TSO6) {
            offloads |= libc::TUN_F_TSO6;
        }
    }
    offloads
}

/// Opens a new tap device called `ifname` whose frames carry a 12-byte virtio-net
/// header, with `offloads` on, non-blocking.
fn open_tap(ifname: &str, offloads: libc::c_uint) -> Result<File> {
    let tun = crate::plug::create_tap(ifname, libc::IFF_VNET_HDR)?;
    let header_len = NET_HEADER_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which points at `header_len`.
    unsafe { tun_set_vnet_hdr_size(tun.as_raw_fd(), &header_len) }.context("TUNSETVNETHDRSZ")?;
    // SAFETY: TUNSETOFFLOAD takes its flags by value, as an unsigned long.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETOFFLOAD, libc::c_ulong::from(offloads)) } < 0 {
        return Err(io::Error::last_os_error()).context("TUNSETOFFLOAD");
    }
    let flags = nix::fcntl::fcntl(tun.as_raw_fd(), nix::fcntl::F_GETFL).context("F_GETFL")?;
    let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(tun.as_raw_fd(), nix::fcntl::F_SETFL(flags)).context("F_SETFL")?;
    Ok(tun)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_index_is_passed_once_and_across_the_wrap() {
        assert!(need_event(5, 6, 5));
        assert!(need_event(5, 10, 0));
        assert!(!need_event(5, 5, 0), "index 5 not yet published");
        assert!(!need_event(5, 10, 6), "passed before the last kick");
        assert!(need_event(u16::MAX, 2, 65530));
        assert!(!need_event(4, 10, 10), "nothing new");
    }

    #[test]
    fn an_event_index_just_behind_the_driver_asks_for_nothing() {
        let next_used = 100u16;
        for published in 1..=RING_SIZE {
            assert!(!need_event(next_used.wrapping_sub(1), next_used.wrapping_add(published), next_used));
        }
    }

    #[test]
    fn the_tap_hands_over_only_offloads_the_device_took() {
        let all = bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_HOST_TSO4) | bit(VIRTIO_NET_F_HOST_TSO6);
        assert_eq!(tap_offloads(all), libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6);
        assert_eq!(tap_offloads(bit(VIRTIO_NET_F_HOST_TSO4)), 0, "no segmentation without checksums");
        assert_eq!(tap_offloads(bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_GUEST_TSO4)), 0);
    }

    #[test]
    fn descriptors_and_the_available_ring_land_where_the_device_reads_them() {
        let memory = GuestMemory::create(MEMORY_SIZE).unwrap();
        let mut ring = SplitRing::new(TX);
        write_descriptor(&memory, &ring, 3, 0x1234_5678, 1500, 0);
        push_available(&memory, &mut ring, 3);
        let at = |offset: usize, len: usize| {
            let mut bytes = vec![0u8; len];
            // SAFETY: `len` bytes within the mapping, read while nothing writes them.
            unsafe { std::ptr::copy_nonoverlapping(memory.at(offset, len), bytes.as_mut_ptr(), len) };
            bytes
        };
        let descriptor = at(RING_SLOT + 16 * 3, 16);
        assert_eq!(descriptor[..8], 0x1234_5678u64.to_le_bytes());
        assert_eq!(descriptor[8..12], 1500u32.to_le_bytes());
        assert_eq!(at(RING_SLOT + AVAIL_OFFSET + 2, 4), [1, 0, 3, 0], "index 1, slot 0 holds descriptor 3");
        assert_eq!(ring.config(&memory).desc_table_addr, memory.at(RING_SLOT, 1) as u64);
    }
}
