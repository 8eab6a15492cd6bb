//! Runs the gateway ([`vnet_gateway::Gateway`]) as a port of the switch: frames queued
//! for its port go into the gateway, what it answers goes back into the switch, and its
//! host sockets are real non-blocking UDP sockets registered with the event loop.
//!
//! The protocols are the gateway crate's business; this module only moves frames and
//! datagrams between it, the switch and the host.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use mio::net::UdpSocket;
use mio::{Interest, Token};
use tracing::{debug, info};
use vnet_gateway::{FlowId, Gateway, GatewayConfig, HostSockets};
use vnet_switch::PortId;

use crate::network::{Context, Endpoint, Liveness, ReadOutcome};

/// Datagrams read from one host socket per batch.
const DATAGRAMS_PER_BATCH: usize = 32;
/// Largest datagram read from a host socket.
const MAX_DATAGRAM: usize = 65536;

struct HostSocket {
    socket: UdpSocket,
    token: Token,
}

/// The host sockets of one gateway, by flow and by event token.
#[derive(Default)]
struct Sockets {
    by_flow: HashMap<FlowId, HostSocket>,
    flow_of_token: HashMap<Token, FlowId>,
}

/// [`HostSockets`] over real sockets, for the duration of one call into the gateway.
struct Host<'s, 'c, 'cx> {
    sockets: &'s mut Sockets,
    cx: &'c mut Context<'cx>,
}

impl HostSockets for Host<'_, '_, '_> {
    fn udp_open(&mut self, flow: FlowId, remote: SocketAddr) -> io::Result<()> {
        let local: SocketAddr =
            if remote.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
        let mut socket = UdpSocket::bind(local)?;
        socket.connect(remote)?;
        let token = self.cx.register_source(&mut socket, Interest::READABLE)?;
        self.sockets.flow_of_token.insert(token, flow);
        self.sockets.by_flow.insert(flow, HostSocket { socket, token });
        Ok(())
    }

    fn udp_send(&mut self, flow: FlowId, payload: &[u8]) -> io::Result<()> {
        let socket = self.sockets.by_flow.get(&flow).ok_or(io::ErrorKind::NotFound)?;
        socket.socket.send(payload).map(|_| ())
    }

    fn udp_close(&mut self, flow: FlowId) {
        if let Some(closed) = self.sockets.by_flow.remove(&flow) {
            self.sockets.flow_of_token.remove(&closed.token);
            self.cx.forget_source(closed.token);
        }
    }
}

/// The gateway as a switch port.
pub struct GatewayPort {
    gateway: Gateway,
    sockets: Sockets,
    port: Option<PortId>,
    buffer: Box<[u8]>,
}

impl GatewayPort {
    /// A gateway with `config`.
    pub fn new(config: GatewayConfig) -> Self {
        Self {
            gateway: Gateway::new(config),
            sockets: Sockets::default(),
            port: None,
            buffer: vec![0; MAX_DATAGRAM].into_boxed_slice(),
        }
    }

    /// Hands what the gateway has to say to the switch.
    fn emit(&mut self, cx: &mut Context<'_>) {
        let Some(port) = self.port else {
            return;
        };
        while let Some(frame) = self.gateway.pop_frame() {
            cx.switch.receive(port, Bytes::from(frame), cx.now);
        }
    }

    fn read_host_socket(&mut self, flow: FlowId, cx: &mut Context<'_>) -> ReadOutcome {
        for _ in 0..DATAGRAMS_PER_BATCH {
            let Some(host_socket) = self.sockets.by_flow.get(&flow) else {
                return ReadOutcome::Drained;
            };
            match host_socket.socket.recv(&mut self.buffer) {
                Ok(len) => {
                    let now = cx.now;
                    let mut host = Host { sockets: &mut self.sockets, cx };
                    self.gateway.on_udp_datagram(flow, &self.buffer[..len], now, &mut host);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadOutcome::Drained,
                Err(e) => {
                    debug!(?flow, error = %e, "host socket error");
                    let now = cx.now;
                    let mut host = Host { sockets: &mut self.sockets, cx };
                    self.gateway.on_udp_error(flow, &e, now, &mut host);
                }
            }
        }
        ReadOutcome::More
    }
}

impl Endpoint for GatewayPort {
    fn start(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let config = self.gateway.config();
        info!(host = %config.host, dns = %config.dns, net = %format!("{}/{}", config.network, config.prefix_len), "gateway up");
        self.port = Some(cx.add_port(format!("gateway {}", config.host)));
        Ok(())
    }

    fn read_batch(&mut self, cx: &mut Context<'_>) -> ReadOutcome {
        let Some(&flow) = self.sockets.flow_of_token.get(&cx.ready) else {
            return ReadOutcome::Drained;
        };
        let outcome = self.read_host_socket(flow, cx);
        self.emit(cx);
        outcome
    }

    fn on_writable(&mut self, _cx: &mut Context<'_>) -> Liveness {
        Liveness::Open
    }

    fn flush(&mut self, port: PortId, cx: &mut Context<'_>) -> Liveness {
        let now: Instant = cx.now;
        while let Some(frame) = cx.switch.port_mut(port).and_then(|p| p.pop_sent()) {
            let mut host = Host { sockets: &mut self.sockets, cx };
            self.gateway.receive(frame.as_bytes(), now, &mut host);
        }
        self.emit(cx);
        Liveness::Open
    }

    fn deadline(&self) -> Option<Instant> {
        self.gateway.next_deadline()
    }

    fn on_deadline(&mut self, cx: &mut Context<'_>) {
        let now = cx.now;
        let mut host = Host { sockets: &mut self.sockets, cx };
        self.gateway.on_deadline(now, &mut host);
        self.emit(cx);
    }

    fn close(&mut self, cx: &mut Context<'_>) {
        for (token, _) in self.sockets.flow_of_token.drain() {
            cx.forget_source(token);
        }
        self.sockets.by_flow.clear();
        info!(drops = %self.gateway.counters(), "gateway stopped");
        if let Some(port) = self.port.take() {
            cx.remove_port(port);
        }
    }
}
