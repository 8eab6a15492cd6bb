//! VDE (REFERENCE §2): vnet as a vde_switch that QEMU's `-netdev vde` and `vde_plug`
//! connect to (`--listen vde:DIR`), and vnet as a port of someone else's vde_switch
//! (`--attach vde:DIR`).
//!
//! A client sends one request on the switch's stream socket `DIR/ctl`: magic, version
//! 3, the port it wants, its own datagram socket's address and a description. The
//! switch binds a datagram socket for the port, connects it to the client's and answers
//! with that socket's address. Frames then go one per datagram each way, and the port
//! lives as long as the control connection. A request that is wrong in any way closes
//! that control connection with a log line and a counter, and nothing else.
//!
//! The client names its socket by path, so vnet checks what it connects to: the file is
//! opened without following a symlink, must be a socket owned by the user at the other
//! end of the control connection (SO_PEERCRED; root may name any), and must not be one
//! of vnet's own sockets, which would make a loop. vnet then connects through that open
//! file, so the path cannot be swapped between the check and the connect. This module
//! moves frames; it never looks inside one.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fs::{File, Metadata};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use mio::net::{UnixDatagram, UnixListener, UnixStream};
use mio::{Interest, Token};
use tracing::{info, warn};
use vnet_switch::{PortDropReason, PortId};
use vnet_wire::{Frame, Offload, MAX_FRAME_LEN};

use vnet_runtime::{Context, Endpoint, Liveness, ReadOutcome};
use vnet_wire::vde::{
    encode_request, parse_request, sockaddr_un, sockaddr_un_path, PortRequest, RequestError, MAX_PORT,
    REQUEST_MAX, SOCKADDR_UN_LEN,
};

use crate::unix_path::{bind_error, is_own_socket, BoundPath, SocketKind};
use crate::TransportError;

/// Datagrams read per batch.
const FRAMES_PER_BATCH: usize = 32;
/// How long `--attach vde:` waits for the switch's answer.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to send its request after connecting.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A datagram socket that carries one port's frames, and the frames' relay.
struct DataPath {
    socket: UnixDatagram,
    token: Token,
    buffer: Box<[u8]>,
}

impl DataPath {
    fn new(socket: UnixDatagram, cx: &mut Context<'_>) -> io::Result<Self> {
        let mut socket = socket;
        let token = cx.register_source(&mut socket, Interest::READABLE | Interest::WRITABLE)?;
        Ok(Self { socket, token, buffer: vec![0; MAX_FRAME_LEN + 1].into_boxed_slice() })
    }

    /// Hands the datagrams waiting on the socket to the switch.
    fn read(&mut self, port: PortId, cx: &mut Context<'_>) -> ReadOutcome {
        for _ in 0..FRAMES_PER_BATCH {
            match self.socket.recv(&mut self.buffer) {
                Ok(len) => cx.switch.receive(
                    port,
                    Frame::copy_from_slice(&self.buffer[..len], Offload::NONE),
                    cx.now,
                ),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadOutcome::Drained,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return ReadOutcome::Drained,
            }
        }
        ReadOutcome::More
    }

    /// Sends what waits on `port`. While the peer's socket holds as many unread
    /// datagrams as the kernel allows, the rest waits in the port's queue until the
    /// socket turns writable, as vde_switch queues them; a frame refused otherwise is
    /// dropped and counted, as on a real link.
    fn flush(&mut self, port: PortId, cx: &mut Context<'_>) {
        let Some(port) = cx.switch.port_mut(port) else {
            return;
        };
        loop {
            let Some(frame) = port.queued().next() else {
                break;
            };
            match self.socket.send(frame.as_bytes()) {
                Ok(_) => {
                    port.pop_sent();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    port.pop_dropped(PortDropReason::SendFailed);
                }
            }
        }
    }

    fn forget(&self, cx: &mut Context<'_>) {
        cx.forget_source(self.token);
    }
}

/// The port numbers of one switch directory that are in use.
type PortsInUse = Rc<RefCell<BTreeSet<u32>>>;

/// A switch directory vnet made; the last of its listener and clients to go removes it.
struct SwitchDir {
    path: PathBuf,
    created: bool,
}

impl Drop for SwitchDir {
    fn drop(&mut self) {
        if self.created {
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}

/// `--listen vde:DIR`: the control socket `DIR/ctl`.
pub struct VdeListener {
    listener: UnixListener,
    _ctl: BoundPath,
    dir: Rc<SwitchDir>,
    ports: PortsInUse,
    /// Data sockets are named DIR/NNN.SEQ, SEQ counting up.
    next_socket: Rc<RefCell<u64>>,
}

impl VdeListener {
    /// Creates DIR with mode 0700, whatever the umask, if it does not exist (one that
    /// does keeps its mode), and binds `DIR/ctl`.
    pub fn bind(dir: &Path) -> Result<Self, TransportError> {
        let created = !dir.exists();
        let cannot_create =
            |e| TransportError::io(format!("cannot create the VDE directory {}", dir.display()), e);
        std::fs::create_dir_all(dir).map_err(cannot_create)?;
        if created {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(cannot_create)?;
        }
        let ctl = dir.join("ctl");
        BoundPath::prepare(&ctl, SocketKind::Stream)?;
        let listener = UnixListener::bind(&ctl).map_err(|e| bind_error(&ctl, e))?;
        Ok(Self {
            listener,
            _ctl: BoundPath::new(ctl),
            dir: Rc::new(SwitchDir { path: dir.to_owned(), created }),
            ports: Rc::default(),
            next_socket: Rc::default(),
        })
    }
}

impl Endpoint for VdeListener {
    fn start(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        info!(listen = %format!("vde:{}", self.dir.path.display()), "listening");
        cx.registry.register(&mut self.listener, cx.token, Interest::READABLE)
    }

    fn read_batch(&mut self, cx: &mut Context<'_>) -> ReadOutcome {
        loop {
            match self.listener.accept() {
                Ok((control, _)) => {
                    cx.count("accepted");
                    cx.spawn(Box::new(VdeClient {
                        dir: Rc::clone(&self.dir),
                        control,
                        active: None,
                        request_deadline: Some(cx.now + REQUEST_TIMEOUT),
                        ports: Rc::clone(&self.ports),
                        next_socket: Rc::clone(&self.next_socket),
                    }));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadOutcome::Drained,
                Err(e) => {
                    warn!(error = %e, "VDE accept failed");
                    return ReadOutcome::Drained;
                }
            }
        }
    }

    fn on_writable(&mut self, _cx: &mut Context<'_>) -> Liveness {
        Liveness::Open
    }

    fn flush(&mut self, _port: PortId, _cx: &mut Context<'_>) -> Liveness {
        Liveness::Open
    }

    fn close(&mut self, _cx: &mut Context<'_>) {}
}

/// A client's port once its request was granted.
struct GrantedPort {
    number: u32,
    port: PortId,
    data: DataPath,
    _socket_file: BoundPath,
}

/// One control connection of a [`VdeListener`]: a request, then a port until it closes.
struct VdeClient {
    control: UnixStream,
    active: Option<GrantedPort>,
    /// Until when a connection may stay without sending its request.
    /// When a connection without a request is given up; None once it has been.
    request_deadline: Option<Instant>,
    dir: Rc<SwitchDir>,
    ports: PortsInUse,
    next_socket: Rc<RefCell<u64>>,
}

impl VdeClient {
    /// Reads the control connection: the request while there is no port, and after that
    /// only its end. A request comes in one write, as every VDE client sends it, and is
    /// judged on the first read, as vde_switch does.
    fn read_control(&mut self, cx: &mut Context<'_>) -> ReadOutcome {
        let mut chunk = [0u8; REQUEST_MAX + 1];
        loop {
            match self.control.read(&mut chunk) {
                Ok(0) => return ReadOutcome::Closed,
                Ok(len) if self.active.is_none() => return self.grant(&chunk[..len], cx),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadOutcome::Drained,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return ReadOutcome::Closed,
            }
        }
    }

    /// Answers `request`, or refuses it by closing.
    fn grant(&mut self, request: &[u8], cx: &mut Context<'_>) -> ReadOutcome {
        match self.try_grant(request, cx) {
            Ok(()) => ReadOutcome::Drained,
            Err(reason) => {
                cx.count("bad_vde_request");
                warn!(dir = %self.dir.path.display(), %reason, "refused a VDE port request; closing its connection");
                ReadOutcome::Closed
            }
        }
    }

    fn try_grant(&mut self, request: &[u8], cx: &mut Context<'_>) -> Result<(), String> {
        let request = parse_request(request).map_err(|e| e.to_string())?;
        let number = self.take_port_number(request.port).map_err(|e| e.to_string())?;
        let granted = self.open_data_path(number, &request, cx);
        if granted.is_err() {
            self.ports.borrow_mut().remove(&number);
        }
        let (data, socket_file) = granted?;
        let name = format!("vde:{} port={number} {}", self.dir.path.display(), request.description);
        let port = cx.add_port(name.trim_end().to_owned());
        self.active = Some(GrantedPort { number, port, data, _socket_file: socket_file });
        Ok(())
    }

    fn take_port_number(&self, wanted: Option<u32>) -> Result<u32, RequestError> {
        let mut ports = self.ports.borrow_mut();
        let number = match wanted {
            Some(number) if ports.contains(&number) => return Err(RequestError::PortInUse(number)),
            Some(number) => number,
            None => (1..=MAX_PORT).find(|n| !ports.contains(n)).ok_or(RequestError::NoFreePort)?,
        };
        ports.insert(number);
        Ok(number)
    }

    /// Binds the port's data socket, connects it to the client's, gives it the client
    /// socket's group and mode, and answers with its address.
    fn open_data_path(
        &mut self,
        number: u32,
        request: &PortRequest,
        cx: &mut Context<'_>,
    ) -> Result<(DataPath, BoundPath), String> {
        let sequence = {
            let mut next = self.next_socket.borrow_mut();
            *next += 1;
            *next
        };
        let path = self.dir.path.join(format!("{number:03}.{sequence}"));
        BoundPath::prepare(&path, SocketKind::Datagram).map_err(|e| e.to_string())?;
        let socket = UnixDatagram::bind(&path).map_err(|e| format!("cannot bind {}: {e}", path.display()))?;
        let socket_file = BoundPath::new(path.clone());
        let client = ClientSocket::open(&request.client, self.asker()?)?;
        socket
            .connect(client.connect_path())
            .map_err(|e| format!("cannot reach the client's socket {}: {e}", request.client.display()))?;
        honour_client_permissions(&client.metadata, &path);
        let reply = sockaddr_un(&path).map_err(|e| e.to_string())?;
        self.control.write_all(&reply).map_err(|e| format!("cannot answer the client: {e}"))?;
        let data = DataPath::new(socket, cx).map_err(|e| format!("cannot watch the data socket: {e}"))?;
        Ok((data, socket_file))
    }
}

impl VdeClient {
    /// The user id of the process at the other end of the control connection.
    fn asker(&self) -> Result<u32, String> {
        nix::sys::socket::getsockopt(&self.control, nix::sys::socket::sockopt::PeerCredentials)
            .map(|credentials| credentials.uid())
            .map_err(|e| format!("cannot tell who asked (SO_PEERCRED): {e}"))
    }
}

/// A client's datagram socket, opened (O_PATH, no symlink) and checked by
/// [`ClientSocket::open`].
struct ClientSocket {
    file: File,
    metadata: Metadata,
}

impl ClientSocket {
    /// Opens the socket at `path` that user `asker` named, if it may be connected to.
    fn open(path: &Path, asker: u32) -> Result<Self, String> {
        let file =
            File::options().read(true).custom_flags(libc::O_PATH | libc::O_NOFOLLOW).open(path).map_err(
                |e| format!("cannot open the client's socket {} (a symlink is refused): {e}", path.display()),
            )?;
        let metadata = file.metadata().map_err(|e| format!("cannot inspect {}: {e}", path.display()))?;
        let own = is_own_socket(metadata.dev(), metadata.ino());
        check_client_socket(&metadata, asker, own)
            .map_err(|problem| format!("{}: {problem}", path.display()))?;
        Ok(Self { file, metadata })
    }

    /// A path that reaches the checked socket itself, whatever happens to its name.
    fn connect_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

/// Whether user `asker` may have vnet connect a port to the socket file described by
/// `metadata` (of the file itself, not of what a symlink points to): it must be a
/// socket, the asker's own unless the asker is root, and not one of vnet's (`own`).
fn check_client_socket(metadata: &Metadata, asker: u32, own: bool) -> Result<(), String> {
    if metadata.file_type().is_symlink() {
        return Err("a symbolic link; name the socket itself".to_owned());
    }
    if !metadata.file_type().is_socket() {
        return Err("not a socket".to_owned());
    }
    if own {
        return Err("one of vnet's own sockets, which would make a loop".to_owned());
    }
    if asker != 0 && metadata.uid() != asker {
        return Err(format!("belongs to uid {}, not to uid {asker} who asked", metadata.uid()));
    }
    Ok(())
}

/// Gives the port's socket the group and permission bits of the client's own socket
/// (`client`), which the client set from its `group` and `mode` (vde_plug -g/-m), so
/// whoever may use the client's socket may use the port's. A group vnet is not in is
/// left as it is.
fn honour_client_permissions(metadata: &Metadata, port_socket: &Path) {
    let _ = std::os::unix::fs::chown(port_socket, None, Some(metadata.gid()));
    let mode = (metadata.permissions().mode() & 0o770) | 0o600;
    let _ = std::fs::set_permissions(port_socket, std::fs::Permissions::from_mode(mode));
}

impl Endpoint for VdeClient {
    fn start(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        cx.registry.register(&mut self.control, cx.token, Interest::READABLE)
    }

    fn read_batch(&mut self, cx: &mut Context<'_>) -> ReadOutcome {
        match &mut self.active {
            Some(granted) if cx.ready == granted.data.token => granted.data.read(granted.port, cx),
            _ => self.read_control(cx),
        }
    }

    fn on_writable(&mut self, cx: &mut Context<'_>) -> Liveness {
        if let Some(granted) = &mut self.active {
            granted.data.flush(granted.port, cx);
        }
        Liveness::Open
    }

    fn flush(&mut self, _port: PortId, cx: &mut Context<'_>) -> Liveness {
        self.on_writable(cx)
    }

    fn deadline(&self) -> Option<Instant> {
        self.request_deadline.filter(|_| self.active.is_none())
    }

    /// The connection sent no request in time: shutting it down makes it readable at its
    /// end, and the read closes it.
    fn on_deadline(&mut self, cx: &mut Context<'_>) {
        if self.active.is_none() && self.request_deadline.take().is_some() {
            cx.count("bad_vde_request");
            warn!(dir = %self.dir.path.display(), "a VDE control connection sent no request in time; closing it");
            let _ = self.control.shutdown(std::net::Shutdown::Both);
        }
    }

    fn close(&mut self, cx: &mut Context<'_>) {
        if let Some(granted) = self.active.take() {
            granted.data.forget(cx);
            self.ports.borrow_mut().remove(&granted.number);
            cx.remove_port(granted.port);
        }
    }
}

/// `--attach vde:DIR`: one port of another vde_switch.
pub struct VdeAttachment {
    dir: PathBuf,
    control: UnixStream,
    data: Option<UnixDatagram>,
    _own_socket: BoundPath,
    switch_port: String,
    port: Option<(PortId, DataPath)>,
}

impl VdeAttachment {
    /// Asks the switch at `dir` for a port, now: a switch that is not there, or refuses,
    /// is a setup error.
    pub fn connect(dir: &Path) -> Result<Self, TransportError> {
        let fail = |what: &str, e: io::Error| TransportError::io(format!("vde:{}: {what}", dir.display()), e);
        let own_path = own_socket_path(dir);
        BoundPath::prepare(&own_path, SocketKind::Datagram)?;
        let data = std::os::unix::net::UnixDatagram::bind(&own_path).map_err(|e| bind_error(&own_path, e))?;
        let own_socket = BoundPath::new(own_path.clone());
        let mut control = std::os::unix::net::UnixStream::connect(dir.join("ctl"))
            .map_err(|e| fail("no vde_switch answers on ctl (is it running?)", e))?;
        control.set_read_timeout(Some(ATTACH_TIMEOUT)).map_err(|e| fail("control socket", e))?;
        let description = format!("vnet pid={}", std::process::id());
        control
            .write_all(&encode_request(None, &own_path, &description).map_err(|e| fail("request", e))?)
            .map_err(|e| fail("cannot send the port request", e))?;
        let mut reply = [0u8; SOCKADDR_UN_LEN];
        control
            .read_exact(&mut reply)
            .map_err(|e| fail("the switch refused or did not answer the port request", e))?;
        let switch_side = sockaddr_un_path(&reply)
            .ok_or_else(|| fail("the switch's answer", io::ErrorKind::InvalidData.into()))?;
        data.connect(&switch_side).map_err(|e| fail("cannot reach the switch's port socket", e))?;
        data.set_nonblocking(true).map_err(|e| fail("data socket", e))?;
        control.set_nonblocking(true).map_err(|e| fail("control socket", e))?;
        let switch_port =
            switch_side.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(Self {
            dir: dir.to_owned(),
            control: UnixStream::from_std(control),
            data: Some(UnixDatagram::from_std(data)),
            _own_socket: own_socket,
            switch_port,
            port: None,
        })
    }
}

/// Where `--attach vde:` binds its datagram socket: inside the switch's directory, as
/// libvdeplug does, so the switch's users can reach it.
fn own_socket_path(dir: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    dir.join(format!(".vnet-{}-{n}", std::process::id()))
}

impl Endpoint for VdeAttachment {
    fn start(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        cx.registry.register(&mut self.control, cx.token, Interest::READABLE)?;
        let data = self.data.take().ok_or_else(|| io::Error::other("started twice"))?;
        let data = DataPath::new(data, cx)?;
        let name = format!("vde:{} switch-port={}", self.dir.display(), self.switch_port);
        self.port = Some((cx.add_port(name), data));
        Ok(())
    }

    fn read_batch(&mut self, cx: &mut Context<'_>) -> ReadOutcome {
        let Some((port, data)) = &mut self.port else {
            return ReadOutcome::Closed;
        };
        if cx.ready == data.token {
            return data.read(*port, cx);
        }
        let mut chunk = [0u8; 256];
        loop {
            match self.control.read(&mut chunk) {
                Ok(0) => {
                    info!(dir = %self.dir.display(), "the vde_switch closed our port");
                    return ReadOutcome::Closed;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadOutcome::Drained,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return ReadOutcome::Closed,
            }
        }
    }

    fn on_writable(&mut self, cx: &mut Context<'_>) -> Liveness {
        if let Some((port, data)) = &mut self.port {
            data.flush(*port, cx);
        }
        Liveness::Open
    }

    fn flush(&mut self, _port: PortId, cx: &mut Context<'_>) -> Liveness {
        self.on_writable(cx)
    }

    fn close(&mut self, cx: &mut Context<'_>) {
        if let Some((port, data)) = self.port.take() {
            data.forget(cx);
            cx.remove_port(port);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixDatagram;

    use super::{check_client_socket, ClientSocket, VdeListener};
    use crate::unix_path::BoundPath;

    #[test]
    fn a_client_socket_must_be_the_askers_and_not_vnets_own() {
        let scratch = tempfile::tempdir().unwrap();
        let path = scratch.path().join("client");
        let _client = UnixDatagram::bind(&path).unwrap();
        let metadata = std::fs::metadata(&path).unwrap();
        let owner = std::os::unix::fs::MetadataExt::uid(&metadata);
        assert_eq!(check_client_socket(&metadata, owner, false), Ok(()));
        assert_eq!(check_client_socket(&metadata, 0, false), Ok(()), "root may name any socket");
        let stranger = owner.wrapping_add(4242);
        assert!(check_client_socket(&metadata, stranger, false).unwrap_err().contains("belongs to uid"));
        assert!(check_client_socket(&metadata, owner, true).unwrap_err().contains("loop"));
        let directory = std::fs::metadata(scratch.path()).unwrap();
        assert_eq!(check_client_socket(&directory, owner, false), Err("not a socket".to_owned()));
    }

    #[test]
    fn a_symlink_or_one_of_vnets_sockets_is_refused_as_the_client() {
        let scratch = tempfile::tempdir().unwrap();
        let target = scratch.path().join("real");
        let _real = UnixDatagram::bind(&target).unwrap();
        let link = scratch.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(ClientSocket::open(&link, 0).err().unwrap().contains("symbolic link"));
        assert!(ClientSocket::open(&target, 0).is_ok());
        let ours = scratch.path().join("ours");
        let _socket = UnixDatagram::bind(&ours).unwrap();
        let bound = BoundPath::new(ours.clone());
        assert!(ClientSocket::open(&ours, 0).err().unwrap().contains("loop"));
        drop(bound);
    }

    #[test]
    fn a_vde_directory_vnet_creates_is_private_whatever_the_umask_and_an_existing_one_keeps_its_mode() {
        let scratch = tempfile::tempdir().unwrap();
        let created = scratch.path().join("switch");
        let _listener = VdeListener::bind(&created).unwrap();
        let mode = std::fs::metadata(&created).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "a new VDE directory is the user's alone");

        let shared = scratch.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o770)).unwrap();
        let _other = VdeListener::bind(&shared).unwrap();
        let mode = std::fs::metadata(&shared).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o770, "a directory the user made keeps the mode they chose");
    }
}
