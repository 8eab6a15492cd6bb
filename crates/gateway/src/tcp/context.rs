//! [`Context`]: what every TCP handler works with besides the connection. It knows
//! nothing of connections itself.

use std::time::Instant;

use vnet_wire::Frame;

use crate::config::GatewayConfig;
use crate::egress::GatewayIo;

/// The gateway's settings, its host side, the time, and the list the frames a handler
/// sends go to.
pub(crate) struct Context<'a> {
    pub config: &'a GatewayConfig,
    pub host: &'a mut dyn GatewayIo,
    pub now: Instant,
    pub out: &'a mut Vec<Frame>,
}
