//! UDP NAT: each guest flow (guest address and port to destination address and port)
//! gets one connected host socket, closed after [`IDLE_TIMEOUT`] without traffic.
//! Replies come back to the guest from the address it sent to; an ICMP unreachable the
//! host got for the flow (seen as ECONNREFUSED, EHOSTUNREACH or ENETUNREACH) becomes the
//! same unreachable for the guest.
//!
//! Which destinations are allowed and where the host address maps is decided by the
//! caller; this file only keeps flows. It knows nothing of frames.

use foldhash::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use smoltcp::wire::IpProtocol;

use crate::budget::FlowKind;
use crate::counters::GatewayDropReason;
use crate::flows::{FlowId, FlowIds, FlowMap};
use crate::guest::Guest;
use crate::guest::RelayedDatagram;
use crate::host::{ForwardId, HostSockets};
use crate::icmp::{GuestError, HostIcmpError};
use crate::inspect::{FlowProtocol, FlowSummary};
use crate::timers::Deadlines;

/// How long a UDP flow lives without traffic in either direction.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Where one guest datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The guest that sent the datagram.
    pub sender: Guest,
    /// The guest's address and port.
    pub guest: SocketAddr,
    /// The address and port the guest sent to.
    pub dst: SocketAddr,
    /// The host-side address the datagram really goes to.
    pub remote: SocketAddr,
}

/// Why a guest datagram was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// Dropped and counted.
    Dropped(GatewayDropReason),
    /// The host said the destination is unreachable; the guest is told.
    Unreachable(GuestError),
    /// The guest's budget has no room for another flow; the guest is told.
    Refused,
}

/// The ICMP error for the guest about a datagram of `payload_len` bytes along `route`.
fn guest_error(
    route: &Route,
    payload_len: usize,
    icmp: Option<HostIcmpError>,
    error: &io::Error,
) -> Option<GuestError> {
    let mut header = [0u8; 8];
    header[..2].copy_from_slice(&route.guest.port().to_be_bytes());
    header[2..4].copy_from_slice(&route.dst.port().to_be_bytes());
    let udp_len = u16::try_from(payload_len + 8).unwrap_or(u16::MAX);
    header[4..6].copy_from_slice(&udp_len.to_be_bytes());
    GuestError::from_host(
        route.guest.ip(),
        route.dst.ip(),
        route.remote.ip(),
        IpProtocol::Udp,
        header,
        icmp,
        error,
    )
}

struct Flow {
    route: Route,
    /// The TTL set on the host socket; None while it is the host's default.
    ttl: Option<u8>,
    last_used: Instant,
}

/// The UDP flows of one gateway.
#[derive(Default)]
pub struct Nat {
    by_route: HashMap<(SocketAddr, SocketAddr), FlowId>,
    flows: FlowMap<Flow>,
    idle_checks: Deadlines<FlowId>,
}

impl Nat {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many flows exist.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// One line per flow, for inspection.
    pub fn summaries(&self, now: Instant) -> impl Iterator<Item = FlowSummary> + '_ {
        self.flows.values().map(move |flow| FlowSummary {
            protocol: FlowProtocol::Udp,
            guest: flow.route.guest,
            destination: flow.route.dst,
            host_side: Some(flow.route.remote),
            state: "open",
            idle: Some(now.saturating_duration_since(flow.last_used)),
        })
    }

    /// Whether a guest flow already talks to `ip:port`, which an inbound client must
    /// then not be given.
    pub fn uses_guest_port(&self, ip: IpAddr, port: u16) -> bool {
        self.by_route.keys().any(|(_, dst)| dst.ip() == ip && dst.port() == port)
    }

    /// Sends `payload` along `route`, opening its host socket first if needed and if
    /// `room_for_new` (the flow table is not full). `ttl` is what the host socket should
    /// send with (see [`crate::route::host_ttl`]).
    #[allow(clippy::too_many_arguments)]
    pub fn send(
        &mut self,
        route: Route,
        payload: &[u8],
        ttl: Option<u8>,
        room_for_new: bool,
        now: Instant,
        host: &mut dyn HostSockets,
        flows: &mut FlowIds,
    ) -> Result<(), SendError> {
        let key = (route.guest, route.dst);
        let flow = match self.by_route.get(&key) {
            Some(flow) => *flow,
            None => {
                if !room_for_new {
                    return Err(SendError::Dropped(GatewayDropReason::FlowLimit));
                }
                let flow = flows.open(route.sender, FlowKind::Udp).map_err(|_| SendError::Refused)?;
                if host.udp_open(flow, route.remote).is_err() {
                    flows.release(flow);
                    return Err(SendError::Dropped(GatewayDropReason::HostSocket));
                }
                self.by_route.insert(key, flow);
                self.flows.insert(flow, Flow { route, ttl: None, last_used: now });
                self.idle_checks.schedule(now + IDLE_TIMEOUT, flow);
                flow
            }
        };
        if let Some(entry) = self.flows.get_mut(flow) {
            entry.last_used = now;
            if entry.ttl != ttl {
                host.set_ttl(flow, ttl).map_err(|_| SendError::Dropped(GatewayDropReason::HostSocket))?;
                entry.ttl = ttl;
            }
        }
        host.datagram_send(flow, payload).map_err(|error| {
            match guest_error(&route, payload.len(), None, &error) {
                Some(report) => SendError::Unreachable(report),
                None => SendError::Dropped(GatewayDropReason::HostSocket),
            }
        })
    }

    /// A datagram from the host on `flow`: where it goes on the segment.
    pub fn on_host_datagram(&mut self, flow: FlowId, now: Instant) -> Option<RelayedDatagram> {
        let entry = self.flows.get_mut(flow)?;
        entry.last_used = now;
        Some(RelayedDatagram { from: entry.route.dst, to: entry.route.guest })
    }

    /// An error on `flow`'s socket, with the ICMP error behind it if the host read one:
    /// the error to report to the guest, if it stands for one.
    pub fn on_host_error(
        &mut self,
        flow: FlowId,
        icmp: Option<HostIcmpError>,
        error: &io::Error,
    ) -> Option<GuestError> {
        let entry = self.flows.get(flow)?;
        guest_error(&entry.route, 0, icmp, error)
    }

    /// When a flow may have been idle too long.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.idle_checks.next()
    }

    /// Closes idle flows; a flow used since it was scheduled is looked at again later.
    pub fn expire(&mut self, now: Instant, host: &mut dyn HostSockets, ids: &mut FlowIds) {
        loop {
            let flows = &self.flows;
            let Some(id) =
                self.idle_checks.pop_idle(now, IDLE_TIMEOUT, |id| flows.get(id).map(|f| f.last_used))
            else {
                break;
            };
            self.close(id, host, ids);
        }
    }

    /// Closes flow `id` and its host socket, if it is one of this table's.
    pub fn close(&mut self, id: FlowId, host: &mut dyn HostSockets, ids: &mut FlowIds) {
        if let Some(flow) = self.flows.remove(id) {
            self.by_route.remove(&(flow.route.guest, flow.route.dst));
            host.datagram_close(id);
            ids.release(id);
        }
    }
}

/// Most host clients of UDP hostfwd ports shown to guests by their own address at once;
/// beyond, clients get a port of the gateway's address like loopback clients.
const MAX_SHOWN_CLIENTS: usize = 16384;

/// Datagrams from host clients of UDP hostfwd ports: each client is shown to the guest by
/// its own address where it may be (its replies then come back to that address), or
/// gets a port of the gateway's address, which the guest's replies go back to.
#[derive(Default)]
pub struct Inbound {
    by_client: HashMap<(ForwardId, SocketAddr), u16>,
    by_port: HashMap<u16, InboundClient>,
    next_port: u16,
    /// Clients shown by their own address, with their forward and when last heard.
    shown: HashMap<SocketAddr, (ForwardId, Instant)>,
}

/// One host client of a UDP hostfwd port.
#[derive(Debug, Clone, Copy)]
pub struct InboundClient {
    /// Which `hostfwd=` it came through.
    pub forward: ForwardId,
    /// The client's address on the host.
    pub client: SocketAddr,
    last_used: Instant,
}

impl Inbound {
    /// The gateway port that stands for `client` of `forward`, allocated on first use
    /// among ports `taken` does not claim.
    pub fn port_for(
        &mut self,
        forward: ForwardId,
        client: SocketAddr,
        now: Instant,
        taken: impl Fn(u16) -> bool,
    ) -> Option<u16> {
        if let Some(port) = self.by_client.get(&(forward, client)).copied() {
            if let Some(entry) = self.by_port.get_mut(&port) {
                entry.last_used = now;
            }
            return Some(port);
        }
        for _ in 0..u16::MAX {
            self.next_port =
                if self.next_port < 49152 { 49152 } else { self.next_port.wrapping_add(1).max(49152) };
            let port = self.next_port;
            if !self.by_port.contains_key(&port) && !taken(port) {
                self.by_client.insert((forward, client), port);
                self.by_port.insert(port, InboundClient { forward, client, last_used: now });
                return Some(port);
            }
        }
        None
    }

    /// Shows `client` of `forward` to the guest by its own address; false if too many
    /// clients are shown already.
    pub fn show(&mut self, forward: ForwardId, client: SocketAddr, now: Instant) -> bool {
        if self.shown.len() >= MAX_SHOWN_CLIENTS && !self.shown.contains_key(&client) {
            return false;
        }
        self.shown.insert(client, (forward, now));
        true
    }

    /// The forward a guest datagram to `client` replies through, if that client was
    /// shown to the guest.
    pub fn shown_forward(&mut self, client: SocketAddr, now: Instant) -> Option<ForwardId> {
        let (forward, last_used) = self.shown.get_mut(&client)?;
        *last_used = now;
        Some(*forward)
    }

    /// The client a guest reply to gateway port `port` is for.
    pub fn client_of(&mut self, port: u16, now: Instant) -> Option<InboundClient> {
        let entry = self.by_port.get_mut(&port)?;
        entry.last_used = now;
        Some(*entry)
    }

    /// Forgets every client of `forward`, a rule that was removed.
    pub fn forget_forward(&mut self, forward: ForwardId) {
        self.by_client.retain(|(of, _), _| *of != forward);
        self.by_port.retain(|_, entry| entry.forward != forward);
        self.shown.retain(|_, (of, _)| *of != forward);
    }

    /// Forgets clients idle for [`IDLE_TIMEOUT`].
    pub fn expire(&mut self, now: Instant) {
        let idle: Vec<u16> = self
            .by_port
            .iter()
            .filter(|(_, entry)| now.saturating_duration_since(entry.last_used) >= IDLE_TIMEOUT)
            .map(|(port, _)| *port)
            .collect();
        for port in idle {
            if let Some(entry) = self.by_port.remove(&port) {
                self.by_client.remove(&(entry.forward, entry.client));
            }
        }
        self.shown.retain(|_, (_, last_used)| now.saturating_duration_since(*last_used) < IDLE_TIMEOUT);
    }
}
