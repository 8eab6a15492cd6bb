//! QEMU's multicast backend (`-netdev socket,mcast=GROUP:PORT`): every member of a UDP
//! multicast group sees every frame, like a hub. vnet joins as one more member, and the
//! whole segment becomes one port of its switch.
//!
//! vnet receives on a socket bound to the group's port and sends from a second socket
//! with a port of its own, so the copies of its own frames that multicast loopback brings
//! back are recognised by their source (the port, and the address when `localaddr` is
//! given) and dropped. This module does not look inside frames.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;

use mio::unix::SourceFd;
use mio::Interest;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tracing::info;
use vnet_switch::{PortDropReason, PortId};
use vnet_wire::MAX_FRAME_LEN;

use crate::dgram::{receive_batch, send_queued, WhenFull, BATCH};
use crate::{McastSpec, TransportError};
use vnet_runtime::sys::DatagramBatch;
use vnet_runtime::{Context, Endpoint, Liveness, ReadOutcome};

/// Membership of one multicast segment.
pub struct McastSegment {
    receiver: Socket,
    sender: Socket,
    /// Where vnet's own datagrams come from: the sending socket's port, and its address
    /// when a local address was given (unspecified otherwise).
    own_source: SocketAddrV4,
    group: SockAddr,
    description: String,
    port: Option<PortId>,
    batch: DatagramBatch,
}

impl McastSegment {
    /// Joins `spec.group` on `spec.port`, sending through `spec.local` when given.
    pub fn join(spec: &McastSpec) -> Result<Self, TransportError> {
        if !spec.group.is_multicast() {
            return Err(TransportError::NotMulticast(spec.group));
        }
        let description = format!("mcast:{}:{}", spec.group, spec.port);
        let err = |what: &str, e: io::Error| TransportError::io(format!("{description}: {what}"), e);
        let interface = spec.local.unwrap_or(Ipv4Addr::UNSPECIFIED);

        let receiver = udp_socket().map_err(|e| err("cannot create socket", e))?;
        receiver.set_reuse_address(true).map_err(|e| err("cannot set SO_REUSEADDR", e))?;
        receiver
            .bind(&SocketAddr::V4(SocketAddrV4::new(spec.group, spec.port)).into())
            .map_err(|e| err("cannot bind the group's port", e))?;
        receiver.join_multicast_v4(&spec.group, &interface).map_err(|e| err("cannot join the group", e))?;

        let sender = udp_socket().map_err(|e| err("cannot create socket", e))?;
        sender.set_multicast_loop_v4(true).map_err(|e| err("cannot enable multicast loopback", e))?;
        if let Some(local) = spec.local {
            sender.set_multicast_if_v4(&local).map_err(|e| err("cannot select the local interface", e))?;
        }
        sender
            .bind(&SocketAddr::V4(SocketAddrV4::new(interface, 0)).into())
            .map_err(|e| err("cannot bind the sending socket", e))?;
        let own_port = sender
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map(|a| a.port())
            .ok_or_else(|| err("sending socket has no port", io::ErrorKind::AddrNotAvailable.into()))?;
        let own_source = SocketAddrV4::new(interface, own_port);

        Ok(Self {
            receiver,
            sender,
            own_source,
            group: SocketAddr::V4(SocketAddrV4::new(spec.group, spec.port)).into(),
            description,
            port: None,
            batch: DatagramBatch::new(BATCH, MAX_FRAME_LEN + 1),
        })
    }
}

fn udp_socket() -> io::Result<Socket> {
    Socket::new(Domain::IPV4, Type::DGRAM.nonblocking().cloexec(), Some(Protocol::UDP))
}

impl Endpoint for McastSegment {
    fn start(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        cx.registry.register(&mut SourceFd(&self.receiver.as_raw_fd()), cx.token, Interest::READABLE)?;
        self.port = Some(cx.add_port(self.description.clone()));
        Ok(())
    }

    fn read_batch(&mut self, cx: &mut Context<'_>) -> ReadOutcome {
        let Some(port) = self.port else {
            return ReadOutcome::Closed;
        };
        let own = self.own_source;
        let is_own = |sender: &SockAddr| match sender.as_socket() {
            Some(SocketAddr::V4(from)) => {
                from.port() == own.port() && (own.ip().is_unspecified() || from.ip() == own.ip())
            }
            _ => false,
        };
        receive_batch(&mut self.batch, &self.receiver, |frame, sender| {
            if !is_own(&sender) {
                cx.switch.receive(port, frame, cx.now);
            }
        })
    }

    fn on_writable(&mut self, _cx: &mut Context<'_>) -> Liveness {
        Liveness::Open
    }

    fn flush(&mut self, port: PortId, cx: &mut Context<'_>) -> Liveness {
        let Some(switch_port) = cx.switch.port_mut(port) else {
            return Liveness::Open;
        };
        if let Err(e) = send_queued(&self.sender, &self.group, switch_port, WhenFull::Drop) {
            info!(attach = %self.description, error = %e, "sending to the group failed");
            while switch_port.pop_dropped(PortDropReason::SendFailed).is_some() {}
        }
        Liveness::Open
    }

    fn close(&mut self, cx: &mut Context<'_>) {
        if let Some(port) = self.port.take() {
            cx.remove_port(port);
        }
    }
}
