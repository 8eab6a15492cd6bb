//! IPv6 extension headers (RFC 8200 §4): the chain between a guest packet's fixed header
//! and its upper-layer protocol, walked within the packet and within
//! [`MAX_EXTENSION_HEADERS`], its options checked. What gets through is the upper-layer
//! protocol and its bytes; a chain the gateway will not act on has a typed drop reason:
//! a fragment (the gateway does not reassemble), a routing header that still has
//! segments to visit, a jumbogram, an option that must not be skipped, or a chain that is
//! too long, misordered or truncated. What the upper layer carries is not known here.

use smoltcp::wire::IpProtocol;

use crate::counters::GatewayDropReason;

/// The most extension headers a guest packet may carry before its upper layer: RFC 8200
/// orders six kinds and allows destination options twice; more is an attack.
pub const MAX_EXTENSION_HEADERS: usize = 8;
/// The option type of a jumbo payload (RFC 2675), which no link here can carry.
const JUMBO_PAYLOAD: u8 = 0xc2;
/// The one-byte padding option, and the longest run of padding a sender needs (an
/// option area is padded to 8 bytes, so 7 at most; longer runs only hide data).
const PAD1: u8 = 0;
const PADN: u8 = 1;
const MAX_PADDING: usize = 7;

/// The upper-layer protocol of a guest packet and its bytes (header and payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpperLayer<'a> {
    /// The upper-layer protocol: ICMPv6, UDP, TCP or one the gateway does not serve.
    pub protocol: IpProtocol,
    /// Its header and payload.
    pub bytes: &'a [u8],
}

/// Walks the extension headers from `first` (the fixed header's next header) through
/// `payload` (what the fixed header's payload length covers) to the upper layer.
pub fn upper_layer(first: IpProtocol, payload: &[u8]) -> Result<UpperLayer<'_>, GatewayDropReason> {
    let mut protocol = first;
    let mut rest = payload;
    for position in 0..=MAX_EXTENSION_HEADERS {
        let header = match protocol {
            IpProtocol::HopByHop if position > 0 => return Err(GatewayDropReason::ExtensionHeader),
            IpProtocol::HopByHop | IpProtocol::Ipv6Opts => {
                let (header, _) = split_header(protocol, rest)?;
                check_options(&header[2..])?;
                header
            }
            IpProtocol::Ipv6Route => {
                let (header, _) = split_header(protocol, rest)?;
                let segments_left = header[3];
                if segments_left != 0 {
                    return Err(GatewayDropReason::SourceRoute);
                }
                header
            }
            IpProtocol::Ipv6Frag => return Err(GatewayDropReason::Fragment),
            IpProtocol::Ipv6NoNxt => return Err(GatewayDropReason::Unsupported),
            _ => return Ok(UpperLayer { protocol, bytes: rest }),
        };
        protocol = IpProtocol::from(header[0]);
        rest = &rest[header.len()..];
    }
    Err(GatewayDropReason::ExtensionHeader)
}

/// The extension header of kind `protocol` at the start of `bytes` and what follows it:
/// a fragment header is 8 bytes, any other gives its length in 8-byte units, less the
/// first, in its second byte. Malformed if it runs past `bytes`.
pub fn split_header(protocol: IpProtocol, bytes: &[u8]) -> Result<(&[u8], &[u8]), GatewayDropReason> {
    let len = match protocol {
        IpProtocol::Ipv6Frag => 8,
        _ => (usize::from(*bytes.get(1).ok_or(GatewayDropReason::Malformed)?) + 1) * 8,
    };
    if bytes.len() < len {
        return Err(GatewayDropReason::Malformed);
    }
    Ok(bytes.split_at(len))
}

/// Checks the type-length-value options of a hop-by-hop or destination options header:
/// each within the header, padding no longer than [`MAX_PADDING`], no jumbo payload,
/// and none unknown whose type says to discard the packet (its two high bits set).
fn check_options(mut options: &[u8]) -> Result<(), GatewayDropReason> {
    let mut padding = 0;
    while let Some(&kind) = options.first() {
        let len = match kind {
            PAD1 => 1,
            _ => 2 + usize::from(*options.get(1).ok_or(GatewayDropReason::Malformed)?),
        };
        if options.len() < len {
            return Err(GatewayDropReason::Malformed);
        }
        padding = if matches!(kind, PAD1 | PADN) { padding + len } else { 0 };
        if padding > MAX_PADDING {
            return Err(GatewayDropReason::ExtensionHeader);
        }
        match kind {
            JUMBO_PAYLOAD => return Err(GatewayDropReason::Jumbogram),
            PAD1 | PADN => {}
            unknown if unknown >> 6 != 0 => return Err(GatewayDropReason::ExtensionHeader),
            _ => {}
        }
        options = &options[len..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UDP: u8 = 17;
    const HOP_BY_HOP: u8 = 0;
    const ROUTING: u8 = 43;
    const DESTINATION: u8 = 60;

    /// An 8-byte extension header leading to `next`, with six bytes of options or fields.
    fn header(next: u8, body: [u8; 6]) -> Vec<u8> {
        let mut header = vec![next, 0];
        header.extend_from_slice(&body);
        header
    }

    const PADDING: [u8; 6] = [PADN, 4, 0, 0, 0, 0];
    /// Router alert (type 5, 2 bytes: MLD) and 2 bytes of padding.
    const ROUTER_ALERT: [u8; 6] = [5, 2, 0, 0, PADN, 0];

    #[test]
    fn the_upper_layer_follows_hop_by_hop_destination_and_spent_routing_headers() {
        let mut packet = header(DESTINATION, ROUTER_ALERT);
        packet.extend(header(ROUTING, PADDING));
        packet.extend(header(UDP, [0, 0, 0, 0, 0, 0]));
        packet.extend_from_slice(b"udp header and data");
        let upper = upper_layer(IpProtocol::HopByHop, &packet).unwrap();
        assert_eq!(upper, UpperLayer { protocol: IpProtocol::Udp, bytes: b"udp header and data" });
        assert_eq!(
            upper_layer(IpProtocol::Udp, b"plain"),
            Ok(UpperLayer { protocol: IpProtocol::Udp, bytes: b"plain" })
        );
    }

    #[test]
    fn chains_the_gateway_will_not_act_on_are_dropped_for_their_reason() {
        let with_upper = |mut headers: Vec<u8>| {
            headers.extend_from_slice(&[0; 8]);
            headers
        };
        // 14 bytes of padding in one 16-byte header.
        let long_padding = [vec![UDP, 1, PADN, 12], vec![0; 12]].concat();
        let cases: [(IpProtocol, Vec<u8>, GatewayDropReason); 9] = [
            (IpProtocol::Ipv6Frag, with_upper(header(UDP, [0, 0, 0, 0, 0, 1])), GatewayDropReason::Fragment),
            (
                IpProtocol::Ipv6Route,
                with_upper(header(UDP, [0, 1, 0, 0, 0, 0])),
                GatewayDropReason::SourceRoute,
            ),
            (
                IpProtocol::HopByHop,
                with_upper(header(UDP, [JUMBO_PAYLOAD, 4, 0, 1, 0, 0])),
                GatewayDropReason::Jumbogram,
            ),
            (
                IpProtocol::Ipv6Opts,
                with_upper(header(UDP, [0x80, 4, 0, 0, 0, 0])),
                GatewayDropReason::ExtensionHeader,
            ),
            (IpProtocol::Ipv6Opts, with_upper(long_padding), GatewayDropReason::ExtensionHeader),
            (
                IpProtocol::Ipv6Opts,
                with_upper(header(HOP_BY_HOP, PADDING)),
                GatewayDropReason::ExtensionHeader,
            ),
            (IpProtocol::Ipv6Opts, header(UDP, [PADN, 9, 0, 0, 0, 0]), GatewayDropReason::Malformed),
            (IpProtocol::Ipv6Opts, vec![UDP, 3, 0, 0], GatewayDropReason::Malformed),
            (IpProtocol::Ipv6NoNxt, vec![], GatewayDropReason::Unsupported),
        ];
        for (first, packet, reason) in cases {
            assert_eq!(upper_layer(first, &packet), Err(reason), "{first} {packet:02x?}");
        }
    }

    #[test]
    fn a_chain_longer_than_the_limit_is_dropped_and_one_at_the_limit_is_not() {
        let chain = |count: usize| {
            let mut packet: Vec<u8> = (1..count).flat_map(|_| header(DESTINATION, PADDING)).collect();
            packet.extend(header(UDP, PADDING));
            packet
        };
        let at_limit = chain(MAX_EXTENSION_HEADERS);
        assert_eq!(
            upper_layer(IpProtocol::Ipv6Opts, &at_limit).map(|upper| upper.protocol),
            Ok(IpProtocol::Udp)
        );
        let over = chain(MAX_EXTENSION_HEADERS + 1);
        assert_eq!(upper_layer(IpProtocol::Ipv6Opts, &over), Err(GatewayDropReason::ExtensionHeader));
    }
}
