//! Host services for tests, each answering one request per call so that a thread can
//! serve it until told to stop: a DNS upstream that answers every A query with
//! [`ANSWER`] (and stays silent for names starting with "silent"), a UDP echo, and a TCP
//! greeter that writes "hello" to each connection.

use std::io::{ErrorKind, Write};
use std::net::{TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// What the DNS upstream answers for every name but the silent ones.
pub const ANSWER: [u8; 4] = [192, 0, 2, 7];

/// Threads that each serve one service until this is dropped.
#[derive(Default)]
pub struct ServiceThreads {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl ServiceThreads {
    /// Calls `once` on a thread of its own until this is dropped; `once` must return
    /// within about 100 ms.
    pub fn serve(&mut self, mut once: impl FnMut() + Send + 'static) {
        let stop = Arc::clone(&self.stop);
        self.threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                once();
            }
        }));
    }
}

impl Drop for ServiceThreads {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A UDP socket on `address` that waits at most 100 ms per receive, for [`answer_dns`]
/// and [`echo_one`].
pub fn udp_service(address: &str) -> UdpSocket {
    let socket = UdpSocket::bind(address).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    socket
}

/// A non-blocking TCP listener on `address`, for [`greet_one`].
pub fn tcp_service(address: &str) -> TcpListener {
    let listener = TcpListener::bind(address).unwrap();
    listener.set_nonblocking(true).unwrap();
    listener
}

/// Answers one query with [`ANSWER`], unless its name starts with "silent".
pub fn answer_dns(socket: &UdpSocket) {
    let mut query = [0u8; 512];
    let Ok((len, from)) = socket.recv_from(&mut query) else {
        return;
    };
    if len < 17 || query[13..19] == *b"silent" {
        return;
    }
    let mut reply = query[..len].to_vec();
    reply[2] = 0x81;
    reply[3] = 0x80;
    reply[7] = 1;
    reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
    reply.extend_from_slice(&ANSWER);
    let _ = socket.send_to(&reply, from);
}

/// Sends one datagram back where it came from.
pub fn echo_one(socket: &UdpSocket) {
    let mut buf = [0u8; 2048];
    if let Ok((len, from)) = socket.recv_from(&mut buf) {
        let _ = socket.send_to(&buf[..len], from);
    }
}

/// Accepts one connection and writes "hello" to it.
pub fn greet_one(listener: &TcpListener) {
    match listener.accept() {
        Ok((mut stream, _)) => {
            let _ = stream.write_all(b"hello\n");
        }
        Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
        Err(e) => panic!("accept: {e}"),
    }
}
