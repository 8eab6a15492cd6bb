//! ICMPv6 for the gateway's own addresses: an echo request to any of them is answered
//! here. Neighbour discovery, which is ICMPv6 too, is `ndp.rs`'s. This file knows
//! message layouts, not flows or sockets.

use std::net::Ipv6Addr;

use smoltcp::wire::{Icmpv6Message, Icmpv6Packet};
use vnet_wire::MacAddress;

use crate::config::GatewayConfig;
use crate::counters::GatewayDropReason;
use crate::packet::{self, BuiltFrame};

/// The hop limit of the echo replies the gateway sends.
const HOP_LIMIT: u8 = 64;

/// The reply to `request`, an echo request from `guest` at `guest_mac` to `ours`, one of
/// the gateway's addresses: the same identifier, sequence number and data back.
pub fn echo_reply(
    config: &GatewayConfig,
    request: &Icmpv6Packet<&[u8]>,
    guest: Ipv6Addr,
    guest_mac: MacAddress,
    ours: Ipv6Addr,
) -> Result<BuiltFrame, GatewayDropReason> {
    if request.msg_type() != Icmpv6Message::EchoRequest || request.msg_code() != 0 {
        return Err(GatewayDropReason::Unsupported);
    }
    let mut reply = request.as_ref().to_vec();
    reply[0] = Icmpv6Message::EchoReply.into();
    Ok(packet::icmpv6(config.mac(), guest_mac, ours, guest, HOP_LIMIT, &reply))
}
