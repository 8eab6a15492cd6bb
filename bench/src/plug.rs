//! The plug: a tap device in a namespace relayed to a QEMU stream socket (4-byte
//! big-endian length, then the frame), so vnet and passt can be driven by the namespace's
//! kernel the same way. It stands where QEMU would stand, and does no more than QEMU does
//! per frame: one read from the tap, one write to the socket, and back.
//!
//! Nothing here knows which program is at the other end of the socket.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// The largest frame the plug moves: a 65535-byte IP packet and its Ethernet header.
const MAX_FRAME: usize = 65535 + 14;

nix::ioctl_write_ptr_bad!(
    tun_set_iff,
    nix::request_code_write!(b'T', 202, size_of::<libc::c_int>()),
    libc::ifreq
);

/// Creates tap `ifname`, connects to `socket`, and relays frames both ways until either
/// side closes.
pub fn run(socket: &Path, ifname: &str) -> Result<()> {
    let tap = open_tap(ifname)?;
    let stream =
        UnixStream::connect(socket).with_context(|| format!("connecting to {}", socket.display()))?;
    let tap_writer = tap.try_clone()?;
    let stream_writer = stream.try_clone()?;
    let upstream = std::thread::spawn(move || tap_to_socket(tap, stream_writer));
    let downstream = socket_to_tap(stream, tap_writer);
    let upstream = upstream.join().map_err(|_| anyhow::anyhow!("the tap reader panicked"))?;
    downstream.and(upstream)
}

fn tap_to_socket(mut tap: File, mut socket: UnixStream) -> Result<()> {
    let mut buffer = vec![0u8; 4 + MAX_FRAME];
    loop {
        let len = tap.read(&mut buffer[4..])?;
        buffer[..4].copy_from_slice(&(len as u32).to_be_bytes());
        socket.write_all(&buffer[..4 + len])?;
    }
}

fn socket_to_tap(socket: UnixStream, mut tap: File) -> Result<()> {
    let mut socket = BufReader::with_capacity(256 * 1024, socket);
    let mut frame = vec![0u8; MAX_FRAME];
    loop {
        let mut prefix = [0u8; 4];
        if socket.read_exact(&mut prefix).is_err() {
            return Ok(());
        }
        let len = u32::from_be_bytes(prefix) as usize;
        if len > MAX_FRAME {
            bail!("a {len}-byte frame from the socket");
        }
        socket.read_exact(&mut frame[..len])?;
        // A full tap queue drops the frame, as it would for QEMU.
        let _ = tap.write(&frame[..len]);
    }
}

/// Opens a new tap device called `ifname` (no packet information header).
fn open_tap(ifname: &str) -> Result<File> {
    create_tap(ifname, 0)
}

/// Creates tap `ifname` with IFF_TAP, IFF_NO_PI and `extra_flags` (such as
/// IFF_VNET_HDR).
pub fn create_tap(ifname: &str, extra_flags: libc::c_int) -> Result<File> {
    let tun =
        OpenOptions::new().read(true).write(true).open("/dev/net/tun").context("opening /dev/net/tun")?;
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if ifname.len() >= request.ifr_name.len() {
        bail!("interface name {ifname} is too long");
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(ifname.bytes()) {
        *slot = byte as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | extra_flags) as libc::c_short;
    // SAFETY: TUNSETIFF reads one ifreq from the pointer, which points at `request`.
    unsafe { tun_set_iff(tun.as_raw_fd(), &request) }.context("TUNSETIFF")?;
    Ok(tun)
}
