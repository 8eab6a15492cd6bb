//! A tap device as a switch port: one frame per `read` and per `write` on its descriptor,
//! each behind a `virtio_net_hdr`.
//!
//! The device is created in another network namespace ([`crate::netns`]), or is a tap of
//! the host's own ([`open_host_tap`]), always with that header on (IFF_VNET_HDR). Its checksum and TCP segmentation
//! offloads are turned on here, so the kernel behind it hands over and takes 64 KiB TCP
//! segments with partial checksums, and the header's meaning travels with each frame as
//! its [`Offload`]. This module only relays frames between the descriptor and the port.

use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use mio::unix::SourceFd;
use mio::Interest;
use tracing::{debug, info, warn};
use vnet_switch::{PortDropReason, PortId};
use vnet_wire::frame::{HEADROOM, SMALL_BUFFER};
use vnet_wire::offload::VIRTIO_NET_HDR_LEN;
use vnet_wire::{Frame, FrameBuffer, Offload};

use crate::TransportError;
use vnet_runtime::sys;
use vnet_runtime::{Context, Endpoint, Liveness, ReadOutcome};

/// Opens the host's tap `name` (`--attach tap:NAME`), creating it if absent, and brings
/// it up where vnet may.
pub fn open_host_tap(name: &str) -> Result<OwnedFd, TransportError> {
    crate::netns::validate_ifname(name).map_err(TransportError::Namespace)?;
    let tap = sys::open_tun_device().map_err(crate::netns::tun_device_error)?;
    sys::open_or_create_tap(&tap, name).map_err(|e| match e.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => TransportError::TapPermission(name.to_owned()),
        Some(libc::EBUSY) => TransportError::io(format!("tap {name} is in use by another process"), e),
        Some(libc::EINVAL) => TransportError::io(
            format!("{name} exists and is not a tap (or has other flags); choose another name"),
            e,
        ),
        _ => TransportError::io(format!("cannot open tap {name}"), e),
    })?;
    if let Err(e) = sys::set_link_up(name) {
        debug!(tap = name, error = %e, "cannot bring the tap up; its owner must");
    }
    Ok(tap)
}

/// Frames read per batch.
const FRAMES_PER_BATCH: usize = 32;
/// Frames up to this long are copied into a small buffer.
const SMALL_FRAME: usize = SMALL_BUFFER - HEADROOM;

/// A tap device's descriptor, relayed to one port.
pub struct TapPort {
    device: File,
    name: String,
    port: Option<PortId>,
    /// The virtio-net header of the frame being read.
    header: [u8; VIRTIO_NET_HDR_LEN],
    /// The pooled buffer the next frame is read into. A large frame leaves with it (and
    /// a fresh one takes its place); a small one is copied into a small buffer, so a
    /// queued small frame never holds a large buffer.
    buffer: FrameBuffer,
}

impl TapPort {
    /// Relays the non-blocking tap descriptor `device` (created with IFF_VNET_HDR);
    /// `name` says what it is for logs.
    pub fn new(device: OwnedFd, name: String) -> Self {
        if let Err(e) = sys::enable_tap_offloads(device.as_fd()) {
            warn!(port = %name, error = %e, "tap offloads unavailable; 64 KiB segments will not cross");
        }
        Self {
            device: File::from(device),
            name,
            port: None,
            header: [0; VIRTIO_NET_HDR_LEN],
            buffer: FrameBuffer::large(),
        }
    }
}

impl TapPort {
    /// Reads the next frame and its header; the frame's bytes stay in the buffer's
    /// free room.
    fn read(&mut self) -> io::Result<usize> {
        let mut slices = [IoSliceMut::new(&mut self.header), IoSliceMut::new(self.buffer.spare_mut())];
        (&self.device).read_vectored(&mut slices)
    }

    /// Hands the `len` bytes just read (header and frame) to the switch.
    fn receive(&mut self, port: PortId, len: usize, cx: &mut Context<'_>) {
        let Some(frame_len) = len.checked_sub(VIRTIO_NET_HDR_LEN) else {
            return cx.switch.record_drop(port, PortDropReason::Runt);
        };
        let Ok(offload) = Offload::from_virtio_header(&self.header) else {
            return cx.switch.record_drop(port, PortDropReason::BadOffload);
        };
        let frame = if frame_len <= SMALL_FRAME {
            Frame::copy_from_slice(&self.buffer.spare_mut()[..frame_len], offload)
        } else {
            let mut full = std::mem::replace(&mut self.buffer, FrameBuffer::large());
            full.commit(frame_len);
            full.freeze(offload)
        };
        cx.switch.receive(port, frame, cx.now);
    }
}

impl Endpoint for TapPort {
    fn start(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        cx.registry.register(
            &mut SourceFd(&self.device.as_raw_fd()),
            cx.token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.port = Some(cx.add_port_taking_offloads(self.name.clone(), true));
        Ok(())
    }

    fn read_batch(&mut self, cx: &mut Context<'_>) -> ReadOutcome {
        let Some(port) = self.port else {
            return ReadOutcome::Closed;
        };
        for _ in 0..FRAMES_PER_BATCH {
            match self.read() {
                Ok(0) => return ReadOutcome::Closed,
                Ok(len) => self.receive(port, len, cx),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadOutcome::Drained,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    info!(port = %self.name, error = %e, "tap read failed; closing");
                    return ReadOutcome::Closed;
                }
            }
        }
        ReadOutcome::More
    }

    fn on_writable(&mut self, cx: &mut Context<'_>) -> Liveness {
        match self.port {
            Some(port) => self.flush(port, cx),
            None => Liveness::Open,
        }
    }

    fn flush(&mut self, port: PortId, cx: &mut Context<'_>) -> Liveness {
        let Some(port) = cx.switch.port_mut(port) else {
            return Liveness::Open;
        };
        loop {
            let Some(frame) = port.queued().next() else {
                break;
            };
            let header = frame.offload().to_virtio_header(frame.as_bytes());
            match self.device.write_vectored(&[IoSlice::new(&header), IoSlice::new(frame.as_bytes())]) {
                Ok(_) => {
                    port.pop_sent();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    port.pop_dropped(PortDropReason::SendFailed);
                }
            }
        }
        Liveness::Open
    }

    fn close(&mut self, cx: &mut Context<'_>) {
        if let Some(port) = self.port.take() {
            cx.remove_port(port);
        }
    }
}
