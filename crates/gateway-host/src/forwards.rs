//! The hostfwd listeners: the host socket of each `hostfwd=` rule, bound when the rule
//! is added and registered with the loop. What a client's connection or datagram means
//! is the gateway's business.

use std::io;

use mio::net::{TcpListener, UdpSocket};
use mio::{Interest, Token};
use vnet_gateway::{ForwardProtocol, HostForward};
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
        let bound = match rule.protocol {
            ForwardProtocol::Tcp => TcpListener::bind(rule.host).map(ForwardSocket::Tcp),
            ForwardProtocol::Udp => UdpSocket::bind(rule.host).map(ForwardSocket::Udp),
        };
        bound.map_err(|e| inet_bind_error(&format!("hostfwd {:?} {}", rule.protocol, rule.host), e))
    }

    /// Registers the socket with the loop under a token of its own.
    pub(crate) fn register(&mut self, cx: &mut Context<'_>) -> io::Result<Token> {
        match self {
            ForwardSocket::Tcp(listener) => cx.register_source(listener, Interest::READABLE),
            ForwardSocket::Udp(socket) => cx.register_source(socket, Interest::READABLE),
        }
    }
}
