//! A port of a VDE switch, from the client side (REFERENCE §2): a request on the switch's
//! control socket, then one Ethernet frame per unix datagram. This is what libvdeplug and
//! `vde_plug` do, without the pipes `vde_plug` would add around it.
//!
//! Nothing here knows about the scenarios that use it.

use std::io::{Read, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;

use anyhow::{bail, Context, Result};

const MAGIC: u32 = 0xfeed_face;
const VERSION: u32 = 3;
/// Ask for any free port.
const NEW_PORT: u32 = 0;
/// sizeof(struct sockaddr_un) on Linux.
const SOCKADDR_UN_LEN: usize = 110;

/// One connected switch port.
pub struct VdePort {
    /// The port lives as long as this control connection.
    _control: UnixStream,
    data: UnixDatagram,
}

impl VdePort {
    /// Connects to the switch whose directory is `switch_dir`, receiving on a datagram
    /// socket bound at `own_path`.
    pub fn connect(switch_dir: &Path, own_path: &Path) -> Result<Self> {
        let data = UnixDatagram::bind(own_path).with_context(|| format!("binding {}", own_path.display()))?;
        let mut control = UnixStream::connect(switch_dir.join("ctl"))
            .with_context(|| format!("connecting to {}/ctl", switch_dir.display()))?;
        let mut request = Vec::with_capacity(12 + SOCKADDR_UN_LEN + 16);
        for word in [MAGIC, VERSION, NEW_PORT] {
            request.extend_from_slice(&word.to_ne_bytes());
        }
        request.extend_from_slice(&sockaddr_un(own_path)?);
        request.extend_from_slice(b"vnet-bench");
        control.write_all(&request)?;
        let mut reply = [0u8; SOCKADDR_UN_LEN];
        control.read_exact(&mut reply).context("the switch did not answer the port request")?;
        let path_bytes = &reply[2..];
        let end = path_bytes.iter().position(|&b| b == 0).unwrap_or(path_bytes.len());
        let switch_side = std::str::from_utf8(&path_bytes[..end]).context("the switch's socket path")?;
        data.connect(switch_side).with_context(|| format!("connecting to the switch's {switch_side}"))?;
        Ok(Self { _control: control, data })
    }

    /// The datagram socket: one frame per datagram each way.
    pub fn data(&self) -> &UnixDatagram {
        &self.data
    }
}

/// `path` as a struct sockaddr_un.
fn sockaddr_un(path: &Path) -> Result<[u8; SOCKADDR_UN_LEN]> {
    let bytes = path.as_os_str().as_encoded_bytes();
    if bytes.len() >= SOCKADDR_UN_LEN - 2 {
        bail!("socket path {} is too long", path.display());
    }
    let mut address = [0u8; SOCKADDR_UN_LEN];
    address[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
    address[2..2 + bytes.len()].copy_from_slice(bytes);
    Ok(address)
}
