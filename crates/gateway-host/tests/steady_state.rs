//! Steady traffic allocates nothing per frame. A counting global allocator counts every
//! allocation made on the network's loop thread while real traffic flows on two paths:
//! - a QEMU stream peer's TCP segments through the gateway to a host socket (and the
//!   gateway's ACKs back),
//! - a QEMU stream peer's UDP datagrams through the gateway to a host UDP socket that
//!   echoes them, the echoes received straight into frames for the peer, and
//! - ping and bulk TCP between two network namespaces whose taps are ports of the
//!   switch (tap → switch → tap), with TCP segments of up to 64 KiB.
//!
//! Each path is warmed up first, so pools and tables have reached their working size;
//! what is counted afterwards is what a frame costs. A new pooled frame buffer is
//! counted apart: the pools may still grow toward their caps when more frames are in
//! flight than during the warm-up, which the caps bound, whatever the traffic.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Packet, Ipv4Repr,
    TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket, UdpRepr,
};
use vnet_gateway::GatewayConfig;
use vnet_gateway_host::GatewayNetwork;
use vnet_runtime::{Network, Remote, Supervisor};
use vnet_switch::{PortPolicy, SwitchConfig};
use vnet_transport::{netns, stream, tap, NamespaceRef};
use vnet_wire::frame::{LARGE_BUFFER, SMALL_BUFFER};

/// New pooled buffers a measured phase may still add: the large pool's cap, which no
/// amount of traffic can pass.
const POOL_GROWTH_BOUND: u64 = 256;

/// Other allocations a measured phase may still make: a burst larger than any before
/// grows a queue or a batch list to a new high-water mark, once per doubling. An
/// allocation per frame would make thousands.
const HIGH_WATER_ALLOCATIONS: u64 = 32;

/// Counts allocations made on threads that asked to be counted, each network's loop
/// thread into a counter of its own (tests run side by side).
struct CountingAllocator;

static COUNTERS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
static NEW_BUFFERS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
static NEXT_COUNTER: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static COUNTER_OF_THIS_THREAD: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Whether an allocation of `size` bytes is a pooled frame buffer (or the vector it is
/// built from), small or large.
fn is_frame_buffer(size: usize) -> bool {
    const RC_HEADER: usize = 16;
    [SMALL_BUFFER, LARGE_BUFFER, SMALL_BUFFER + RC_HEADER, LARGE_BUFFER + RC_HEADER].contains(&size)
}

fn count_one(size: usize) {
    if let Some(counter) = COUNTER_OF_THIS_THREAD.with(Cell::get) {
        let counters = if is_frame_buffer(size) { &NEW_BUFFERS } else { &COUNTERS };
        counters[counter].fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is passed on unchanged to the system allocator, which upholds
// GlobalAlloc's contract; counting touches only an atomic and a const thread-local.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one(layout.size());
        // SAFETY: the caller's layout obligations are passed on as they are.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_one(layout.size());
        // SAFETY: as for alloc.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one(new_size);
        // SAFETY: `ptr` came from this allocator, which is the system's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, which is the system's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Stops the network when a byte arrives on its socket.
struct StopOnByte(UnixStream);

impl Supervisor for StopOnByte {
    fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    fn on_readable(&mut self) -> Option<i32> {
        Some(0)
    }
}

/// A network running on a thread of its own, built there by `build`.
struct RunningNetwork {
    remote: Remote,
    counter: usize,
    stop: UnixStream,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningNetwork {
    fn start(build: impl FnOnce(&mut Network) + Send + 'static) -> Self {
        let (stop, supervisor_end) = UnixStream::pair().unwrap();
        let (sender, receiver) = mpsc::channel();
        let counter = NEXT_COUNTER.fetch_add(1, Ordering::Relaxed);
        let thread = std::thread::spawn(move || {
            let mut network = Network::new(SwitchConfig::default()).unwrap();
            build(&mut network);
            sender.send(network.remote()).unwrap();
            COUNTER_OF_THIS_THREAD.with(|count| count.set(Some(counter)));
            network.run(&mut StopOnByte(supervisor_end)).unwrap();
        });
        Self { remote: receiver.recv().unwrap(), counter, stop, thread: Some(thread) }
    }

    /// Allocations on the loop thread so far, new frame buffers aside. Asking runs a
    /// job on the loop, whose own channel and box are not counted.
    fn allocations(&self) -> u64 {
        COUNTERS[self.counter].load(Ordering::Relaxed)
    }

    /// Frame buffers the loop thread's pools have grown by so far (two allocations
    /// each).
    fn new_buffers(&self) -> u64 {
        NEW_BUFFERS[self.counter].load(Ordering::Relaxed) / 2
    }

    /// Frames the switch has received on all ports.
    fn frames_received(&self) -> u64 {
        self.remote
            .run(|network| network.switch().ports().map(|(_, port)| port.counters().rx_frames).sum())
            .unwrap()
    }
}

impl Drop for RunningNetwork {
    fn drop(&mut self) {
        let _ = self.stop.write_all(&[1]);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

const GUEST_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

/// A QEMU stream peer that speaks TCP to the gateway by hand.
struct StreamGuest {
    socket: UnixStream,
    gateway_mac: EthernetAddress,
    remote: SocketAddrV4,
    seq: u32,
    ack: u32,
}

impl StreamGuest {
    fn send_frame(&mut self, frame: &[u8]) {
        self.socket.write_all(&(frame.len() as u32).to_be_bytes()).unwrap();
        self.socket.write_all(frame).unwrap();
    }

    fn recv_frame(&mut self) -> Vec<u8> {
        let mut prefix = [0u8; 4];
        self.socket.read_exact(&mut prefix).unwrap();
        let mut frame = vec![0u8; u32::from_be_bytes(prefix) as usize];
        self.socket.read_exact(&mut frame).unwrap();
        frame
    }

    fn segment(&self, control: TcpControl, payload: &[u8]) -> Vec<u8> {
        let tcp = TcpRepr {
            src_port: 40000,
            dst_port: self.remote.port(),
            control,
            seq_number: TcpSeqNumber(self.seq as i32),
            ack_number: (control != TcpControl::Syn).then_some(TcpSeqNumber(self.ack as i32)),
            window_len: 65535,
            window_scale: None,
            max_seg_size: (control == TcpControl::Syn).then_some(1460),
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        };
        let ip = Ipv4Repr {
            src_addr: GUEST_IP,
            dst_addr: *self.remote.ip(),
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let mut frame = vec![0u8; 14 + 20 + tcp.buffer_len()];
        EthernetRepr { src_addr: GUEST_MAC, dst_addr: self.gateway_mac, ethertype: EthernetProtocol::Ipv4 }
            .emit(&mut EthernetFrame::new_unchecked(&mut frame));
        let checksums = ChecksumCapabilities::default();
        ip.emit(&mut Ipv4Packet::new_unchecked(&mut frame[14..]), &checksums);
        tcp.emit(
            &mut TcpPacket::new_unchecked(&mut frame[34..]),
            &GUEST_IP.into(),
            &(*self.remote.ip()).into(),
            &checksums,
        );
        frame
    }

    /// The TCP header of a frame from the gateway: control, seq, ack.
    fn tcp_of(frame: &[u8]) -> Option<(TcpControl, u32, u32)> {
        let ethernet = EthernetFrame::new_checked(frame).ok()?;
        let ip = Ipv4Packet::new_checked(ethernet.payload()).ok()?;
        if ip.next_header() != IpProtocol::Tcp {
            return None;
        }
        let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
        let control = if tcp.syn() { TcpControl::Syn } else { TcpControl::None };
        Some((control, tcp.seq_number().0 as u32, tcp.ack_number().0 as u32))
    }

    /// Receives frames until the gateway's next TCP segment.
    fn recv_segment(&mut self) -> (TcpControl, u32, u32) {
        loop {
            if let Some(segment) = Self::tcp_of(&self.recv_frame()) {
                return segment;
            }
        }
    }

    /// Sends one data segment and waits for the gateway's ACK of it.
    fn send_data(&mut self, payload: &[u8]) {
        let frame = self.segment(TcpControl::Psh, payload);
        self.send_frame(&frame);
        self.seq = self.seq.wrapping_add(payload.len() as u32);
        while self.recv_segment().2 != self.seq {}
    }
}

/// A network with a stream listener and the gateway, and a QEMU stream peer connected to
/// it that talks to port `port` of the gateway's address (the host's loopback). The
/// directory holds the listener's socket.
fn stream_guest_of_a_gateway(port: u16) -> (RunningNetwork, StreamGuest, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("vnet.sock");
    let config =
        GatewayConfig { dns_upstreams: vec!["127.0.0.1:9".parse().unwrap()], ..GatewayConfig::default() };
    let gateway_mac = config.mac();
    let remote = SocketAddrV4::new(config.host, port);
    let path = socket_path.clone();
    let network = RunningNetwork::start(move |network| {
        network
            .add_endpoint(Box::new(stream::Listener::bind_unix(&path).unwrap()), PortPolicy::default())
            .unwrap();
        network.add_gateway(config, PortPolicy::default()).unwrap();
    });
    let socket = UnixStream::connect(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    (network, StreamGuest { socket, gateway_mac, remote, seq: 0, ack: 0 }, dir)
}

#[test]
fn a_stream_guests_tcp_to_a_host_socket_allocates_nothing_per_frame() {
    let host = TcpListener::bind("127.0.0.1:0").unwrap();
    let (network, mut guest, _dir) = stream_guest_of_a_gateway(host.local_addr().unwrap().port());
    guest.seq = 1000;
    let before_connection = network.allocations();
    let syn = guest.segment(TcpControl::Syn, &[]);
    guest.send_frame(&syn);
    guest.seq += 1;
    let (mut host_side, _) = host.accept().unwrap();
    let (control, isn, _) = guest.recv_segment();
    assert_eq!(control, TcpControl::Syn, "the gateway answers the SYN");
    guest.ack = isn.wrapping_add(1);
    let ack = guest.segment(TcpControl::None, &[]);
    guest.send_frame(&ack);
    assert!(network.allocations() > before_connection, "the counter sees what a new connection allocates");

    let payload = [0x5a; 1400];
    let mut received = vec![0u8; payload.len()];
    let mut exchange = |guest: &mut StreamGuest, count: usize| {
        for _ in 0..count {
            guest.send_data(&payload);
            host_side.read_exact(&mut received).unwrap();
        }
    };
    exchange(&mut guest, 300);
    let (frames_before, allocations_before) = (network.frames_received(), network.allocations());
    exchange(&mut guest, 3000);
    let frames = network.frames_received() - frames_before;
    let allocations = network.allocations() - allocations_before;
    eprintln!(
        "stream guest to host socket: {allocations} allocations on the loop thread for {frames} frames"
    );
    assert_eq!(received, payload, "the host socket got the guest's bytes");
    assert!(frames >= 6000, "{frames} frames crossed the switch");
    assert!(
        allocations <= HIGH_WATER_ALLOCATIONS,
        "{allocations} allocations on the loop thread for {frames} frames"
    );
}

/// A UDP datagram from the guest's port 40000 to `remote`.
fn guest_udp(gateway_mac: EthernetAddress, remote: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let udp = UdpRepr { src_port: 40000, dst_port: remote.port() };
    let udp_len = 8 + payload.len();
    let ip = Ipv4Repr {
        src_addr: GUEST_IP,
        dst_addr: *remote.ip(),
        next_header: IpProtocol::Udp,
        payload_len: udp_len,
        hop_limit: 64,
    };
    let mut frame = vec![0u8; 14 + 20 + udp_len];
    EthernetRepr { src_addr: GUEST_MAC, dst_addr: gateway_mac, ethertype: EthernetProtocol::Ipv4 }
        .emit(&mut EthernetFrame::new_unchecked(&mut frame));
    let checksums = ChecksumCapabilities::default();
    ip.emit(&mut Ipv4Packet::new_unchecked(&mut frame[14..]), &checksums);
    udp.emit(
        &mut UdpPacket::new_unchecked(&mut frame[34..]),
        &GUEST_IP.into(),
        &(*remote.ip()).into(),
        payload.len(),
        |buffer| buffer.copy_from_slice(payload),
        &checksums,
    );
    frame
}

/// The UDP payload of a frame from the gateway, if it carries one.
fn udp_payload_of(frame: &[u8]) -> Option<Vec<u8>> {
    let ethernet = EthernetFrame::new_checked(frame).ok()?;
    let ip = Ipv4Packet::new_checked(ethernet.payload()).ok()?;
    if ip.next_header() != IpProtocol::Udp {
        return None;
    }
    Some(UdpPacket::new_checked(ip.payload()).ok()?.payload().to_vec())
}

#[test]
fn a_stream_guests_udp_echoed_by_a_host_socket_allocates_nothing_per_frame() {
    let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
    echo.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let (network, mut guest, _dir) = stream_guest_of_a_gateway(echo.local_addr().unwrap().port());
    let (gateway_mac, remote) = (guest.gateway_mac, guest.remote);

    let mut echoed = [0u8; 2048];
    let mut round_trip = |guest: &mut StreamGuest, payload: &[u8]| {
        guest.send_frame(&guest_udp(gateway_mac, remote, payload));
        let (len, from) = echo.recv_from(&mut echoed).unwrap();
        echo.send_to(&echoed[..len], from).unwrap();
        loop {
            if let Some(reply) = udp_payload_of(&guest.recv_frame()) {
                return reply;
            }
        }
    };
    let payload = [0x3c; 1000];
    for _ in 0..300 {
        round_trip(&mut guest, &payload);
    }
    let (frames_before, allocations_before) = (network.frames_received(), network.allocations());
    for _ in 0..3000 {
        assert_eq!(round_trip(&mut guest, &payload), payload, "the guest gets the echo whole");
    }
    let frames = network.frames_received() - frames_before;
    let allocations = network.allocations() - allocations_before;
    eprintln!("stream guest's UDP echoed by a host socket: {allocations} allocations on the loop thread for {frames} frames");
    assert!(frames >= 6000, "{frames} frames crossed the switch");
    assert!(
        allocations <= HIGH_WATER_ALLOCATIONS,
        "{allocations} allocations on the loop thread for {frames} frames"
    );
}

/// A network namespace made for this test, with loopback up; deleted on drop.
struct TestNamespace(String);

impl TestNamespace {
    fn create(suffix: &str) -> Self {
        let name = format!("vnet-steady-{}-{suffix}", std::process::id());
        run(&["ip", "netns", "add", &name]);
        run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Self(name)
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }

    fn exec(&self, args: &[&str]) -> std::process::Output {
        let output =
            std::process::Command::new("ip").args(["netns", "exec", &self.0]).args(args).output().unwrap();
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        output
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(args: &[&str]) {
    let output = std::process::Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn ping_and_bulk_tcp_between_two_taps_allocate_nothing_per_frame() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test makes network namespaces: run it as root");
    let (a, b) = (TestNamespace::create("a"), TestNamespace::create("b"));
    let (a_path, b_path) = (a.path(), b.path());
    let network = RunningNetwork::start(move |network| {
        for (path, name) in [(a_path, "a"), (b_path, "b")] {
            let device = netns::open_tap_in(&NamespaceRef::Path(path.into()), "eth0").unwrap();
            network
                .add_endpoint(Box::new(tap::TapPort::new(device, name.to_owned())), PortPolicy::default())
                .unwrap();
        }
    });
    a.exec(&["ip", "addr", "add", "10.77.0.1/24", "dev", "eth0"]);
    b.exec(&["ip", "addr", "add", "10.77.0.2/24", "dev", "eth0"]);
    let ping = |count: &str| a.exec(&["ping", "-q", "-f", "-c", count, "-W", "5", "10.77.0.2"]);
    let mut server = std::process::Command::new("ip")
        .args(["netns", "exec", &b.0, "iperf3", "-s", "-1", "-B", "10.77.0.2", "-p", "5299"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let bulk = || {
        a.exec(&["iperf3", "-c", "10.77.0.2", "-p", "5299", "-n", "200M", "--connect-timeout", "20000"]);
    };
    // Warm up both paths: the first ping resolves ARP, the first transfer fills the pools.
    ping("200");
    wait_for_listener(&b, 5299);
    bulk();
    server.wait().unwrap();
    let mut server = std::process::Command::new("ip")
        .args(["netns", "exec", &b.0, "iperf3", "-s", "-1", "-B", "10.77.0.2", "-p", "5299"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_listener(&b, 5299);

    let (frames_before, allocations_before) = (network.frames_received(), network.allocations());
    let buffers_before = network.new_buffers();
    ping("2000");
    bulk();
    server.wait().unwrap();
    let frames = network.frames_received() - frames_before;
    let allocations = network.allocations() - allocations_before;
    let new_buffers = network.new_buffers() - buffers_before;
    eprintln!(
        "tap to tap: {allocations} allocations and {new_buffers} new pooled buffers for {frames} frames"
    );
    assert!(frames >= 4000, "{frames} frames crossed the switch");
    assert!(
        allocations <= HIGH_WATER_ALLOCATIONS,
        "{allocations} allocations on the loop thread for {frames} frames"
    );
    assert!(new_buffers <= POOL_GROWTH_BOUND, "the pools grew by {new_buffers} buffers");
}

/// Waits until a TCP listener is up at `port` in `namespace`.
fn wait_for_listener(namespace: &TestNamespace, port: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let needle = format!(":{port} ");
    while !String::from_utf8_lossy(&namespace.exec(&["ss", "-ltn"]).stdout).contains(&needle) {
        assert!(std::time::Instant::now() < deadline, "iperf3 did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
}
