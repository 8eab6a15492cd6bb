//! The host socket's error queue (IP_RECVERR, IPV6_RECVERR) and TTLs (hop limits over
//! IPv6): connecting with a guest's low TTL so that the ICMP error which fails the
//! connect can be read, and reading who sent that error (ICMP or ICMPv6). Nothing here
//! knows about flows or the gateway's state.

use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use mio::net::TcpStream;
use nix::sys::socket::{self as nix_socket, sockopt, ControlMessageOwned, MsgFlags, SockaddrStorage};
use socket2::{Domain, SockRef, Socket, Type};
use vnet_gateway::HostIcmpError;

/// A non-blocking TCP connect to `remote` whose SYN carries `ttl`, with the error queue
/// on so an ICMP error that fails it can be read.
pub(crate) fn connect_with_ttl(remote: SocketAddr, ttl: u8) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(remote), Type::STREAM.nonblocking().cloexec(), None)?;
    set_hop_limit(&socket, libc::c_int::from(ttl))?;
    set_receive_errors(&socket, true)?;
    match socket.connect(&remote.into()) {
        Err(e) if e.raw_os_error() != Some(libc::EINPROGRESS) => return Err(e),
        _ => {}
    }
    Ok(TcpStream::from_std(std::net::TcpStream::from(socket)))
}

/// Whether `socket` is an IPv6 one.
fn is_ipv6(socket: &impl AsFd) -> bool {
    SockRef::from(socket).domain().is_ok_and(|domain| domain == Domain::IPV6)
}

/// Turns `socket`'s error queue on or off (IP_RECVERR, or IPV6_RECVERR).
pub(crate) fn set_receive_errors(socket: &impl AsFd, on: bool) -> io::Result<()> {
    if is_ipv6(socket) {
        Ok(nix_socket::setsockopt(socket, sockopt::Ipv6RecvErr, &on)?)
    } else {
        Ok(nix_socket::setsockopt(socket, sockopt::Ipv4RecvErr, &on)?)
    }
}

/// Sets the TTL (the hop limit over IPv6) `socket` sends with; -1 restores the host's
/// default.
pub(crate) fn set_hop_limit(socket: &impl AsFd, ttl: libc::c_int) -> io::Result<()> {
    if is_ipv6(socket) {
        Ok(nix_socket::setsockopt(socket, sockopt::Ipv6Ttl, &ttl)?)
    } else {
        Ok(nix_socket::setsockopt(socket, sockopt::Ipv4Ttl, &ttl)?)
    }
}

/// Drains the socket's error queue (IP_RECVERR or IPV6_RECVERR) and returns the last
/// ICMP or ICMPv6 error in it: who sent it, its type and code, and the start of the
/// datagram it is about.
pub(crate) fn take_icmp_error(fd: BorrowedFd<'_>) -> Option<HostIcmpError> {
    let mut last = None;
    let mut cmsg = nix::cmsg_space!(libc::sock_extended_err, libc::sockaddr_in6);
    let mut quoted = [0u8; 64];
    loop {
        let mut iov = [IoSliceMut::new(&mut quoted)];
        let flags = MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT;
        let (len, icmp) = {
            let Ok(message) =
                nix_socket::recvmsg::<SockaddrStorage>(fd.as_raw_fd(), &mut iov, Some(&mut cmsg), flags)
            else {
                return last;
            };
            let Ok(mut cmsgs) = message.cmsgs() else {
                return last;
            };
            let icmp = cmsgs.find_map(|cmsg| match cmsg {
                ControlMessageOwned::Ipv4RecvErr(error, Some(offender))
                    if error.ee_origin == libc::SO_EE_ORIGIN_ICMP =>
                {
                    let from = Ipv4Addr::from(u32::from_be(offender.sin_addr.s_addr));
                    HostIcmpError::from_message(from, error.ee_type, error.ee_code)
                }
                ControlMessageOwned::Ipv6RecvErr(error, Some(offender))
                    if error.ee_origin == libc::SO_EE_ORIGIN_ICMP6 =>
                {
                    let from = Ipv6Addr::from(offender.sin6_addr.s6_addr);
                    HostIcmpError::from_icmpv6_message(from, error.ee_type, error.ee_code)
                }
                _ => None,
            });
            (message.bytes, icmp)
        };
        // The data that comes with an error is the start of the datagram it is about.
        last = icmp.map(|icmp| icmp.quoting(&quoted[..len.min(quoted.len())])).or(last);
    }
}

/// The length of the IPv4 header in front of what a raw socket received (all of it if
/// the header claims more than there is).
pub(crate) fn ipv4_header_len(packet: &[u8]) -> usize {
    packet.first().map_or(0, |byte| usize::from(byte & 0x0f) * 4).min(packet.len())
}
