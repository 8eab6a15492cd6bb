//! `--listen vhost-user:PATH`: one vhost-user socket, serving one VM at a time as one
//! switch port.
//!
//! QEMU connects, sends its requests ([`crate::device`] answers them), and kicks two
//! eventfds when it has filled or emptied a ring. All of it runs in vnet's one loop: the
//! control socket and both kick descriptors are sources of this endpoint, frames the
//! guest sends go to the switch as they are taken off its ring, and frames for the guest
//! go into its ring when the switch flushes the port ([`crate::rings`]). When QEMU goes
//! away the port closes and the socket waits for the next (or the same, reconnecting)
//! QEMU. A second QEMU on a socket that serves a VM is turned away.
//!
//! `--listen vhost-user:DIR/` makes sockets on demand instead: DIR always holds one free
//! socket, `vm-N.sock` with the highest N. Once a QEMU connects to it, vnet opens
//! `vm-(N+1).sock` for the next VM, and when that QEMU disconnects its socket is removed.
//!
//! This module knows the runtime's endpoint API and the switch's ports; nothing of the
//! gateway or of other transports.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use mio::net::UnixListener;
use mio::unix::SourceFd;
use mio::{Interest, Token};
use tracing::{info, warn};
use vhost::vhost_user::message::FrontendReq;
use vhost::vhost_user::message::MAX_MSG_SIZE;
use vhost::vhost_user::{BackendReqHandler, Error as ProtocolError, VhostUserBackendReqHandlerMut};
use vhost_user_backend::VringT;
use virtio_queue::QueueT;
use vm_memory::GuestAddressSpace;
use vnet_runtime::{sys, Context, Endpoint, Liveness, ReadOutcome};
use vnet_switch::{PortDropReason, PortId};
use vnet_transport::unix_path::{bind_error, BoundPath, SocketKind};
use vnet_transport::TransportError;
use vnet_wire::offload::{resolve, SegmentKind, VIRTIO_NET_HDR_LEN};
use vnet_wire::{Frame, FrameBuffer, Offload};

use crate::device::{Negotiated, NetDevice, RX_RING, TX_RING};
use crate::lending::{GuestLentMemory, Lending};
use crate::receiving::ReceiveLending;
use crate::rings::{self, check_ring_index, ChainFault, Delivery, Outbound, NET_HEADER_LEN};

/// Frames taken off the transmit ring per batch.
const FRAMES_PER_BATCH: usize = 64;
/// A vhost-user message header: request, flags, body size, each a u32.
const MESSAGE_HEADER_LEN: usize = 12;
/// The code of VHOST_USER_SET_VRING_ENABLE.
const SET_VRING_ENABLE: u32 = FrontendReq::SET_VRING_ENABLE as u32;

/// A vhost-user socket and the VM it serves, if one is connected.
pub struct VhostUserSocket {
    listener: UnixListener,
    path: BoundPath,
    vm: Option<Vm>,
    /// For a socket made in a `vhost-user:DIR/` directory: the directory and the number
    /// the next socket there gets.
    directory: Option<(PathBuf, Arc<AtomicU32>)>,
}

/// The name of socket `number` in a `vhost-user:DIR/` directory.
pub fn directory_socket_name(number: u32) -> String {
    format!("vm-{number}.sock")
}

impl VhostUserSocket {
    /// Binds the socket at `path`, replacing a stale one.
    pub fn bind(path: &Path) -> Result<Self, TransportError> {
        BoundPath::prepare(path, SocketKind::Stream)?;
        let listener = UnixListener::bind(path).map_err(|e| bind_error(path, e))?;
        Ok(Self { listener, path: BoundPath::new(path.to_owned()), vm: None, directory: None })
    }

    /// Makes `dir` (if missing) and its first free socket, `vm-0.sock`; each VM that
    /// connects to the free socket makes the next one.
    pub fn bind_directory(dir: &Path) -> Result<Self, TransportError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| TransportError::io(format!("cannot create directory {}", dir.display()), e))?;
        Self::bind_in(dir.to_owned(), Arc::new(AtomicU32::new(0)))
    }

    fn bind_in(dir: PathBuf, next: Arc<AtomicU32>) -> Result<Self, TransportError> {
        let number = next.fetch_add(1, Ordering::Relaxed);
        let mut socket = Self::bind(&dir.join(directory_socket_name(number)))?;
        socket.directory = Some((dir, next));
        Ok(socket)
    }

    /// In a directory, opens the next free socket once this one has a VM.
    fn open_next_in_directory(&self, cx: &mut Context<'_>) {
        let Some((dir, next)) = &self.directory else {
            return;
        };
        match Self::bind_in(dir.clone(), next.clone()) {
            Ok(socket) => cx.spawn(Box::new(socket)),
            Err(e) => warn!(dir = %dir.display(), error = %e, "cannot make the next vhost-user socket"),
        }
    }

    /// Where this socket listens, as `--listen` spells it.
    pub fn describe(&self) -> String {
        format!("vhost-user:{}", self.path.path().display())
    }

    fn accept(&mut self, cx: &mut Context<'_>) -> ReadOutcome {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadOutcome::Drained,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!(listen = %self.describe(), error = %e, "accept failed");
                    return ReadOutcome::Drained;
                }
            };
            cx.count("accepted");
            if self.vm.is_some() {
                warn!(listen = %self.describe(), "a second frontend connected to a socket that serves a VM; closing it");
                cx.count("vhost_user_busy");
                continue;
            }
            match Vm::start(stream, self.describe(), cx) {
                Ok(vm) => {
                    self.vm = Some(vm);
                    self.open_next_in_directory(cx);
                }
                Err(e) => warn!(listen = %self.describe(), error = %e, "cannot serve the frontend"),
            }
        }
    }

    fn disconnect(&mut self, cx: &mut Context<'_>) {
        if let Some(vm) = self.vm.take() {
            vm.close(cx);
        }
    }
}

impl Endpoint for VhostUserSocket {
    fn start(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        info!(listen = %self.describe(), "listening");
        cx.registry.register(&mut self.listener, cx.token, Interest::READABLE)
    }

    fn read_batch(&mut self, cx: &mut Context<'_>) -> ReadOutcome {
        if cx.ready == cx.token {
            return self.accept(cx);
        }
        let Some(vm) = self.vm.as_mut() else {
            return ReadOutcome::Drained;
        };
        match vm.on_ready(cx) {
            Ok(outcome) => outcome,
            Err(reason) => {
                info!(port = %vm.name, %reason, "frontend disconnected");
                self.disconnect(cx);
                if self.directory.is_some() {
                    ReadOutcome::Closed
                } else {
                    ReadOutcome::Drained
                }
            }
        }
    }

    fn on_writable(&mut self, _cx: &mut Context<'_>) -> Liveness {
        Liveness::Open
    }

    fn flush(&mut self, port: PortId, cx: &mut Context<'_>) -> Liveness {
        if let Some(vm) = self.vm.as_mut().filter(|vm| vm.port == port) {
            vm.deliver_queued(cx);
        }
        Liveness::Open
    }

    fn deadline(&self) -> Option<Instant> {
        self.vm.as_ref().and_then(|vm| vm.lending.due())
    }

    fn on_deadline(&mut self, cx: &mut Context<'_>) {
        if let Some(vm) = self.vm.as_mut() {
            vm.settle_lent(cx);
        }
    }

    fn close(&mut self, cx: &mut Context<'_>) {
        self.disconnect(cx);
    }
}

/// Why a VM's connection ended.
#[derive(Debug, thiserror::Error)]
enum Disconnect {
    #[error("the frontend closed the socket")]
    Closed,
    #[error("bad vhost-user request: {0}")]
    Protocol(vhost::vhost_user::Error),
    #[error("socket error: {0}")]
    Socket(io::Error),
    #[error("the guest's ring is corrupt: {0:?}")]
    Ring(ChainFault),
}

/// A kick descriptor as registered with the loop.
struct Kick {
    fd: RawFd,
    token: Token,
}

/// One connected QEMU: its vhost-user session, its device and its port.
struct Vm {
    name: String,
    session: BackendReqHandler<Mutex<NetDevice>>,
    device: Arc<Mutex<NetDevice>>,
    /// A second handle on the session's socket, to look at what waits without taking it.
    socket: UnixStream,
    socket_token: Token,
    kicks: [Option<Kick>; 2],
    port: PortId,
    /// The message being looked at: header and body.
    message: Box<[u8]>,
    /// The virtio-net header of the frame being taken off the transmit ring.
    header: [u8; NET_HEADER_LEN],
    /// The pooled buffer the next transmitted frame that cannot be lent is copied into.
    buffer: FrameBuffer,
    /// The transmit chains lent to frames.
    lending: Lending,
    /// The receive chains lent to frames on their way here.
    receiving: Rc<ReceiveLending>,
}

impl Vm {
    fn start(stream: mio::net::UnixStream, listen: String, cx: &mut Context<'_>) -> io::Result<Self> {
        let stream = UnixStream::from(std::os::fd::OwnedFd::from(stream));
        stream.set_nonblocking(true)?;
        let socket = stream.try_clone()?;
        let device = Arc::new(Mutex::new(NetDevice::new()));
        let session = BackendReqHandler::from_stream(stream, device.clone());
        let socket_token = cx.register_source(&mut SourceFd(&socket.as_raw_fd()), Interest::READABLE)?;
        let port = cx.add_port_taking_offloads(listen.clone(), true);
        let receiving = Rc::new(ReceiveLending::new(device.clone()));
        if let Some(switch_port) = cx.switch.port_mut(port) {
            switch_port.set_lender(receiving.clone());
        }
        Ok(Self {
            name: listen,
            session,
            device,
            socket,
            socket_token,
            kicks: [None, None],
            port,
            message: vec![0; MESSAGE_HEADER_LEN + MAX_MSG_SIZE].into_boxed_slice(),
            header: [0; NET_HEADER_LEN],
            buffer: FrameBuffer::large(),
            lending: Lending::default(),
            receiving,
        })
    }

    fn close(mut self, cx: &mut Context<'_>) {
        self.settle_lent(cx);
        cx.forget_source(self.socket_token);
        for kick in self.kicks.into_iter().flatten() {
            cx.forget_source(kick.token);
        }
        cx.remove_port(self.port);
    }

    fn device(&self) -> MutexGuard<'_, NetDevice> {
        self.device.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn on_ready(&mut self, cx: &mut Context<'_>) -> Result<ReadOutcome, Disconnect> {
        if cx.ready == self.socket_token {
            self.handle_requests(cx)?;
            return Ok(ReadOutcome::Drained);
        }
        let ring = self.kicks.iter().position(|kick| kick.as_ref().is_some_and(|k| k.token == cx.ready));
        match ring {
            Some(RX_RING) => {
                let _ = self.device().ring(RX_RING).read_kick();
                self.deliver_queued(cx);
                Ok(ReadOutcome::Drained)
            }
            Some(_) => {
                let _ = self.device().ring(TX_RING).read_kick();
                self.take_transmitted(cx)
            }
            None => Ok(ReadOutcome::Drained),
        }
    }

    /// Handles every complete request waiting on the socket.
    fn handle_requests(&mut self, cx: &mut Context<'_>) -> Result<(), Disconnect> {
        // A request may reset or move the rings: chains lent from them go back first.
        self.settle_lent(cx);
        while self.request_waiting()? {
            let negotiated = self.device().negotiated();
            match self.session.handle_request() {
                Ok(()) => {}
                Err(ProtocolError::InactiveFeature(_)) if self.peeked_request() == SET_VRING_ENABLE => {
                    self.enable_ring_early()
                }
                Err(e) => return Err(Disconnect::Protocol(e)),
            }
            let now_negotiated = self.device().negotiated();
            if now_negotiated != negotiated {
                info!(port = %self.name, features = ?now_negotiated, "guest driver agreed to features");
            }
            if self.device().take_kicks_changed() {
                // The rings stopped, started or were reset: chains lent from them are
                // no longer the guest's to give back.
                self.receiving.forget();
                self.register_kicks(cx).map_err(Disconnect::Socket)?;
                self.deliver_queued(cx);
            }
        }
        Ok(())
    }

    /// The code of the request last looked at.
    fn peeked_request(&self) -> u32 {
        u32::from_le_bytes([self.message[0], self.message[1], self.message[2], self.message[3]])
    }

    /// QEMU enables or disables rings as soon as vnet offers protocol features, before it
    /// acknowledges them; the `vhost` crate refuses that, so the request (still in
    /// `message`) is applied here.
    fn enable_ring_early(&mut self) {
        let field = |at: usize| {
            u32::from_le_bytes([
                self.message[at],
                self.message[at + 1],
                self.message[at + 2],
                self.message[at + 3],
            ])
        };
        let (index, enable) = (field(MESSAGE_HEADER_LEN), field(MESSAGE_HEADER_LEN + 4) == 1);
        let _ = self.device().set_vring_enable(index, enable);
    }

    /// Whether a whole request (header and body) waits on the socket, so that handling it
    /// cannot block the loop. A frontend that stops halfway stalls only itself.
    fn request_waiting(&mut self) -> Result<bool, Disconnect> {
        let peeked = self.peek(MESSAGE_HEADER_LEN)?;
        if peeked < MESSAGE_HEADER_LEN {
            return Ok(false);
        }
        let size = u32::from_le_bytes([self.message[8], self.message[9], self.message[10], self.message[11]]);
        let size = size as usize;
        if size > MAX_MSG_SIZE {
            return Ok(true);
        }
        Ok(self.peek(MESSAGE_HEADER_LEN + size)? == MESSAGE_HEADER_LEN + size)
    }

    fn peek(&mut self, len: usize) -> Result<usize, Disconnect> {
        match sys::peek(self.socket.as_fd(), &mut [IoSliceMut::new(&mut self.message[..len])]) {
            Ok(0) => Err(Disconnect::Closed),
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {
                Ok(0)
            }
            Err(e) => Err(Disconnect::Socket(e)),
        }
    }

    /// Registers the rings' kick descriptors anew after the frontend changed them.
    fn register_kicks(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        for (index, kick) in self.kicks.iter_mut().enumerate() {
            if let Some(old) = kick.take() {
                let _ = cx.registry.deregister(&mut SourceFd(&old.fd));
                cx.forget_source(old.token);
            }
            let fd = self.device.lock().ok().and_then(|device| {
                device.ring(index).get_ref().get_kick().as_ref().map(|kick| kick.as_raw_fd())
            });
            if let Some(fd) = fd {
                let token = cx.register_source(&mut SourceFd(&fd), Interest::READABLE)?;
                *kick = Some(Kick { fd, token });
            }
        }
        Ok(())
    }

    /// Takes up to a batch of frames off the transmit ring and hands them to the switch.
    /// A frame longer than its head leaves its payload lent in the guest's buffers; its
    /// chain is given back when the loop's turn settles ([`Vm::settle_lent`]).
    fn take_transmitted(&mut self, cx: &mut Context<'_>) -> Result<ReadOutcome, Disconnect> {
        let device = self.device.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !device.ring_usable(TX_RING) {
            return Ok(ReadOutcome::Drained);
        }
        let memory = device.memory().memory().into_inner();
        let mut ring = device.ring(TX_RING).get_mut();
        let mut outcome = ReadOutcome::More;
        let queue = ring.get_queue_mut();
        let _ = queue.disable_notification(&*memory);
        let mut taken = 0;
        let mut given_back = false;
        while taken < FRAMES_PER_BATCH {
            check_ring_index(queue, &*memory).map_err(Disconnect::Ring)?;
            let Some(chain) = queue.pop_descriptor_chain(&*memory) else {
                match queue.enable_notification(&*memory) {
                    Ok(true) => continue,
                    _ => {
                        outcome = ReadOutcome::Drained;
                        break;
                    }
                }
            };
            taken += 1;
            let index = chain.head_index();
            let mut tail = self.lending.tail_in(&memory);
            let mut head = FrameBuffer::small();
            let lent_tail = Rc::get_mut(&mut tail).expect("a fresh tail has one holder");
            let taken_frame = match rings::lend_transmitted(
                chain.clone(),
                &*memory,
                &mut self.header,
                &mut head,
                lent_tail,
            ) {
                Ok(len) if len > head.len() => offload_of(&self.header).and_then(|offload| {
                    let frame = Frame::with_lent_tail(head, tail, offload)
                        .map_err(|_| PortDropReason::BadDescriptor)?;
                    self.lending.lent(frame.clone(), index, cx.now);
                    Ok(frame)
                }),
                Ok(_) => {
                    self.lending.keep(tail);
                    offload_of(&self.header)
                        .and_then(|offload| head.freeze(offload).map_err(|_| PortDropReason::BadDescriptor))
                }
                Err(ChainFault::NotLendable) => {
                    self.lending.keep(tail);
                    copy_transmitted(chain, &*memory, &mut self.header, &mut self.buffer)
                }
                Err(_) => {
                    self.lending.keep(tail);
                    Err(PortDropReason::BadDescriptor)
                }
            };
            let lent = taken_frame.as_ref().is_ok_and(|frame| frame.len() > frame.head().len());
            if !lent {
                queue.add_used(&*memory, index, 0).map_err(|_| Disconnect::Ring(ChainFault::RingIndex))?;
                given_back = true;
            }
            match taken_frame {
                Ok(frame) => cx.switch.receive(self.port, Ok(frame), cx.now),
                Err(reason) => cx.switch.record_drop(self.port, reason),
            }
        }
        if given_back && ring.needs_notification().unwrap_or(true) {
            let _ = ring.signal_used_queue();
        }
        Ok(outcome)
    }

    /// Gives the guest back every transmit chain lent to a frame, once the switch and the
    /// gateway have had the frames; a frame still queued somewhere is copied first.
    fn settle_lent(&mut self, cx: &mut Context<'_>) {
        if self.lending.due().is_none() {
            return;
        }
        let device = self.device.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let memory = device.memory().memory();
        let usable = device.ring_usable(TX_RING);
        let mut ring = device.ring(TX_RING).get_mut();
        let queue = ring.get_queue_mut();
        let mut corrupt = false;
        let (settled, copied) = self.lending.settle(|index| {
            corrupt |= usable && queue.add_used(&*memory, index, 0).is_err();
        });
        cx.count_many("vhost_user_lent", settled);
        cx.count_many("vhost_user_lent_copied", copied);
        if usable && !corrupt && ring.needs_notification().unwrap_or(true) {
            let _ = ring.signal_used_queue();
        }
    }

    /// Puts the frames queued on the port into the receive ring while it has room.
    fn deliver_queued(&mut self, cx: &mut Context<'_>) {
        let device = self.device.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !device.ring_usable(RX_RING) {
            return;
        }
        let Some(port) = cx.switch.port_mut(self.port) else {
            return;
        };
        let negotiated = device.negotiated();
        let memory = device.memory().memory();
        let mut ring = device.ring(RX_RING).get_mut();
        let queue = ring.get_queue_mut();
        let used_before = queue.next_used();
        let mut retried = false;
        let mut in_place = 0;
        loop {
            let Some(frame) = port.queued().next() else {
                break;
            };
            if let Some(tail) = frame.tail().filter(|tail| tail.ticket() != 0) {
                // A frame whose payload was peeked into receive buffers: this guest's,
                // or, if it came here after all, another's, which it must not read.
                let delivered = self.receiving.take(tail).map(|chains| {
                    let mut header = [0; NET_HEADER_LEN];
                    header[..VIRTIO_NET_HDR_LEN]
                        .copy_from_slice(&frame.offload().to_virtio_header(frame.head()));
                    rings::deliver_reserved(queue, &*memory, header, frame.head(), tail.len(), &chains)
                });
                match delivered {
                    Some(Ok(())) => {
                        in_place += 1;
                        port.pop_sent()
                    }
                    Some(Err(_)) | None => port.pop_dropped(PortDropReason::BadDescriptor),
                };
                continue;
            }
            let result = if guest_takes(negotiated, frame.offload()) {
                deliver_one(queue, &*memory, frame, negotiated)
            } else {
                deliver_resolved(queue, &*memory, frame, negotiated)
            };
            match result {
                Ok(Delivery::Delivered) => {
                    port.pop_sent();
                }
                Ok(Delivery::NoRoom) => {
                    if retried || !rings::ask_for_buffers_beyond_posted(queue, &*memory) {
                        break;
                    }
                    retried = true;
                }
                Err(reason) => {
                    port.pop_dropped(reason);
                }
            }
        }
        let mut unclaimed = 0;
        self.receiving.unclaimed(|chains| {
            unclaimed += 1;
            let _ = rings::give_back_reserved(queue, &*memory, chains);
        });
        cx.count_many("vhost_user_received_in_place", in_place);
        cx.count_many("vhost_user_receive_unclaimed", unclaimed);
        if queue.next_used() != used_before && rings::needs_interrupt(queue, &*memory, used_before) {
            let _ = ring.signal_used_queue();
        }
    }
}

/// Copies a transmitted frame whose payload cannot be lent as it lies into `buffer`,
/// and its virtio-net header into `header`.
fn copy_transmitted<M: vm_memory::GuestMemory>(
    chain: impl Iterator<Item = virtio_queue::desc::split::Descriptor>,
    memory: &M,
    header: &mut [u8; NET_HEADER_LEN],
    buffer: &mut FrameBuffer,
) -> Result<Frame, PortDropReason> {
    let len = rings::read_transmitted(chain, memory, header, buffer.spare_mut())
        .map_err(|_| PortDropReason::BadDescriptor)?;
    let offload = offload_of(header)?;
    let mut full = std::mem::replace(buffer, FrameBuffer::large());
    full.commit(len);
    full.freeze(offload).map_err(|_| PortDropReason::BadDescriptor)
}

/// The offloads a transmitted frame's virtio-net header asks for.
fn offload_of(header: &[u8; NET_HEADER_LEN]) -> Result<Offload, PortDropReason> {
    let mut virtio_header = [0; VIRTIO_NET_HDR_LEN];
    virtio_header.copy_from_slice(&header[..VIRTIO_NET_HDR_LEN]);
    Offload::from_virtio_header(&virtio_header).map_err(|_| PortDropReason::BadOffload)
}

/// Whether the guest's driver agreed to take a frame with `offload` as it is.
fn guest_takes(negotiated: Negotiated, offload: Offload) -> bool {
    let segments = match offload.segmentation.map(|s| s.kind) {
        None => true,
        Some(SegmentKind::TcpV4) => negotiated.guest_tso4,
        Some(SegmentKind::TcpV6) => negotiated.guest_tso6,
    };
    segments && (offload.checksum.is_none() || negotiated.guest_checksum)
}

/// Puts `frame` into the receive ring as it is, offloads and all; a bad receive chain
/// costs it as a bad descriptor.
fn deliver_one<M: vm_memory::GuestMemory>(
    queue: &mut virtio_queue::Queue,
    memory: &M,
    frame: &Frame,
    negotiated: Negotiated,
) -> Result<Delivery, PortDropReason> {
    let mut header = [0; NET_HEADER_LEN];
    header[..VIRTIO_NET_HDR_LEN].copy_from_slice(&frame.offload().to_virtio_header(frame.as_bytes()));
    rings::deliver(queue, memory, header, outbound(frame), negotiated.mergeable_buffers)
        .map_err(|_| PortDropReason::BadDescriptor)
}

/// `frame` as a receive ring takes it: a frame another guest lent is copied from that
/// guest's memory straight into this one's.
fn outbound(frame: &Frame) -> Outbound<'_> {
    let lent = frame.lent_parts().and_then(|(head, segments, memory)| {
        GuestLentMemory::of(memory).map(|source| Outbound { bytes: head, lent: Some((segments, source)) })
    });
    lent.unwrap_or_else(|| Outbound::bytes(frame.as_bytes()))
}

/// Delivers a frame whose offloads the guest did not agree to, cut and checksummed in
/// software; pieces that find no room are lost, and offload state that does not fit
/// the frame costs it as a bad offload.
fn deliver_resolved<M: vm_memory::GuestMemory>(
    queue: &mut virtio_queue::Queue,
    memory: &M,
    frame: &Frame,
    negotiated: Negotiated,
) -> Result<Delivery, PortDropReason> {
    let mut result = Ok(Delivery::Delivered);
    let mut delivered = 0;
    let resolved = resolve(frame, |piece| {
        if result == Ok(Delivery::Delivered) {
            result = deliver_one(queue, memory, &piece, negotiated);
            delivered += usize::from(result == Ok(Delivery::Delivered));
        }
    });
    match (resolved, result) {
        (Err(_), _) => Err(PortDropReason::BadOffload),
        (Ok(()), Ok(Delivery::NoRoom)) if delivered > 0 => Ok(Delivery::Delivered),
        (Ok(()), result) => result,
    }
}
