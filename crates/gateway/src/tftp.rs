//! A read-only TFTP server on the gateway's address (`tftp=DIR`), for PXE: RFC 1350 with
//! the option extension (RFC 2347) and its blksize, timeout and tsize options (RFC 2348,
//! 2349), and windowsize (RFC 7440).
//!
//! A guest's read request on port 69 starts a transfer answered from a port of its own
//! (the transfer id). Names are checked here: absolute paths, `..`, backslashes and
//! control characters are refused; the host side opens the file only beneath the root,
//! so a symlink cannot lead out either. Writes are refused. Each transfer has a
//! deadline and a retry budget, and transfers at once are bounded in all and per guest.
//!
//! The file is read through the host trait block by block; nothing here opens a file
//! or knows frames.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::{debug, info};

use crate::host::HostSockets;

/// The TFTP port.
pub const PORT: u16 = 69;
/// Most transfers at once, and per switch port: a port, unlike a source address, is
/// not a guest's to make up, so one guest cannot take every transfer.
const MAX_TRANSFERS: usize = 64;
const MAX_TRANSFERS_PER_PORT: usize = 4;
/// A whole transfer may take this long.
const TRANSFER_DEADLINE: Duration = Duration::from_secs(600);
/// How often a window is sent again without an answer before the transfer is dropped.
const MAX_RETRIES: u32 = 5;
const DEFAULT_BLOCK_SIZE: usize = 512;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// The largest window a client may ask for.
const MAX_WINDOW: u16 = 64;
/// Transfer ids (source ports) are taken from here.
const TRANSFER_PORTS: std::ops::RangeInclusive<u16> = 40000..=40999;

const RRQ: u16 = 1;
const WRQ: u16 = 2;
const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;
const OACK: u16 = 6;

/// TFTP error codes (RFC 1350, 2347).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TftpError {
    NotFound = 1,
    AccessViolation = 2,
    IllegalOperation = 4,
    UnknownTransfer = 5,
}

/// A datagram for a guest: from the gateway's port `from_port`, to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The gateway's port it leaves from.
    pub from_port: u16,
    /// The guest's address and port.
    pub to: SocketAddr,
    /// The TFTP packet.
    pub payload: Vec<u8>,
}

/// One transfer.
struct Transfer {
    guest: SocketAddr,
    /// The switch port the request came in on.
    port: u32,
    path: String,
    size: u64,
    block_size: usize,
    window: u16,
    timeout: Duration,
    /// Blocks the guest acknowledged (block numbers count on past 65535 here).
    acked: u64,
    /// Blocks sent.
    sent: u64,
    /// Waiting for the ACK of the option acknowledgement (block 0).
    options_pending: Option<Vec<u8>>,
    retry_at: Instant,
    retries: u32,
    deadline: Instant,
}

impl Transfer {
    /// Blocks the file takes: one more than full blocks, as the last one is short.
    fn last_block(&self) -> u64 {
        self.size / self.block_size as u64 + 1
    }
}

/// The transfers in progress, by transfer id.
#[derive(Default)]
pub struct Server {
    transfers: HashMap<u16, Transfer>,
    next_port: u16,
}

impl Server {
    /// Handles a packet from `guest`, on switch port `switch_port`, to port 69: a read request
    /// starts a transfer, and anything else gets an error. `max_block` is the largest
    /// block the guest's MTU carries.
    pub fn request(
        &mut self,
        guest: SocketAddr,
        switch_port: u32,
        payload: &[u8],
        max_block: usize,
        now: Instant,
        host: &mut dyn HostSockets,
    ) -> Vec<Outgoing> {
        let refuse = |error: TftpError, message: &str| vec![error_to(PORT, guest, error, message)];
        match opcode(payload) {
            Some(RRQ) => {}
            Some(WRQ) => return refuse(TftpError::AccessViolation, "read-only server"),
            _ => return refuse(TftpError::IllegalOperation, "expected a read request"),
        }
        let Some(request) = ReadRequest::parse(&payload[2..]) else {
            return refuse(TftpError::IllegalOperation, "malformed read request");
        };
        if !request.mode.eq_ignore_ascii_case("octet") && !request.mode.eq_ignore_ascii_case("netascii") {
            return refuse(TftpError::IllegalOperation, "only octet and netascii modes");
        }
        if !is_safe_path(request.filename) {
            return refuse(TftpError::AccessViolation, "path outside the TFTP root");
        }
        let busy = self.transfers.len() >= MAX_TRANSFERS
            || self.transfers.values().filter(|t| t.port == switch_port).count() >= MAX_TRANSFERS_PER_PORT;
        if busy {
            return refuse(TftpError::AccessViolation, "too many transfers");
        }
        let size = match host.tftp_file_size(request.filename) {
            Ok(size) => size,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return refuse(TftpError::NotFound, "file not found")
            }
            Err(_) => return refuse(TftpError::AccessViolation, "path outside the TFTP root"),
        };
        let Some(port) = self.free_port() else {
            return refuse(TftpError::AccessViolation, "too many transfers");
        };
        let (options, block_size, window, timeout) = negotiate(&request, size, max_block);
        info!(%guest, file = request.filename, size, block_size, window, "TFTP transfer");
        let mut transfer = Transfer {
            guest,
            port: switch_port,
            path: request.filename.to_owned(),
            size,
            block_size,
            window,
            timeout,
            acked: 0,
            sent: 0,
            options_pending: None,
            retry_at: now + timeout,
            retries: 0,
            deadline: now + TRANSFER_DEADLINE,
        };
        let mut out = Vec::new();
        let going = if options.is_empty() {
            send_window(&mut transfer, port, host, &mut out)
        } else {
            let mut oack = OACK.to_be_bytes().to_vec();
            oack.extend_from_slice(&options);
            transfer.options_pending = Some(oack.clone());
            out.push(Outgoing { from_port: port, to: guest, payload: oack });
            true
        };
        if going {
            self.transfers.insert(port, transfer);
        }
        out
    }

    /// Whether `port` is a transfer id in use.
    pub fn owns(&self, port: u16) -> bool {
        self.transfers.contains_key(&port)
    }

    /// Handles a packet from `guest` to transfer `port`: an ACK moves the window on, an
    /// error ends the transfer.
    pub fn packet(
        &mut self,
        guest: SocketAddr,
        port: u16,
        payload: &[u8],
        now: Instant,
        host: &mut dyn HostSockets,
    ) -> Vec<Outgoing> {
        let Some(transfer) = self.transfers.get_mut(&port).filter(|t| t.guest == guest) else {
            return vec![error_to(port, guest, TftpError::UnknownTransfer, "unknown transfer")];
        };
        let block = match (opcode(payload), payload.get(2..4)) {
            (Some(ACK), Some(block)) => u16::from_be_bytes([block[0], block[1]]),
            (Some(ERROR), _) => {
                debug!(%guest, "TFTP transfer ended by the guest");
                self.transfers.remove(&port);
                return Vec::new();
            }
            _ => return vec![error_to(port, guest, TftpError::IllegalOperation, "expected an ACK")],
        };
        if transfer.options_pending.is_some() {
            if block != 0 {
                return Vec::new();
            }
            transfer.options_pending = None;
        } else {
            // The ACK names a block sent and not yet acknowledged; others are stale.
            let unacked = transfer.sent - transfer.acked;
            let ahead = u64::from(block.wrapping_sub(transfer.acked as u16));
            if ahead == 0 || ahead > unacked {
                return Vec::new();
            }
            transfer.acked += ahead;
            if transfer.acked == transfer.last_block() {
                debug!(%guest, file = transfer.path, "TFTP transfer done");
                self.transfers.remove(&port);
                return Vec::new();
            }
        }
        transfer.retries = 0;
        transfer.retry_at = now + transfer.timeout;
        transfer.sent = transfer.acked;
        let mut out = Vec::new();
        if !send_window(transfer, port, host, &mut out) {
            self.transfers.remove(&port);
        }
        out
    }

    /// When the next retransmission or deadline is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.transfers.values().map(|t| t.retry_at.min(t.deadline)).min()
    }

    /// Sends again what was not acknowledged in time, and drops transfers past their
    /// deadline or their retries.
    pub fn expire(&mut self, now: Instant, host: &mut dyn HostSockets) -> Vec<Outgoing> {
        let mut out = Vec::new();
        self.transfers.retain(|port, transfer| {
            if now >= transfer.deadline || (now >= transfer.retry_at && transfer.retries >= MAX_RETRIES) {
                info!(guest = %transfer.guest, file = transfer.path, "TFTP transfer given up");
                return false;
            }
            if now >= transfer.retry_at {
                transfer.retries += 1;
                transfer.retry_at = now + transfer.timeout;
                match &transfer.options_pending {
                    Some(oack) => {
                        out.push(Outgoing { from_port: *port, to: transfer.guest, payload: oack.clone() })
                    }
                    None => {
                        transfer.sent = transfer.acked;
                        return send_window(transfer, *port, host, &mut out);
                    }
                }
            }
            true
        });
        out
    }

    /// A transfer id no transfer uses.
    fn free_port(&mut self) -> Option<u16> {
        for _ in TRANSFER_PORTS {
            self.next_port = match self.next_port {
                port if TRANSFER_PORTS.contains(&port) && port < *TRANSFER_PORTS.end() => port + 1,
                _ => *TRANSFER_PORTS.start(),
            };
            if !self.transfers.contains_key(&self.next_port) {
                return Some(self.next_port);
            }
        }
        None
    }
}

/// Sends the next window of `transfer`'s blocks from `port`. A block the host cannot
/// read ends the transfer: the error goes out, and false comes back.
fn send_window(
    transfer: &mut Transfer,
    port: u16,
    host: &mut dyn HostSockets,
    out: &mut Vec<Outgoing>,
) -> bool {
    let last = transfer.last_block();
    while transfer.sent < last && transfer.sent - transfer.acked < u64::from(transfer.window) {
        let block = transfer.sent + 1;
        let offset = (block - 1) * transfer.block_size as u64;
        let len = (transfer.size.saturating_sub(offset)).min(transfer.block_size as u64) as usize;
        let mut payload = vec![0u8; 4 + len];
        payload[..2].copy_from_slice(&DATA.to_be_bytes());
        payload[2..4].copy_from_slice(&(block as u16).to_be_bytes());
        let mut filled = 0;
        while filled < len {
            match host.tftp_read(&transfer.path, offset + filled as u64, &mut payload[4 + filled..]) {
                Ok(0) | Err(_) => {
                    out.push(error_to(
                        port,
                        transfer.guest,
                        TftpError::NotFound,
                        "file changed or unreadable",
                    ));
                    return false;
                }
                Ok(n) => filled += n,
            }
        }
        out.push(Outgoing { from_port: port, to: transfer.guest, payload });
        transfer.sent = block;
    }
    true
}

/// The options the server takes up (an OACK body), and the block size, window and
/// timeout they set.
fn negotiate(request: &ReadRequest<'_>, size: u64, max_block: usize) -> (Vec<u8>, usize, u16, Duration) {
    let (mut block_size, mut window, mut timeout) = (DEFAULT_BLOCK_SIZE, 1u16, DEFAULT_TIMEOUT);
    let mut accepted = Vec::new();
    let mut accept = |name: &str, value: String| {
        accepted.extend_from_slice(name.as_bytes());
        accepted.push(0);
        accepted.extend_from_slice(value.as_bytes());
        accepted.push(0);
    };
    for (name, value) in &request.options {
        let number = value.parse::<u64>().ok();
        match (name.to_ascii_lowercase().as_str(), number) {
            ("blksize", Some(asked)) if asked >= 8 => {
                block_size = (asked as usize).min(max_block).min(65464);
                accept("blksize", block_size.to_string());
            }
            ("timeout", Some(asked @ 1..=255)) => {
                timeout = Duration::from_secs(asked);
                accept("timeout", asked.to_string());
            }
            ("tsize", Some(_)) => accept("tsize", size.to_string()),
            ("windowsize", Some(asked)) if asked >= 1 => {
                window = (asked as u16).min(MAX_WINDOW);
                accept("windowsize", window.to_string());
            }
            _ => {}
        }
    }
    (accepted, block_size, window, timeout)
}

/// A read request's fields.
struct ReadRequest<'a> {
    filename: &'a str,
    mode: &'a str,
    options: Vec<(&'a str, &'a str)>,
}

impl<'a> ReadRequest<'a> {
    /// Reads NUL-terminated strings: the file name, the mode, then option pairs.
    fn parse(body: &'a [u8]) -> Option<Self> {
        let mut fields = body.split(|b| *b == 0);
        let filename = std::str::from_utf8(fields.next()?).ok()?;
        let mode = std::str::from_utf8(fields.next()?).ok()?;
        let rest: Vec<&str> = fields
            .filter(|field| !field.is_empty())
            .map(std::str::from_utf8)
            .collect::<Result<_, _>>()
            .ok()?;
        if body.last() != Some(&0) || !rest.len().is_multiple_of(2) || rest.len() > 16 {
            return None;
        }
        let options = rest.chunks(2).map(|pair| (pair[0], pair[1])).collect();
        Some(Self { filename, mode, options })
    }
}

/// Whether `path` names a file under the root: relative, no `..`, no backslash or
/// control character, not empty.
fn is_safe_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\\')
        && !path.chars().any(char::is_control)
        && path.split('/').all(|part| part != "..")
}

fn opcode(payload: &[u8]) -> Option<u16> {
    payload.get(..2).map(|bytes| u16::from_be_bytes([bytes[0], bytes[1]]))
}

/// An ERROR packet with `error` and `message`, from `port` to `to`.
fn error_to(port: u16, to: SocketAddr, error: TftpError, message: &str) -> Outgoing {
    let mut payload = ERROR.to_be_bytes().to_vec();
    payload.extend_from_slice(&(error as u16).to_be_bytes());
    payload.extend_from_slice(message.as_bytes());
    payload.push(0);
    Outgoing { from_port: port, to, payload }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host whose TFTP root holds one file.
    struct OneFile(Vec<u8>);

    impl HostSockets for OneFile {
        fn udp_open(&mut self, _: crate::FlowId, _: SocketAddr) -> io::Result<()> {
            unreachable!()
        }
        fn set_ttl(&mut self, _: crate::FlowId, _: Option<u8>) -> io::Result<()> {
            unreachable!()
        }
        fn icmp_open(&mut self, _: crate::FlowId, _: std::net::IpAddr) -> io::Result<crate::IcmpSocketKind> {
            unreachable!()
        }
        fn datagram_send(&mut self, _: crate::FlowId, _: &[u8]) -> io::Result<()> {
            unreachable!()
        }
        fn datagram_close(&mut self, _: crate::FlowId) {}
        fn tcp_connect(&mut self, _: crate::FlowId, _: SocketAddr, _: Option<u8>) -> io::Result<()> {
            unreachable!()
        }
        fn tcp_send(&mut self, _: crate::FlowId, _: &[u8]) -> io::Result<usize> {
            unreachable!()
        }
        fn tcp_peek(
            &mut self,
            _: crate::FlowId,
            _: usize,
            _: &mut [io::IoSliceMut<'_>],
        ) -> io::Result<usize> {
            unreachable!()
        }
        fn tcp_consume(&mut self, _: crate::FlowId, _: usize) -> io::Result<()> {
            unreachable!()
        }
        fn tcp_send_space(&mut self, _: crate::FlowId) -> usize {
            0
        }
        fn tcp_shutdown_write(&mut self, _: crate::FlowId) {}
        fn tcp_close(&mut self, _: crate::FlowId, _: bool) {}
        fn udp_forward_reply(&mut self, _: crate::ForwardId, _: SocketAddr, _: &[u8]) -> io::Result<()> {
            unreachable!()
        }
        fn tftp_file_size(&mut self, path: &str) -> io::Result<u64> {
            match path {
                "boot.ipxe" => Ok(self.0.len() as u64),
                "escape" => Err(io::ErrorKind::PermissionDenied.into()),
                _ => Err(io::ErrorKind::NotFound.into()),
            }
        }
        fn tftp_read(&mut self, _: &str, offset: u64, buffer: &mut [u8]) -> io::Result<usize> {
            let rest = self.0.get(offset as usize..).unwrap_or_default();
            let n = rest.len().min(buffer.len());
            buffer[..n].copy_from_slice(&rest[..n]);
            Ok(n)
        }
    }

    const GUEST: &str = "10.0.2.15:2000";

    fn rrq(name: &str, options: &[(&str, &str)]) -> Vec<u8> {
        let mut packet = RRQ.to_be_bytes().to_vec();
        for field in [name, "octet"].into_iter().chain(options.iter().flat_map(|(n, v)| [*n, *v])) {
            packet.extend_from_slice(field.as_bytes());
            packet.push(0);
        }
        packet
    }

    fn ack(block: u16) -> Vec<u8> {
        let mut packet = ACK.to_be_bytes().to_vec();
        packet.extend_from_slice(&block.to_be_bytes());
        packet
    }

    fn error_code(out: &[Outgoing]) -> Option<u16> {
        let payload = &out.first()?.payload;
        (opcode(payload) == Some(ERROR)).then(|| u16::from_be_bytes([payload[2], payload[3]]))
    }

    #[test]
    fn a_file_comes_in_blocks_each_sent_after_the_last_was_acknowledged() {
        let data: Vec<u8> = (0..1100u32).map(|i| i as u8).collect();
        let (mut server, mut host, now) = (Server::default(), OneFile(data.clone()), Instant::now());
        let guest: SocketAddr = GUEST.parse().unwrap();
        let mut out = server.request(guest, 1, &rrq("boot.ipxe", &[]), 1468, now, &mut host);
        let mut received = Vec::new();
        for block in 1..=3u16 {
            assert_eq!(out.len(), 1);
            let packet = &out[0].payload;
            assert_eq!((opcode(packet), &packet[2..4]), (Some(DATA), &block.to_be_bytes()[..]));
            received.extend_from_slice(&packet[4..]);
            let port = out[0].from_port;
            out = server.packet(guest, port, &ack(block), now, &mut host);
        }
        assert!(out.is_empty() && server.transfers.is_empty(), "done after the short block");
        assert_eq!(received, data);
    }

    #[test]
    fn options_are_acknowledged_and_a_window_of_big_blocks_follows() {
        let data = vec![7u8; 10_000];
        let (mut server, mut host, now) = (Server::default(), OneFile(data), Instant::now());
        let guest: SocketAddr = GUEST.parse().unwrap();
        let options =
            [("blksize", "4096"), ("tsize", "0"), ("windowsize", "4"), ("timeout", "3"), ("x", "1")];
        let out = server.request(guest, 1, &rrq("boot.ipxe", &options), 1468, now, &mut host);
        assert_eq!(opcode(&out[0].payload), Some(OACK));
        assert_eq!(
            &out[0].payload[2..],
            b"blksize\x001468\x00tsize\x0010000\x00windowsize\x004\x00timeout\x003\x00"
        );
        let port = out[0].from_port;
        let window = server.packet(guest, port, &ack(0), now, &mut host);
        assert_eq!(window.len(), 4);
        assert!(window.iter().all(|packet| packet.payload.len() == 4 + 1468));
        let rest = server.packet(guest, port, &ack(4), now, &mut host);
        assert_eq!(rest.len(), 3, "blocks 5 to 7, the last short");
        assert_eq!(rest[2].payload.len(), 4 + 10_000 - 6 * 1468);
    }

    #[test]
    fn escapes_writes_missing_files_and_strangers_get_the_right_errors() {
        let (mut server, mut host, now) = (Server::default(), OneFile(vec![1; 10]), Instant::now());
        let guest: SocketAddr = GUEST.parse().unwrap();
        let mut ask =
            |request: Vec<u8>| error_code(&server.request(guest, 1, &request, 1468, now, &mut host));
        for path in ["../etc/passwd", "/etc/passwd", "a/../../b", "a\\b", "escape"] {
            assert_eq!(ask(rrq(path, &[])), Some(TftpError::AccessViolation as u16), "{path}");
        }
        assert_eq!(ask(rrq("missing", &[])), Some(TftpError::NotFound as u16));
        let mut write = rrq("boot.ipxe", &[]);
        write[1] = WRQ as u8;
        assert_eq!(ask(write), Some(TftpError::AccessViolation as u16));
        assert_eq!(ask(b"\x00\x01no-terminator".to_vec()), Some(TftpError::IllegalOperation as u16));
        let stranger = server.packet(guest, 40999, &ack(1), now, &mut host);
        assert_eq!(error_code(&stranger), Some(TftpError::UnknownTransfer as u16));
    }

    #[test]
    fn an_unanswered_window_is_sent_again_then_given_up_and_guests_are_bounded() {
        let (mut server, mut host, now) = (Server::default(), OneFile(vec![1; 600]), Instant::now());
        let guest: SocketAddr = GUEST.parse().unwrap();
        server.request(guest, 1, &rrq("boot.ipxe", &[]), 1468, now, &mut host);
        let mut at = now;
        for _ in 0..MAX_RETRIES {
            at += DEFAULT_TIMEOUT;
            assert_eq!(server.expire(at, &mut host).len(), 1, "block 1 again");
        }
        at += DEFAULT_TIMEOUT;
        assert!(server.expire(at, &mut host).is_empty() && server.transfers.is_empty());
        for _ in 0..MAX_TRANSFERS_PER_PORT {
            server.request(guest, 1, &rrq("boot.ipxe", &[]), 1468, now, &mut host);
        }
        let spoofed: SocketAddr = "10.0.2.99:2000".parse().unwrap();
        let refused = server.request(spoofed, 1, &rrq("boot.ipxe", &[]), 1468, now, &mut host);
        assert_eq!(
            error_code(&refused),
            Some(TftpError::AccessViolation as u16),
            "a made-up address shares its port's"
        );
        let other_port = server.request(spoofed, 2, &rrq("boot.ipxe", &[]), 1468, now, &mut host);
        assert_eq!(error_code(&other_port), None, "another port's guest is served");
    }
}
