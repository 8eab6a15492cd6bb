//! Host socket failures injected at every TCP state: whatever the error (out of
//! descriptors or buffers, reset, broken pipe, timed out), the connection ends in a
//! defined way: its host socket is aborted, its guest gets RST (or the ICMP error the
//! connect got), it leaves the table, and the failure is counted.

use smoltcp::wire::TcpControl;

use super::*;

const ERRNOS: [i32; 6] =
    [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ECONNRESET, libc::EPIPE, libc::ETIMEDOUT];
const DST: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 8080);

/// Where in its life a connection is when its host socket fails.
#[derive(Debug, Clone, Copy)]
enum Stage {
    /// The guest's SYN came; the host connect is under way.
    Connecting,
    /// The host connected; the SYN-ACK waits for the guest's ACK.
    SynAckSent,
    /// Both sides connected.
    Established,
    /// The guest sent FIN; the host may still send.
    GuestFinished,
    /// The host sent its end, which the guest got as FIN.
    HostFinished,
}

const STAGES: [Stage; 5] =
    [Stage::Connecting, Stage::SynAckSent, Stage::Established, Stage::GuestFinished, Stage::HostFinished];

/// A gateway with one connection at `stage`, every frame sent so far taken, and the
/// connection's flow and our initial sequence number (0 before there is one).
fn connection_at(stage: Stage) -> (Gateway, FakeHost, Instant, FlowId, u32) {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    host.tcp_accept = 1 << 20;
    let (flow, isn) = match stage {
        Stage::Connecting => {
            gateway.receive(&from_guest(&guest_tcp(DST, TcpControl::Syn, 100, None, &[])), now, &mut host);
            (*host.open.keys().next().unwrap(), 0)
        }
        Stage::SynAckSent => {
            gateway.receive(&from_guest(&guest_tcp(DST, TcpControl::Syn, 100, None, &[])), now, &mut host);
            let flow = *host.open.keys().next().unwrap();
            gateway.on_tcp_connected(flow, now, &mut host);
            (flow, 0)
        }
        Stage::Established => established(&mut gateway, &mut host, now, DST),
        Stage::GuestFinished => {
            let (flow, isn) = established(&mut gateway, &mut host, now, DST);
            let fin = guest_tcp(DST, TcpControl::Fin, 101, Some(isn + 1), &[]);
            gateway.receive(&from_guest(&fin), now, &mut host);
            (flow, isn)
        }
        Stage::HostFinished => {
            let (flow, isn) = established(&mut gateway, &mut host, now, DST);
            host.tcp_incoming.insert(flow, Vec::new());
            gateway.on_tcp_readable(flow, now, &mut host);
            (flow, isn)
        }
    };
    while gateway.pop_frame().is_some() {}
    (gateway, host, now, flow, isn)
}

/// Whether `frame` tells the guest the connection is gone: a RST, or an ICMP error.
fn ends_the_connection(frame: &[u8]) -> bool {
    let ethernet = EthernetFrame::new_checked(frame).unwrap();
    let ip = Ipv4Packet::new_checked(ethernet.payload()).unwrap();
    match ip.next_header() {
        smoltcp::wire::IpProtocol::Icmp => true,
        _ => tcp_of(frame).0 == TcpControl::Rst,
    }
}

fn assert_ended(gateway: &mut Gateway, host: &FakeHost, flow: FlowId, what: &str) {
    let told = gateway.pop_frame().unwrap_or_else(|| panic!("{what}: the guest is told"));
    assert!(ends_the_connection(told.as_bytes()), "{what}: RST or ICMP error");
    assert_eq!(host.closed, vec![(flow, true)], "{what}: the host socket is aborted");
    assert_eq!(gateway.flow_counts().tcp, 0, "{what}: the connection is gone");
    assert_eq!(gateway.counters().drops(GatewayDropReason::HostError), 1, "{what}: counted once");
    assert_eq!(gateway.guests().count(), 0, "{what}: its guest's budget has it back");
}

#[test]
fn a_socket_error_at_every_state_ends_the_connection_with_a_count() {
    for stage in STAGES {
        for errno in ERRNOS {
            let (mut gateway, mut host, now, flow, _) = connection_at(stage);
            gateway.on_tcp_error(flow, &io::Error::from_raw_os_error(errno), None, now, &mut host);
            assert_ended(&mut gateway, &host, flow, &format!("{stage:?}, errno {errno}"));
            let late = guest_tcp(DST, TcpControl::None, 101, Some(1), b"late");
            gateway.receive(&from_guest(&late), now, &mut host);
            let (control, ..) = tcp_of(gateway.pop_frame().expect("RST for a late segment").as_bytes());
            assert_eq!(
                control,
                TcpControl::Rst,
                "{stage:?}, errno {errno}: a late segment finds no connection"
            );
        }
    }
}

#[test]
fn a_failed_write_of_guest_data_ends_the_connection_at_once() {
    for errno in ERRNOS {
        let (mut gateway, mut host, now, flow, isn) = connection_at(Stage::Established);
        host.tcp_send_error = Some(errno);
        let data = guest_tcp(DST, TcpControl::Psh, 101, Some(isn + 1), b"payload");
        gateway.receive(&from_guest(&data), now, &mut host);
        assert_ended(&mut gateway, &host, flow, &format!("write, errno {errno}"));
    }
}

#[test]
fn a_failed_read_of_host_data_ends_the_connection_at_once() {
    for errno in ERRNOS {
        let (mut gateway, mut host, now, flow, _) = connection_at(Stage::Established);
        host.tcp_peek_error = Some(errno);
        gateway.on_tcp_readable(flow, now, &mut host);
        assert_ended(&mut gateway, &host, flow, &format!("read, errno {errno}"));
    }
}

#[test]
fn a_connect_the_host_cannot_start_is_refused_with_rst() {
    for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS] {
        let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
        host.tcp_connect_error = Some(errno);
        gateway.receive(&from_guest(&guest_tcp(DST, TcpControl::Syn, 100, None, &[])), now, &mut host);
        let (control, ..) = tcp_of(gateway.pop_frame().expect("RST").as_bytes());
        assert_eq!(control, TcpControl::Rst, "errno {errno}");
        assert_eq!(gateway.counters().drops(GatewayDropReason::HostSocket), 1);
        assert_eq!((gateway.flow_counts().tcp, gateway.guests().count()), (0, 0), "nothing held");
    }
}
