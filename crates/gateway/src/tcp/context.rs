//! [`Context`]: what every TCP handler works with besides the connection. It knows
//! nothing of connections itself.

use std::time::Instant;

use vnet_wire::Frame;

use crate::config::GatewayConfig;
use crate::counters::GatewayCounters;
use crate::egress::GatewayIo;
use crate::flows::FlowIds;

/// The gateway's settings, its host side, the time, the list the frames a handler sends
/// go to, the flow ids that new connections take and closed ones give back, and the
/// counters that connections ended by their host socket are counted in.
pub(crate) struct Context<'a> {
    pub config: &'a GatewayConfig,
    pub host: &'a mut dyn GatewayIo,
    pub now: Instant,
    pub out: &'a mut Vec<Frame>,
    pub flows: &'a mut FlowIds,
    pub counters: &'a mut GatewayCounters,
}
