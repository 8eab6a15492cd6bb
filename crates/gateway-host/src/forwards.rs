//! The hostfwd rules in force and their listeners, in one table indexed by
//! [`ForwardId`]: each rule's host socket is bound when the rule is added and registered
//! with the loop. A rule with no host address listens on both families (one IPv6 socket
//! that takes IPv4 too, or IPv4 alone where the host has no IPv6). What a client's
//! connection or datagram means is the gateway's business.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};

use mio::net::{TcpListener, UdpSocket};
use mio::{Interest, Token};
use socket2::{Domain, Socket, Type};
use vnet_gateway::{ForwardId, ForwardProtocol, HostForward};
use vnet_runtime::Context;
use vnet_transport::stream::inet_bind_error;
use vnet_transport::TransportError;

/// A bound hostfwd socket.
pub(crate) enum ForwardSocket {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

impl ForwardSocket {
    /// Binds the host side of `rule`; the error names the rule and what to change.
    pub(crate) fn bind(rule: &HostForward) -> Result<Self, TransportError> {
        let bound = match rule.host {
            SocketAddr::V6(both) if both.ip().is_unspecified() => {
                Self::bind_both_families(rule.protocol, rule.host).or_else(|_| {
                    let ipv4_only = SocketAddr::from((Ipv4Addr::UNSPECIFIED, both.port()));
                    Self::bind_one(rule.protocol, ipv4_only)
                })
            }
            host => Self::bind_one(rule.protocol, host),
        };
        bound.map_err(|e| inet_bind_error(&format!("hostfwd {:?} {}", rule.protocol, rule.host), e))
    }

    fn bind_one(protocol: ForwardProtocol, host: SocketAddr) -> io::Result<Self> {
        match protocol {
            ForwardProtocol::Tcp => TcpListener::bind(host).map(ForwardSocket::Tcp),
            ForwardProtocol::Udp => UdpSocket::bind(host).map(ForwardSocket::Udp),
        }
    }

    /// An IPv6 socket on `host` (an unspecified address) that takes IPv4 clients too,
    /// whatever net.ipv6.bindv6only says.
    fn bind_both_families(protocol: ForwardProtocol, host: SocketAddr) -> io::Result<Self> {
        let kind = match protocol {
            ForwardProtocol::Tcp => Type::STREAM,
            ForwardProtocol::Udp => Type::DGRAM,
        };
        let socket = Socket::new(Domain::IPV6, kind.nonblocking().cloexec(), None)?;
        socket.set_only_v6(false)?;
        if protocol == ForwardProtocol::Tcp {
            socket.set_reuse_address(true)?;
        }
        socket.bind(&host.into())?;
        Ok(match protocol {
            ForwardProtocol::Tcp => {
                socket.listen(1024)?;
                ForwardSocket::Tcp(TcpListener::from_std(std::net::TcpListener::from(socket)))
            }
            ForwardProtocol::Udp => {
                ForwardSocket::Udp(UdpSocket::from_std(std::net::UdpSocket::from(socket)))
            }
        })
    }

    /// Registers the socket with the loop under a token of its own.
    pub(crate) fn register(&mut self, cx: &mut Context<'_>) -> io::Result<Token> {
        match self {
            ForwardSocket::Tcp(listener) => cx.register_source(listener, Interest::READABLE),
            ForwardSocket::Udp(socket) => cx.register_source(socket, Interest::READABLE),
        }
    }
}

/// One hostfwd rule in force, and its socket.
pub(crate) struct Forward {
    pub rule: HostForward,
    pub socket: ForwardSocket,
}

/// The hostfwd rules in force. A removed rule's slot stays empty, so the ids of the
/// others (which UDP clients refer to) stay as they are.
#[derive(Default)]
pub(crate) struct Forwards {
    slots: Vec<Option<Forward>>,
}

impl Forwards {
    /// Adds `rule`, bound to `socket`, and returns its id.
    pub fn insert(&mut self, rule: HostForward, socket: ForwardSocket) -> ForwardId {
        self.slots.push(Some(Forward { rule, socket }));
        ForwardId(self.slots.len() - 1)
    }

    /// Rule `id`, unless it was removed.
    pub fn get(&self, id: ForwardId) -> Option<&Forward> {
        self.slots.get(id.0)?.as_ref()
    }

    /// Rule `id`, unless it was removed, to change.
    pub fn get_mut(&mut self, id: ForwardId) -> Option<&mut Forward> {
        self.slots.get_mut(id.0)?.as_mut()
    }

    /// The id of the rule of `protocol` listening at `host`.
    pub fn find(&self, protocol: ForwardProtocol, host: SocketAddr) -> Option<ForwardId> {
        self.iter()
            .find(|(_, forward)| forward.rule.protocol == protocol && forward.rule.host == host)
            .map(|(id, _)| id)
    }

    /// Takes rule `id` out of the table.
    pub fn remove(&mut self, id: ForwardId) -> Option<Forward> {
        self.slots.get_mut(id.0)?.take()
    }

    /// The rules in force, with their ids.
    pub fn iter(&self) -> impl Iterator<Item = (ForwardId, &Forward)> {
        self.slots.iter().enumerate().filter_map(|(index, slot)| Some((ForwardId(index), slot.as_ref()?)))
    }

    /// Closes every rule's socket.
    pub fn clear(&mut self) {
        self.slots.clear();
    }
}
