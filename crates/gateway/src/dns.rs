//! DNS forwarding: queries to the gateway's DNS address go to the upstream servers over
//! UDP, each query through a host socket of its own, with a timeout and fail-over to the
//! next upstream. When every upstream has failed the guest gets SERVFAIL, not silence.
//!
//! Only the 12-byte header and the question are looked at, to match replies and to build
//! SERVFAIL; answers are passed through untouched. The search list that router
//! advertisements and DHCPv6 carry is written in DNS's name format here too. This file
//! knows nothing of frames.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::budget::FlowKind;
use crate::counters::GatewayDropReason;
use crate::flows::{FlowId, FlowIds, FlowMap};
use crate::guest::{Guest, GuestDatagram, RelayedDatagram};
use crate::host::HostSockets;
use crate::timers::Deadlines;

/// The DNS port.
pub const PORT: u16 = 53;
/// How long one upstream gets to answer before the next is tried.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Most queries in flight at once; each holds one host socket.
pub const MAX_PENDING: usize = 1024;
const HEADER_LEN: usize = 12;
const RCODE_SERVFAIL: u8 = 2;

struct Pending {
    /// The guest whose budget the query is charged to.
    sender: Guest,
    guest: SocketAddr,
    server: SocketAddr,
    query: Vec<u8>,
    upstream: usize,
}

/// Queries in flight, by the flow that carries each to its current upstream.
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    pending: FlowMap<Pending>,
    timeouts: Deadlines<FlowId>,
}

impl Forwarder {
    /// A forwarder to `upstreams`, tried in order.
    pub fn new(upstreams: Vec<SocketAddr>) -> Self {
        Self { upstreams, pending: FlowMap::default(), timeouts: Deadlines::default() }
    }

    /// Tries `upstreams` for queries from now on. A query in flight goes on to the next
    /// upstream of the new list if its own fails.
    pub fn set_upstreams(&mut self, upstreams: Vec<SocketAddr>) {
        self.upstreams = upstreams;
    }

    /// Forwards a query that `sender`, at `guest`, sent to `server` (the gateway's DNS
    /// address). Returns the SERVFAIL answer at once when no upstream can be reached; a
    /// guest with as many queries in flight as its budget allows is refused.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &mut self,
        sender: Guest,
        guest: SocketAddr,
        server: SocketAddr,
        query: &[u8],
        now: Instant,
        host: &mut dyn HostSockets,
        flows: &mut FlowIds,
    ) -> Result<Option<GuestDatagram>, GatewayDropReason> {
        if query.len() < HEADER_LEN || query[2] & 0x80 != 0 {
            return Err(GatewayDropReason::Malformed);
        }
        if self.pending.len() >= MAX_PENDING {
            return Err(GatewayDropReason::FlowLimit);
        }
        let flow = flows.open(sender, FlowKind::Dns).map_err(|_| GatewayDropReason::GuestBudget)?;
        let pending = Pending { sender, guest, server, query: query.to_vec(), upstream: 0 };
        Ok(self.try_upstreams(pending, Some(flow), now, host, flows))
    }

    /// A reply on `flow`, if it answers the query the flow carries: where it goes. The
    /// flow is done then; its socket is the caller's to close.
    pub fn on_upstream_reply(&mut self, flow: FlowId, reply: &[u8]) -> Option<RelayedDatagram> {
        let pending = self.pending.get(flow)?;
        if reply.len() < HEADER_LEN || reply[..2] != pending.query[..2] {
            debug!("DNS reply with a foreign id ignored");
            return None;
        }
        let pending = self.pending.remove(flow)?;
        Some(RelayedDatagram { from: pending.server, to: pending.guest })
    }

    /// `flow`'s upstream refused: try the next one. Returns None if `flow` is not a
    /// query, else the SERVFAIL answers that are due now (none if another upstream was
    /// tried).
    pub fn on_upstream_error(
        &mut self,
        flow: FlowId,
        now: Instant,
        host: &mut dyn HostSockets,
        flows: &mut FlowIds,
    ) -> Option<Vec<GuestDatagram>> {
        let mut pending = self.pending.remove(flow)?;
        host.datagram_close(flow);
        flows.release(flow);
        pending.upstream += 1;
        Some(self.try_upstreams(pending, None, now, host, flows).into_iter().collect())
    }

    /// Gives up the query on `flow` without an answer: its guest is gone.
    pub fn cancel(&mut self, flow: FlowId, host: &mut dyn HostSockets, flows: &mut FlowIds) {
        if self.pending.remove(flow).is_some() {
            host.datagram_close(flow);
            flows.release(flow);
        }
    }

    /// Queries waiting for an upstream's answer.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// The next query timeout.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timeouts.next()
    }

    /// Moves timed-out queries to their next upstream; returns SERVFAIL answers for
    /// those that ran out of upstreams.
    pub fn expire(
        &mut self,
        now: Instant,
        host: &mut dyn HostSockets,
        flows: &mut FlowIds,
    ) -> Vec<GuestDatagram> {
        let mut answers = Vec::new();
        while let Some((_, flow)) = self.timeouts.pop_due(now) {
            if let Some(mut pending) = self.pending.remove(flow) {
                host.datagram_close(flow);
                flows.release(flow);
                pending.upstream += 1;
                answers.extend(self.try_upstreams(pending, None, now, host, flows));
            }
        }
        answers
    }

    /// Sends `pending` to its current upstream or the next that accepts it, on `flow` if
    /// given, else on a flow opened for it. Returns the SERVFAIL answer when no upstream
    /// is left, or its guest's budget has no room for the next attempt.
    fn try_upstreams(
        &mut self,
        mut pending: Pending,
        mut flow: Option<FlowId>,
        now: Instant,
        host: &mut dyn HostSockets,
        flows: &mut FlowIds,
    ) -> Option<GuestDatagram> {
        while let Some(upstream) = self.upstreams.get(pending.upstream).copied() {
            let Some(flow) = flow.take().or_else(|| flows.open(pending.sender, FlowKind::Dns).ok()) else {
                break;
            };
            let sent = host.udp_open(flow, upstream).and_then(|()| host.datagram_send(flow, &pending.query));
            match sent {
                Ok(()) => {
                    self.timeouts.schedule(now + QUERY_TIMEOUT, flow);
                    self.pending.insert(flow, pending);
                    return None;
                }
                Err(e) => {
                    debug!(%upstream, error = %e, "DNS upstream unusable");
                    host.datagram_close(flow);
                    flows.release(flow);
                    pending.upstream += 1;
                }
            }
        }
        if let Some(unused) = flow {
            flows.release(unused);
        }
        warn!(guest = %pending.guest, "no DNS upstream answered; replying SERVFAIL");
        Some(GuestDatagram { from: pending.server, to: pending.guest, payload: servfail(&pending.query) })
    }
}

/// A SERVFAIL response to `query`: its id, flags and question, no records.
/// `names` (a domain and a search list), in DNS's uncompressed name format, one name
/// after another (as router advertisements and DHCPv6 carry them). A label longer than
/// a DNS label may be is left out.
pub fn search_list_wire<'a>(names: impl IntoIterator<Item = &'a String>) -> Vec<u8> {
    let mut wire = Vec::new();
    for name in names {
        for label in name.split('.').filter(|label| !label.is_empty() && label.len() <= 63) {
            wire.push(label.len() as u8);
            wire.extend_from_slice(label.as_bytes());
        }
        wire.push(0);
    }
    wire
}

pub fn servfail(query: &[u8]) -> Vec<u8> {
    let question_end = question_end(query).unwrap_or(HEADER_LEN);
    let mut response = query[..question_end].to_vec();
    response[2] = (response[2] | 0x80) & !0x06; // QR=1; keep opcode and RD; clear AA, TC
    response[3] = 0x80 | RCODE_SERVFAIL; // RA=1, RCODE
    let questions: u16 = if question_end > HEADER_LEN { 1 } else { 0 };
    response[4..6].copy_from_slice(&questions.to_be_bytes());
    response[6..12].fill(0);
    response
}

/// Where the first question of `message` ends, if it has exactly one well-formed,
/// uncompressed question.
fn question_end(message: &[u8]) -> Option<usize> {
    if u16::from_be_bytes([*message.get(4)?, *message.get(5)?]) != 1 {
        return None;
    }
    let mut at = HEADER_LEN;
    loop {
        let len = usize::from(*message.get(at)?);
        if len == 0 {
            at += 1;
            break;
        }
        if len > 63 {
            return None;
        }
        at += 1 + len;
    }
    let end = at + 4;
    (end <= message.len()).then_some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(id: u16, name: &[u8]) -> Vec<u8> {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        q.extend_from_slice(name);
        q.extend_from_slice(&[0, 1, 0, 1]);
        q
    }

    #[test]
    fn servfail_keeps_the_id_and_question() {
        let q = query(0xbeef, b"\x04test\x04vnet\x00");
        let r = servfail(&q);
        assert_eq!(&r[..2], &[0xbe, 0xef]);
        assert_eq!(r[2] & 0x80, 0x80, "a response");
        assert_eq!(r[3] & 0x0f, RCODE_SERVFAIL);
        assert_eq!(&r[12..], &q[12..], "the question is echoed");
    }

    #[test]
    fn servfail_of_a_bogus_question_is_a_bare_header() {
        for bogus in [query(1, b"\x3ftoo-short"), query(2, b"\xc0\x0c"), vec![0; 12]] {
            let r = servfail(&bogus);
            assert_eq!(r.len(), HEADER_LEN);
            assert_eq!(&r[4..6], &[0, 0]);
        }
    }
}
