//! Receiving host datagrams straight into pooled frame buffers ([`DatagramReceiver`]),
//! with headroom in front for the headers the gateway writes, so a UDP reply or a DNS
//! answer reaches the guest without a copy in vnet. What the datagrams mean is the
//! gateway's business.

use std::io::{self, IoSliceMut};
use std::os::fd::BorrowedFd;

use vnet_runtime::sys;
use vnet_wire::FrameBuffer;

/// Receives datagrams into a small pooled buffer when they fit (most do), else into a
/// large one held ready, whose front is filled from the small one.
pub(crate) struct DatagramReceiver {
    large: FrameBuffer,
}

impl Default for DatagramReceiver {
    fn default() -> Self {
        Self { large: FrameBuffer::large() }
    }
}

impl DatagramReceiver {
    /// Receives one datagram from `socket` into a buffer of its own.
    pub fn receive(&mut self, socket: BorrowedFd<'_>) -> io::Result<FrameBuffer> {
        let mut small = FrameBuffer::small();
        let small_room = small.spare_len();
        let len = {
            let tail = &mut self.large.spare_mut()[small_room..];
            sys::receive_datagram(socket, &mut [IoSliceMut::new(small.spare_mut()), IoSliceMut::new(tail)])?
        };
        if len <= small_room {
            small.commit(len);
            return Ok(small);
        }
        // One system call either way: the datagram's first part landed in the small
        // buffer and the rest right behind where it belongs in the large one.
        let mut large = std::mem::replace(&mut self.large, FrameBuffer::large());
        small.commit(small_room);
        large.spare_mut()[..small_room].copy_from_slice(small.data());
        large.commit(len);
        Ok(large)
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::os::fd::AsFd;

    use super::DatagramReceiver;

    #[test]
    fn small_and_large_datagrams_arrive_whole_with_headroom_for_headers() {
        let receiver_socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.connect(receiver_socket.local_addr().unwrap()).unwrap();
        let large: Vec<u8> = (0..30_000u32).map(|i| (i % 251) as u8).collect();
        sender.send(b"short").unwrap();
        sender.send(&large).unwrap();
        let mut receiver = DatagramReceiver::default();
        let first = receiver.receive(receiver_socket.as_fd()).unwrap();
        assert_eq!(first.data(), b"short");
        assert!(first.headroom() >= 14 + 40 + 8);
        let second = receiver.receive(receiver_socket.as_fd()).unwrap();
        assert_eq!(second.data(), &large[..], "the part in the small buffer is put in front");
        assert!(second.headroom() >= 14 + 40 + 8);
        receiver_socket.set_nonblocking(true).unwrap();
        let nothing = receiver.receive(receiver_socket.as_fd()).unwrap_err();
        assert_eq!(nothing.kind(), std::io::ErrorKind::WouldBlock);
    }
}
