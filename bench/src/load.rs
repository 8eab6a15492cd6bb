//! The bench's own load generators and servers: request/response latency, connection
//! rate, UDP blasting, and holding many connections open. Clients run inside guest
//! namespaces as `vnet-bench tool ...` and print one JSON line; servers run as threads of
//! the bench (in its host namespace) or as tools inside a guest.
//!
//! Every loop here is bounded by a count and a time. Nothing here knows which backend
//! carries the traffic.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use serde::{Deserialize, Serialize};

/// Connections being set up at once by [`hold_connections`].
const CONNECTS_IN_FLIGHT: usize = 256;
/// How long one connection of a hold may take to get its byte.
const HOLD_DEADLINE: Duration = Duration::from_secs(60);

/// File descriptors the bench asks for: enough for the idle-flows measurement, where
/// the bench's servers, the hold tools and vnet each hold 60,000 sockets.
const WANTED_FILES: u64 = 200_000;

/// Raises the file limit for tools holding many sockets (and the backends they start,
/// which inherit it): to [`WANTED_FILES`] where the process may raise its hard limit
/// (root), else the soft limit to the hard one.
pub fn raise_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if setrlimit(Resource::RLIMIT_NOFILE, WANTED_FILES, WANTED_FILES).is_ok() {
        return;
    }
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// How many files this process may open.
pub fn file_limit() -> u64 {
    use nix::sys::resource::{getrlimit, Resource};
    getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft)
}

/// A TCP listener on every address of the bench host of the IP version of `any`
/// (0.0.0.0 or ::), port chosen by the kernel, with a backlog deep enough for connection
/// storms. An IPv6 listener takes IPv6 alone, so a backend that reached it over IPv4
/// could not pass for one that carried IPv6.
pub fn listen_any(any: IpAddr) -> Result<TcpListener> {
    use nix::sys::socket::{bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog};
    use nix::sys::socket::{SockFlag, SockType, SockaddrStorage};
    let family = if any.is_ipv6() { AddressFamily::Inet6 } else { AddressFamily::Inet };
    let listener = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .with_context(|| format!("a TCP socket to listen on {any}"))?;
    if any.is_ipv6() {
        setsockopt(&listener, sockopt::Ipv6V6Only, &true).context("IPV6_V6ONLY")?;
    }
    let address = SockaddrStorage::from(SocketAddr::new(any, 0));
    bind(listener.as_raw_fd(), &address).with_context(|| format!("binding to {any}"))?;
    listen(&listener, Backlog::MAXCONN).with_context(|| format!("listening on {any}"))?;
    Ok(TcpListener::from(listener))
}

/// Latency percentiles of a request/response run.
#[derive(Debug, Serialize, Deserialize)]
pub struct Latency {
    /// Median round trip, in microseconds.
    pub p50_us: f64,
    /// 99th percentile round trip, in microseconds.
    pub p99_us: f64,
    /// Round trips measured.
    pub samples: usize,
}

/// A connection to `server` for 1-byte round trips: no Nagle, and a read that gives up
/// after `patience`.
fn round_trip_connection(server: SocketAddr, patience: Duration) -> Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&server, Duration::from_secs(10))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(patience))?;
    Ok(stream)
}

/// Client: 1-byte ping-pong with `server` for `duration` (after a short warm-up).
pub fn request_response(server: SocketAddr, duration: Duration) -> Result<Latency> {
    let mut stream = round_trip_connection(server, Duration::from_secs(5))?;
    let mut byte = [0u8; 1];
    let mut round_trip = || -> Result<Duration> {
        let start = Instant::now();
        stream.write_all(&byte)?;
        stream.read_exact(&mut byte)?;
        Ok(start.elapsed())
    };
    for _ in 0..100 {
        round_trip()?;
    }
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed() < duration && samples.len() < 10_000_000 {
        samples.push(round_trip()?);
    }
    samples.sort_unstable();
    let percentile = |p: usize| samples[(samples.len() * p / 100).min(samples.len() - 1)].as_secs_f64() * 1e6;
    Ok(Latency { p50_us: percentile(50), p99_us: percentile(99), samples: samples.len() })
}

/// What a fixed number of round trips did.
#[derive(Debug, Serialize, Deserialize)]
pub struct RoundTrips {
    /// Round trips made.
    pub count: u64,
}

/// Client: `count` 1-byte round trips with `server`, as fast as they go.
pub fn round_trips(server: SocketAddr, count: u64) -> Result<RoundTrips> {
    let mut stream = round_trip_connection(server, Duration::from_secs(30))?;
    let mut byte = [0u8; 1];
    for _ in 0..count {
        stream.write_all(&byte)?;
        stream.read_exact(&mut byte)?;
    }
    Ok(RoundTrips { count })
}

/// Server: echoes every byte of each connection, one thread per connection, until the
/// returned flag is set.
pub fn serve_echo(listener: TcpListener) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            if stopping.load(Ordering::Relaxed) {
                return;
            }
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_nodelay(true);
            std::thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                while let Ok(n @ 1..) = stream.read(&mut buffer) {
                    if stream.write_all(&buffer[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    stop
}

/// Connections per second of a run.
#[derive(Debug, Serialize, Deserialize)]
pub struct ConnectionRate {
    /// Completed connect / 1 byte each way / close cycles per second.
    pub per_second: f64,
    /// Cycles that failed.
    pub failures: u64,
}

/// Client: connect, send 1 byte, read 1 byte, close; as many times as fit in `duration`.
pub fn connection_rate(server: SocketAddr, duration: Duration) -> Result<ConnectionRate> {
    let cycle = || -> io::Result<()> {
        let mut stream = TcpStream::connect_timeout(&server, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(b"x")?;
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte)
    };
    let (mut done, mut failures) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < duration && failures < 1000 {
        match cycle() {
            Ok(()) => done += 1,
            Err(_) => failures += 1,
        }
    }
    Ok(ConnectionRate { per_second: done as f64 / start.elapsed().as_secs_f64(), failures })
}

/// Server: for each connection, reads a byte, answers one and closes.
pub fn serve_one_byte_and_close(listener: TcpListener) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_nodelay(true);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut byte = [0u8; 1];
            if stream.read_exact(&mut byte).is_ok() {
                let _ = stream.write_all(&byte);
            }
        }
    });
}

/// What a UDP sender sent.
#[derive(Debug, Serialize, Deserialize)]
pub struct UdpSent {
    /// Datagrams sent.
    pub datagrams: u64,
    /// How long sending took, in seconds.
    pub seconds: f64,
}

/// Client: sends `size`-byte datagrams to `server` as fast as it can for `duration`.
pub fn udp_send(server: SocketAddr, size: usize, duration: Duration) -> Result<UdpSent> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.connect(server)?;
    let payload = vec![0x5au8; size];
    let mut datagrams = 0u64;
    let start = Instant::now();
    while start.elapsed() < duration {
        for _ in 0..64 {
            // ENOBUFS and ECONNREFUSED under load are the backend's to explain: keep going.
            if socket.send(&payload).is_ok() {
                datagrams += 1;
            }
        }
    }
    Ok(UdpSent { datagrams, seconds: start.elapsed().as_secs_f64() })
}

/// Client: sends `size`-byte datagrams to `server` as fast as it can, for `duration` or
/// `count` datagrams, whichever comes first.
pub fn udp_flood(server: SocketAddr, size: usize, duration: Duration, count: u64) -> Result<UdpSent> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.connect(server)?;
    let payload = vec![0x5au8; size];
    let mut datagrams = 0u64;
    let start = Instant::now();
    while start.elapsed() < duration && datagrams < count {
        for _ in 0..64 {
            // ENOBUFS from a full queue is the path's to explain: keep going.
            if socket.send(&payload).is_ok() {
                datagrams += 1;
            }
        }
    }
    Ok(UdpSent { datagrams, seconds: start.elapsed().as_secs_f64() })
}

/// What a UDP counter received.
#[derive(Debug, Serialize, Deserialize)]
pub struct UdpReceived {
    /// Datagrams of the expected size.
    pub datagrams: u64,
}

/// Server: counts `size`-byte datagrams arriving on `port` (every address) after printing
/// a line to say it listens, until stdin ends and then nothing has come for a moment,
/// or `limit` has passed.
pub fn udp_count(port: u16, size: usize, limit: Duration) -> Result<UdpReceived> {
    const QUIET: Duration = Duration::from_millis(300);
    let socket = UdpSocket::bind(("0.0.0.0", port))?;
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::RcvBufForce, &(8 << 20))
        .or_else(|_| nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::RcvBuf, &(8 << 20)))?;
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let ended = Arc::new(AtomicBool::new(false));
    let ending = ended.clone();
    std::thread::spawn(move || {
        let _ = io::copy(&mut io::stdin(), &mut io::sink());
        ending.store(true, Ordering::Relaxed);
    });
    println!("listening");
    let start = Instant::now();
    let mut last = Instant::now();
    let mut datagrams = 0u64;
    let mut buffer = vec![0u8; 65536];
    while start.elapsed() < limit && !(ended.load(Ordering::Relaxed) && last.elapsed() > QUIET) {
        if let Ok(n) = socket.recv(&mut buffer) {
            datagrams += u64::from(n == size);
            last = Instant::now();
        }
    }
    Ok(UdpReceived { datagrams })
}

/// A UDP socket on the bench host counting what arrives.
pub struct UdpSink {
    /// The port it listens on.
    pub port: u16,
    received: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpSink {
    /// Starts counting on a fresh port.
    pub fn start() -> Result<Self> {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::RcvBufForce, &(8 << 20)).or_else(
            |_| nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::RcvBuf, &(8 << 20)),
        )?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let port = socket.local_addr()?.port();
        let (received, bytes, stop) = (Arc::default(), Arc::default(), Arc::default());
        let counters = (Arc::clone(&received), Arc::clone(&bytes), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let (received, bytes, stop): (Arc<AtomicU64>, Arc<AtomicU64>, Arc<AtomicBool>) = counters;
            let mut buffer = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buffer) {
                    received.fetch_add(1, Ordering::Relaxed);
                    bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        });
        Ok(Self { port, received, bytes, stop, thread: Some(thread) })
    }

    /// Datagrams and bytes received so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.received.load(Ordering::Relaxed), self.bytes.load(Ordering::Relaxed))
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How a hold of many connections went.
#[derive(Debug, Serialize, Deserialize)]
pub struct Held {
    /// Connections that got the server's byte.
    pub connected: usize,
    /// Connections asked for.
    pub wanted: usize,
}

/// Client: opens `count` connections to `server`, at most [`CONNECTS_IN_FLIGHT`] being
/// set up at once, and counts those that receive the server's first byte. Returns the
/// open connections with the tally.
pub fn hold_connections(server: SocketAddr, count: usize) -> Result<(Vec<TcpStream>, Held)> {
    let mut held = Vec::with_capacity(count);
    let mut pending: Vec<(TcpStream, Instant)> = Vec::new();
    let mut started = 0;
    let overall = Instant::now();
    while (started < count || !pending.is_empty()) && overall.elapsed() < HOLD_DEADLINE * 2 {
        while started < count && pending.len() < CONNECTS_IN_FLIGHT {
            started += 1;
            if let Ok(stream) = start_connect(server) {
                pending.push((stream, Instant::now()));
            }
        }
        let mut poll_fds: Vec<PollFd> =
            pending.iter().map(|(stream, _)| PollFd::new(stream.as_fd(), PollFlags::POLLIN)).collect();
        nix::poll::poll(&mut poll_fds, PollTimeout::from(100u16))?;
        let ready: Vec<bool> = poll_fds.iter().map(|fd| fd.any().unwrap_or(false)).collect();
        drop(poll_fds);
        let mut still_pending = Vec::with_capacity(pending.len());
        for ((mut stream, since), is_ready) in pending.drain(..).zip(ready) {
            let mut byte = [0u8; 1];
            if is_ready {
                if matches!(stream.read(&mut byte), Ok(1)) {
                    held.push(stream);
                }
            } else if since.elapsed() < HOLD_DEADLINE {
                still_pending.push((stream, since));
            }
        }
        pending = still_pending;
    }
    let connected = held.len();
    Ok((held, Held { connected, wanted: count }))
}

/// A non-blocking connect to `server` under way.
fn start_connect(server: SocketAddr) -> io::Result<TcpStream> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    let SocketAddr::V4(v4) = server else {
        return Err(io::ErrorKind::Unsupported.into());
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    match connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(v4)) {
        Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => Ok(TcpStream::from(fd)),
        Err(e) => Err(e.into()),
    }
}

/// Server: writes one byte to each connection and keeps it open until `stop` is set (or
/// the process ends). Counts accepted connections.
pub fn serve_and_hold(listener: TcpListener, stop: Arc<AtomicBool>) -> Result<Arc<AtomicU64>> {
    listener.set_nonblocking(true)?;
    let accepted = Arc::new(AtomicU64::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    let _ = stream.set_nonblocking(false);
                    if stream.write_all(b"!").is_ok() {
                        held.push(stream);
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
                    let _ = nix::poll::poll(&mut fds, PollTimeout::from(100u16));
                }
                Err(_) => {}
            }
        }
    });
    Ok(accepted)
}

/// Prints `value` as one JSON line on stdout.
pub fn print_json(value: &impl Serialize) -> Result<()> {
    println!("{}", serde_json::to_string(value).context("serialising a result")?);
    Ok(())
}
