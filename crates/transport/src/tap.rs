//! A tap device as a switch port: one frame per `read` and per `write` on its descriptor.
//!
//! The device is created elsewhere ([`crate::netns`]), usually inside another network
//! namespace; this module only relays frames between the descriptor and the port.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};

use bytes::Bytes;
use mio::unix::SourceFd;
use mio::Interest;
use tracing::info;
use vnet_switch::PortId;
use vnet_wire::MAX_FRAME_LEN;

use crate::network::{Context, Endpoint, Liveness, ReadOutcome};

/// Frames read per batch.
const FRAMES_PER_BATCH: usize = 32;

/// A tap device's descriptor, relayed to one port.
pub struct TapPort {
    device: File,
    name: String,
    port: Option<PortId>,
    /// Reused for every read; each frame is copied out at its own size.
    buffer: Box<[u8]>,
}

impl TapPort {
    /// Relays the non-blocking tap descriptor `device`; `name` says what it is for logs.
    pub fn new(device: OwnedFd, name: String) -> Self {
        Self {
            device: File::from(device),
            name,
            port: None,
            buffer: vec![0; MAX_FRAME_LEN + 1].into_boxed_slice(),
        }
    }
}

impl Endpoint for TapPort {
    fn start(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        cx.registry.register(
            &mut SourceFd(&self.device.as_raw_fd()),
            cx.token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.port = Some(cx.add_port(self.name.clone()));
        Ok(())
    }

    fn read_batch(&mut self, cx: &mut Context<'_>) -> ReadOutcome {
        let Some(port) = self.port else {
            return ReadOutcome::Closed;
        };
        for _ in 0..FRAMES_PER_BATCH {
            match (&self.device).read(&mut self.buffer) {
                Ok(0) => return ReadOutcome::Closed,
                Ok(len) => cx.switch.receive(port, Bytes::copy_from_slice(&self.buffer[..len]), cx.now),
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
            match self.device.write(frame.as_bytes()) {
                Ok(_) => {
                    port.pop_sent();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    port.pop_dropped();
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
