//! The host socket's error queue (IP_RECVERR) and TTLs: connecting with a guest's low
//! TTL so that the ICMP error which fails the connect can be read, and reading who sent
//! that error. Nothing here knows about flows or the gateway's state.

use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd};

use mio::net::TcpStream;
use nix::sys::socket::{self as nix_socket, sockopt, ControlMessageOwned, MsgFlags, SockaddrIn};
use socket2::{Domain, Socket, Type};
use vnet_gateway::HostIcmpError;

/// A non-blocking TCP connect to `remote` whose SYN carries `ttl`, with IP_RECVERR on so
/// an ICMP error that fails it can be read.
pub(crate) fn connect_with_ttl(remote: SocketAddr, ttl: u8) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(remote), Type::STREAM.nonblocking().cloexec(), None)?;
    socket.set_ttl(u32::from(ttl))?;
    nix_socket::setsockopt(&socket, sockopt::Ipv4RecvErr, &true)?;
    match socket.connect(&remote.into()) {
        Err(e) if e.raw_os_error() != Some(libc::EINPROGRESS) => return Err(e),
        _ => {}
    }
    Ok(TcpStream::from_std(std::net::TcpStream::from(socket)))
}

/// Drains the socket's error queue (IP_RECVERR) and returns the last ICMP error in it:
/// who sent it, and its type and code.
pub(crate) fn take_icmp_error(fd: BorrowedFd<'_>) -> Option<HostIcmpError> {
    let mut last = None;
    let mut cmsg = nix::cmsg_space!(libc::sock_extended_err, libc::sockaddr_in);
    let mut quoted = [0u8; 64];
    loop {
        let mut iov = [IoSliceMut::new(&mut quoted)];
        let flags = MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT;
        let Ok(message) = nix_socket::recvmsg::<SockaddrIn>(fd.as_raw_fd(), &mut iov, Some(&mut cmsg), flags)
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
            _ => None,
        });
        last = icmp.or(last);
    }
}

/// The length of the IPv4 header in front of what a raw socket received (all of it if
/// the header claims more than there is).
pub(crate) fn ipv4_header_len(packet: &[u8]) -> usize {
    packet.first().map_or(0, |byte| usize::from(byte & 0x0f) * 4).min(packet.len())
}
