//! [`Context`]: what every TCP handler works with besides the connection. It knows
//! nothing of connections itself.

use std::io;
use std::time::Instant;

use vnet_wire::Frame;

use crate::config::GatewayConfig;
use crate::counters::GatewayCounters;
use crate::egress::GatewayIo;
use crate::flows::{FlowId, FlowIds};
use crate::lent::LentPayload;

/// The gateway's settings, its host side, the time, the list the frames a handler sends
/// go to, the flow ids that new connections take and closed ones give back, and the
/// counters that connections ended by their host socket are counted in; and, while a
/// guest segment whose payload is lent is handled, where that payload lies.
pub(crate) struct Context<'a> {
    pub config: &'a GatewayConfig,
    pub host: &'a mut dyn GatewayIo,
    pub now: Instant,
    pub out: &'a mut Vec<Frame>,
    pub flows: &'a mut FlowIds,
    pub counters: &'a mut GatewayCounters,
    pub lent: Option<&'a LentPayload>,
}

impl Context<'_> {
    /// Writes guest data, a slice of the segment being handled, to `flow`'s host
    /// socket: from where it lies in the guest's memory if it is lent there.
    pub fn send_guest_data(&mut self, flow: FlowId, data: &[u8]) -> io::Result<usize> {
        match self.lent.and_then(|lent| lent.range_of(data)) {
            Some((frame, range)) => self.host.tcp_send_frame(flow, frame, range),
            None => self.host.tcp_send(flow, data),
        }
    }
}
