//! The system calls that safe wrappers cannot express: reading into uninitialised buffer
//! space, batched and segmented datagram I/O, kernel peeks, tap device and interface
//! ioctls, file watches, and the fork and descriptor passing of namespace setup.
//!
//! Every `unsafe` block of vnet's datapath lives here, each with the reason it is sound.
//! Nothing here knows about ports, frames or the switch.

use std::ffi::CString;
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use bytes::BytesMut;
use socket2::SockAddr;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Reads from `fd` into the spare capacity of `buffer` and extends its length by what was
/// read. The caller reserves the space first.
pub fn read_into(fd: BorrowedFd<'_>, buffer: &mut BytesMut) -> io::Result<usize> {
    let spare = buffer.spare_capacity_mut();
    let len = spare.len();
    // SAFETY: `spare` is writable memory owned by `buffer` of at least `len` bytes; the
    // kernel writes at most `len` bytes into it and nothing else aliases it meanwhile.
    let n = unsafe { libc::read(fd.as_raw_fd(), spare.as_mut_ptr().cast(), len) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: the kernel initialised exactly `n <= len` bytes after the current length.
    unsafe { buffer.set_len(buffer.len() + n) };
    Ok(n)
}

/// Buffers for receiving many datagrams with one `recvmmsg` call.
pub struct DatagramBatch {
    slots: Vec<Box<[u8]>>,
    addrs: Vec<libc::sockaddr_storage>,
    lens: Vec<usize>,
    addr_lens: Vec<libc::socklen_t>,
}

impl DatagramBatch {
    /// Room for `count` datagrams of up to `slot_len` bytes each.
    pub fn new(count: usize, slot_len: usize) -> Self {
        Self {
            slots: (0..count).map(|_| vec![0u8; slot_len].into_boxed_slice()).collect(),
            // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
            addrs: (0..count).map(|_| unsafe { zeroed() }).collect(),
            lens: vec![0; count],
            addr_lens: vec![0; count],
        }
    }

    /// Receives up to the batch size without blocking. Returns how many arrived; 0 with
    /// `WouldBlock` as error means none.
    pub fn receive(&mut self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        let count = self.slots.len();
        let mut iovecs: Vec<libc::iovec> = self
            .slots
            .iter_mut()
            .map(|slot| libc::iovec { iov_base: slot.as_mut_ptr().cast(), iov_len: slot.len() })
            .collect();
        let addrs = self.addrs.as_mut_ptr();
        let iovec_base = iovecs.as_mut_ptr();
        let mut headers: Vec<libc::mmsghdr> = (0..count)
            .map(|i| {
                // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
                let mut header: libc::mmsghdr = unsafe { zeroed() };
                // SAFETY: `i < count`, the length of both `addrs` and `iovecs`.
                let (addr, iovec) = unsafe { (addrs.add(i), iovec_base.add(i)) };
                header.msg_hdr.msg_name = addr.cast();
                header.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                header.msg_hdr.msg_iov = iovec;
                header.msg_hdr.msg_iovlen = 1;
                header
            })
            .collect();
        // SAFETY: every header points at a live iovec and address buffer owned by `self`
        // or this frame, sized as declared; the kernel writes within those sizes.
        let received = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                headers.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        let received = check(received)? as usize;
        for (i, header) in headers.iter().take(received).enumerate() {
            self.lens[i] = header.msg_len as usize;
            self.addr_lens[i] = header.msg_hdr.msg_namelen;
        }
        Ok(received)
    }

    /// Datagram `index` of the last receive: its bytes and sender.
    pub fn datagram(&self, index: usize) -> (&[u8], SockAddr) {
        // SAFETY: the kernel filled this storage with an address of `addr_lens[index]`
        // bytes, which is what SockAddr::new requires.
        let sender = unsafe { SockAddr::new(self.addrs[index], self.addr_lens[index]) };
        (&self.slots[index][..self.lens[index]], sender)
    }
}

/// Sends each of `datagrams` to `to` with one `sendmmsg` call. Returns how many the
/// kernel took; the rest were refused (buffer full) or the call failed.
pub fn send_datagrams(fd: BorrowedFd<'_>, to: &SockAddr, datagrams: &[&[u8]]) -> io::Result<usize> {
    let mut iovecs: Vec<libc::iovec> = datagrams
        .iter()
        .map(|d| libc::iovec { iov_base: d.as_ptr() as *mut libc::c_void, iov_len: d.len() })
        .collect();
    let mut headers: Vec<libc::mmsghdr> = iovecs
        .iter_mut()
        .map(|iov| {
            // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
            let mut header: libc::mmsghdr = unsafe { zeroed() };
            header.msg_hdr.msg_name = to.as_ptr() as *mut libc::c_void;
            header.msg_hdr.msg_namelen = to.len();
            header.msg_hdr.msg_iov = iov;
            header.msg_hdr.msg_iovlen = 1;
            header
        })
        .collect();
    // SAFETY: the headers point at the caller's datagrams and address, which outlive the
    // call; the kernel only reads through them.
    let sent = unsafe {
        libc::sendmmsg(
            fd.as_raw_fd(),
            headers.as_mut_ptr(),
            headers.len() as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    Ok(check(sent)? as usize)
}

/// The most pieces [`send_gathered`] sends, and [`peek_into_foreign`] fills, with one
/// call.
pub const MAX_GATHERED: usize = 64;

/// Sends the bytes at `pieces` (address and length, in order; at most [`MAX_GATHERED`])
/// on the connected stream socket `fd` with one `sendmsg`, without blocking. The pieces
/// may lie outside vnet's own buffers, such as in guest memory a VM shares: only the
/// kernel reads them. Returns the bytes sent.
pub fn send_gathered(fd: BorrowedFd<'_>, pieces: &[(*const u8, usize)]) -> io::Result<usize> {
    let mut iovecs = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; MAX_GATHERED];
    for (iovec, &(address, len)) in iovecs.iter_mut().zip(pieces) {
        *iovec = libc::iovec { iov_base: address as *mut libc::c_void, iov_len: len };
    }
    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
    let mut message: libc::msghdr = unsafe { zeroed() };
    message.msg_iov = iovecs.as_mut_ptr();
    message.msg_iovlen = pieces.len().min(MAX_GATHERED);
    // SAFETY: the message points at `iovecs`, alive for the call. The kernel only reads
    // through the iovecs, and an address it cannot read fails the call with EFAULT, so
    // no memory Rust relies on changes whatever the pieces say.
    let sent = unsafe { libc::sendmsg(fd.as_raw_fd(), &message, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

/// Memory outside what Rust code owns that the kernel may write into: receive buffers in
/// the memory a VM shares with vnet.
#[derive(Debug, Clone, Copy)]
pub struct ForeignWritable {
    address: *mut u8,
    len: usize,
}

impl ForeignWritable {
    /// `len` bytes at `address`.
    ///
    /// # Safety
    /// They must be mapped writable for as long as the value is used, and no Rust
    /// reference may cover them meanwhile (memory a guest shares, not vnet's own).
    pub unsafe fn new(address: *mut u8, len: usize) -> Self {
        Self { address, len }
    }
}

/// Copies the bytes of the stream socket `fd` from its peek offset on into `regions`, in
/// order (at most [`MAX_GATHERED`] of them), without consuming them or blocking, and
/// returns how many.
pub fn peek_into_foreign(
    fd: BorrowedFd<'_>,
    regions: impl IntoIterator<Item = ForeignWritable>,
) -> io::Result<usize> {
    let mut iovecs = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; MAX_GATHERED];
    let mut count = 0;
    for (iovec, region) in iovecs.iter_mut().zip(regions) {
        *iovec = libc::iovec { iov_base: region.address.cast(), iov_len: region.len };
        count += 1;
    }
    // SAFETY: every iovec describes memory a ForeignWritable vouches for: mapped
    // writable and covered by no Rust reference, so the kernel's writes break nothing
    // Rust relies on.
    unsafe { receive_into_iovecs(fd, &mut iovecs[..count], libc::MSG_PEEK) }
}

/// How many received bytes wait in the stream socket `fd`'s queue (SIOCINQ).
pub fn unread_bytes(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCINQ writes one int into `queued`, which outlives the call.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut queued) })?;
    Ok(queued.max(0) as usize)
}

/// Sends the bytes of `parts`, gathered, to `to` as UDP datagrams of `segment` bytes each
/// (the last may be shorter) with one `sendmsg`, the kernel cutting them (UDP generic
/// segmentation offload, UDP_SEGMENT). The whole must fit one datagram's 64 KiB and at
/// most 64 segments. Returns the bytes sent.
pub fn send_segmented(
    fd: BorrowedFd<'_>,
    to: &SockAddr,
    parts: &[std::io::IoSlice<'_>],
    segment: u16,
) -> io::Result<usize> {
    // Room for one control message holding a u16, aligned as cmsghdr needs.
    let mut control = [0u64; 4];
    // SAFETY: CMSG_SPACE only computes a size.
    let control_len = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as usize;
    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
    let mut message: libc::msghdr = unsafe { zeroed() };
    message.msg_name = to.as_ptr() as *mut libc::c_void;
    message.msg_namelen = to.len();
    // IoSlice is guaranteed to be ABI-compatible with iovec.
    message.msg_iov = parts.as_ptr() as *mut libc::iovec;
    message.msg_iovlen = parts.len();
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = control_len.min(size_of_val(&control));
    // SAFETY: the control buffer is as long as msg_controllen says and aligned for
    // cmsghdr, so CMSG_FIRSTHDR points into it, with room for the header and a u16.
    unsafe {
        let header = libc::CMSG_FIRSTHDR(&message);
        (*header).cmsg_level = libc::SOL_UDP;
        (*header).cmsg_type = libc::UDP_SEGMENT;
        (*header).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(header).cast::<u16>(), segment);
    }
    // SAFETY: the message points at the caller's address and parts and at `control`,
    // all alive for the call; the kernel only reads through it.
    let sent = unsafe { libc::sendmsg(fd.as_raw_fd(), &message, libc::MSG_DONTWAIT) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

/// An inotify descriptor watching files and directories for changes, for the loop to
/// wait on. Only whether something changed is kept, not what.
pub struct FileWatch(OwnedFd);

impl FileWatch {
    /// A watch of nothing yet, non-blocking.
    pub fn new() -> io::Result<Self> {
        // SAFETY: inotify_init1 takes flags only and returns a new descriptor or -1.
        let fd = check(unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) })?;
        // SAFETY: the descriptor was just made and is owned by nobody else.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Watches `path` (followed if a symlink) for writes, replacement and removal: of
    /// itself, and of its entries if it is a directory. Watching the same file again
    /// after it was replaced watches the new one.
    pub fn add(&self, path: &std::path::Path) -> io::Result<()> {
        let path = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mask = libc::IN_CLOSE_WRITE
            | libc::IN_MODIFY
            | libc::IN_MOVED_TO
            | libc::IN_MOVED_FROM
            | libc::IN_CREATE
            | libc::IN_DELETE
            | libc::IN_DELETE_SELF
            | libc::IN_MOVE_SELF;
        // SAFETY: `path` is a NUL-terminated string alive for the call.
        check(unsafe { libc::inotify_add_watch(self.0.as_raw_fd(), path.as_ptr(), mask) }).map(drop)
    }

    /// Reads every event waiting; true if there was any.
    pub fn drain(&self) -> io::Result<bool> {
        let mut events = [0u8; 4096];
        let mut any = false;
        loop {
            // SAFETY: read writes at most `events.len()` bytes into `events`.
            let n = unsafe { libc::read(self.0.as_raw_fd(), events.as_mut_ptr().cast(), events.len()) };
            match n {
                n if n > 0 => any = true,
                0 => return Ok(any),
                _ => {
                    let error = io::Error::last_os_error();
                    return if error.kind() == io::ErrorKind::WouldBlock { Ok(any) } else { Err(error) };
                }
            }
        }
    }
}

impl std::os::fd::AsRawFd for FileWatch {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

/// Opens `path`, relative to directory `dir`, for reading, only if it resolves beneath
/// `dir`: `..`, absolute paths and symlinks that lead out fail (openat2 with
/// RESOLVE_BENEATH and RESOLVE_NO_MAGICLINKS), so a file server cannot be walked out
/// of its root, even by a symlink made inside it.
pub fn open_beneath(dir: BorrowedFd<'_>, path: &str) -> io::Result<std::fs::File> {
    let path = CString::new(path).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: open_how is plain old data; all-zero is a valid value.
    let mut how: libc::open_how = unsafe { zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 reads `path` (NUL-terminated) and `how` (of the size given), both
    // alive for the call, and returns a new descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const libc::open_how,
            size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the call returned a fresh descriptor owned by nobody else.
    Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) }))
}

/// Closes every descriptor of this process above standard error but `keep`
/// (close_range), for a process forked to do one job that must hold nothing else.
pub fn close_descriptors_except(keep: std::os::fd::RawFd) -> io::Result<()> {
    let keep = libc::c_uint::try_from(keep).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let ranges = [(3, keep.checked_sub(1)), (keep.saturating_add(1), Some(libc::c_uint::MAX))];
    for (first, last) in ranges {
        let Some(last) = last.filter(|last| *last >= first) else {
            continue;
        };
        // SAFETY: close_range closes descriptors in the range and touches no memory;
        // nothing in this process uses them after (the caller is a fresh child).
        check(unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) } as libc::c_int)?;
    }
    Ok(())
}

/// The longest interface name Linux accepts, without its NUL.
pub const MAX_IFNAME_LEN: usize = libc::IFNAMSIZ - 1;

/// An ifreq naming interface `name`, everything else zero.
fn interface_request(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() > MAX_IFNAME_LEN || name.bytes().any(|b| b == 0 || b == b'/') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad interface name"));
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(request)
}

/// The tun/tap device every tap is opened through.
pub const TUN_DEVICE: &str = "/dev/net/tun";

/// Opens [`TUN_DEVICE`] in non-blocking mode, not yet bound to any interface.
pub fn open_tun_device() -> io::Result<OwnedFd> {
    let path = CString::new(TUN_DEVICE).expect("no NUL in literal");
    // SAFETY: `path` is a valid C string; open has no other preconditions.
    let fd = check(unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) })?;
    // SAFETY: `fd` was just returned by open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes `device` (from [`open_tun_device`]) a new tap named `name` in the calling
/// thread's network namespace. Every frame read or written on it comes after a
/// `virtio_net_hdr` (IFF_VNET_HDR). The device lives as long as the descriptor.
pub fn create_tap(device: &OwnedFd, name: &str) -> io::Result<()> {
    bind_tap(device, name, libc::IFF_TUN_EXCL)
}

/// Makes `device` the tap `name`, creating it if it does not exist (which needs
/// CAP_NET_ADMIN; a persistent tap made for vnet's user with `ip tuntap add ... user`
/// does not). Otherwise like [`create_tap`].
pub fn open_or_create_tap(device: &OwnedFd, name: &str) -> io::Result<()> {
    bind_tap(device, name, 0)
}

fn bind_tap(device: &OwnedFd, name: &str, extra_flags: libc::c_int) -> io::Result<()> {
    let mut request = interface_request(name)?;
    let flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | extra_flags;
    request.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one struct ifreq, which `request` is.
    check(unsafe { libc::ioctl(device.as_raw_fd(), libc::TUNSETIFF, &mut request as *mut libc::ifreq) })
        .map(drop)
}

/// Lets a tap hand over and take TCP segments of up to 64 KiB with partial checksums
/// (TUNSETOFFLOAD with CSUM, TSO4 and TSO6).
pub fn enable_tap_offloads(tap: BorrowedFd<'_>) -> io::Result<()> {
    let offloads = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
    // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
    check(unsafe { libc::ioctl(tap.as_raw_fd(), libc::TUNSETOFFLOAD, offloads as libc::c_ulong) }).map(drop)
}

/// Sets the IFF_UP flag of interface `name` in the calling thread's network namespace.
pub fn set_link_up(name: &str) -> io::Result<()> {
    let sock = ioctl_socket()?;
    let mut request = interface_request(name)?;
    // SAFETY: SIOCGIFFLAGS and SIOCSIFFLAGS read/write one struct ifreq, which `request`
    // is; `ifru_flags` is the union member those two requests use.
    unsafe {
        check(libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request as *mut libc::ifreq))?;
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        check(libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut request as *mut libc::ifreq))?;
    }
    Ok(())
}

/// Forks the calling process. The child runs `child` and exits with the code it returns;
/// the parent gets the child's pid. Call it only while the process has a single thread.
pub fn fork_child(child: impl FnOnce() -> i32) -> io::Result<libc::pid_t> {
    // SAFETY: vnet forks only before its event loop starts, while it has one thread, so
    // the child inherits no lock held by another thread.
    let pid = check(unsafe { libc::fork() })?;
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child)).unwrap_or(127);
        // SAFETY: _exit ends the child without running the parent's atexit handlers or
        // flushing buffers it shares with the parent.
        unsafe { libc::_exit(code) };
    }
    Ok(pid)
}

/// Makes `command` run `hook` in the child between fork and exec. The caller must call
/// `spawn` only while the process has a single thread.
pub fn before_exec(
    command: &mut std::process::Command,
    hook: impl FnMut() -> io::Result<()> + Send + Sync + 'static,
) {
    use std::os::unix::process::CommandExt;
    // SAFETY: vnet spawns such commands only before its event loop starts, while it has
    // one thread, so the hook's allocations and file writes cannot deadlock on a lock
    // another thread held at fork time.
    unsafe {
        command.pre_exec(hook);
    }
}

/// Sends `payload`, and `fd` if given, over the unix socket `socket`.
pub fn send_with_fd(socket: BorrowedFd<'_>, payload: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let iov = [io::IoSlice::new(payload)];
    let fds: Vec<std::os::fd::RawFd> = fd.iter().map(|fd| fd.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    sendmsg::<()>(socket.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None)?;
    Ok(())
}

/// Receives a message of at most `N` bytes and the descriptor that came with it, if any.
pub fn receive_with_fd<const N: usize>(socket: BorrowedFd<'_>) -> io::Result<(Vec<u8>, Option<OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut payload = [0u8; N];
    let mut iov = [io::IoSliceMut::new(&mut payload)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let message = recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut received = None;
    for cmsg in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for raw in fds {
                // SAFETY: SCM_RIGHTS installed `raw` as a new descriptor in this process;
                // nothing else owns it.
                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                received.get_or_insert(owned);
            }
        }
    }
    let len = message.bytes;
    Ok((payload[..len].to_vec(), received))
}

const NS_GET_USERNS: libc::c_ulong = 0xb701;

/// The user namespace that owns the namespace behind `namespace`.
pub fn owning_user_namespace(namespace: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: NS_GET_USERNS takes no argument and returns a new descriptor or -1.
    let fd = check(unsafe { libc::ioctl(namespace.as_raw_fd(), NS_GET_USERNS) })?;
    // SAFETY: the ioctl returned a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets where the next `MSG_PEEK` read of a stream socket starts (SO_PEEK_OFF), counted
/// from the front of the receive queue. Each peek then moves it past what it copied, and
/// each ordinary read moves it back by what was read.
pub fn set_peek_offset(fd: BorrowedFd<'_>, offset: usize) -> io::Result<()> {
    let offset = libc::c_int::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: SO_PEEK_OFF reads one c_int from the pointer given, which `offset` is.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEEK_OFF,
            (&offset as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Copies received stream bytes from the socket's peek offset on into `buffers`, in
/// order, without consuming them; one system call however many buffers.
pub fn peek(fd: BorrowedFd<'_>, buffers: &mut [std::io::IoSliceMut<'_>]) -> io::Result<usize> {
    receive_into(fd, buffers, libc::MSG_PEEK)
}

/// Receives one datagram into `buffers`, filled in order, and returns its length; a
/// datagram longer than all of them together is cut short.
pub fn receive_datagram(fd: BorrowedFd<'_>, buffers: &mut [std::io::IoSliceMut<'_>]) -> io::Result<usize> {
    receive_into(fd, buffers, 0)
}

/// One non-blocking `recvmsg` into `buffers` with `flags`.
fn receive_into(
    fd: BorrowedFd<'_>,
    buffers: &mut [std::io::IoSliceMut<'_>],
    flags: libc::c_int,
) -> io::Result<usize> {
    // IoSliceMut is ABI-compatible with struct iovec on Unix.
    let iovecs = buffers.as_mut_ptr().cast::<libc::iovec>();
    // SAFETY: the iovecs are `buffers`, each describing writable memory of its stated
    // length that nothing else touches while they are borrowed here.
    unsafe { receive_into_iovecs(fd, std::slice::from_raw_parts_mut(iovecs, buffers.len()), flags) }
}

/// One non-blocking `recvmsg` into `iovecs` with `flags`.
///
/// # Safety
/// Each iovec must describe memory the kernel may write, of its stated length, that
/// nothing else reads or writes during the call.
unsafe fn receive_into_iovecs(
    fd: BorrowedFd<'_>,
    iovecs: &mut [libc::iovec],
    flags: libc::c_int,
) -> io::Result<usize> {
    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
    let mut header: libc::msghdr = unsafe { zeroed() };
    header.msg_iov = iovecs.as_mut_ptr();
    header.msg_iovlen = iovecs.len();
    // SAFETY: the header points at live iovecs the caller vouches for; the kernel writes
    // within them and into nothing else (no name, no control buffer).
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut header, flags | libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Drops up to `len` bytes from the front of a TCP socket's receive queue without
/// copying them (MSG_TRUNC) and returns how many were dropped. Linux's TCP advances the
/// socket's read position and runs its receive-buffer autotuning exactly as for a read
/// that copies.
pub fn discard(fd: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: with MSG_TRUNC on a TCP socket the kernel writes nothing to the buffer, so
    // a null one of any length is never touched.
    let n = unsafe {
        libc::recv(fd.as_raw_fd(), std::ptr::null_mut(), len, libc::MSG_DONTWAIT | libc::MSG_TRUNC)
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// How many more bytes a socket's send buffer holds before writes are refused: SO_SNDBUF
/// less what its queued buffers take (SO_MEMINFO's SNDBUF and WMEM_QUEUED), which counts
/// the kernel's per-buffer overhead as the write path does.
pub fn send_buffer_free(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut info = [0u32; libc::SK_MEMINFO_DROPS as usize + 1];
    let mut len = size_of_val(&info) as libc::socklen_t;
    // SAFETY: SO_MEMINFO writes at most `len` bytes into `info` and stores the length
    // written in `len`.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    })?;
    let sndbuf = info[libc::SK_MEMINFO_SNDBUF as usize] as usize;
    let queued = info[libc::SK_MEMINFO_WMEM_QUEUED as usize] as usize;
    Ok(sndbuf.saturating_sub(queued))
}

/// Makes a UDP socket send with "don't fragment" and fail with EMSGSIZE for a datagram
/// longer than the path MTU, instead of letting the kernel fragment it
/// (IP_MTU_DISCOVER, or IPV6_MTU_DISCOVER for an IPv6 socket, set to PMTUDISC_DO).
pub fn set_dont_fragment(fd: BorrowedFd<'_>, ipv6: bool) -> io::Result<()> {
    let (level, name, value) = if ipv6 {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, libc::IPV6_PMTUDISC_DO)
    } else {
        (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_DO)
    };
    // SAFETY: both options read one c_int from the pointer given, which `value` is.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// The MTU of the path a connected UDP socket sends on (IP_MTU, or IPV6_MTU for an
/// IPv6 socket): the route's or its interface's MTU until the path says otherwise.
pub fn path_mtu(fd: BorrowedFd<'_>, ipv6: bool) -> io::Result<usize> {
    let (level, name) =
        if ipv6 { (libc::IPPROTO_IPV6, libc::IPV6_MTU) } else { (libc::IPPROTO_IP, libc::IP_MTU) };
    let mut mtu: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: both options write one c_int into `mtu` and its length into `len`.
    check(unsafe {
        libc::getsockopt(fd.as_raw_fd(), level, name, (&mut mtu as *mut libc::c_int).cast(), &mut len)
    })?;
    usize::try_from(mtu).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
}

/// An AF_INET `struct sockaddr` holding `ip` (port 0).
fn sockaddr_v4(ip: std::net::Ipv4Addr) -> libc::sockaddr {
    let inet = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16 bytes of plain old data; the kernel
    // reads this sockaddr as a sockaddr_in because of its family.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(inet) }
}

/// An AF_INET datagram socket for interface ioctls.
fn ioctl_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket has no memory preconditions.
    let fd = check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` was just returned by socket and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Runs one interface ioctl `request` on `name` after `fill` set the request's fields.
fn interface_ioctl(
    name: &str,
    request: libc::c_ulong,
    fill: impl FnOnce(&mut libc::ifreq),
) -> io::Result<()> {
    let sock = ioctl_socket()?;
    let mut ifreq = interface_request(name)?;
    fill(&mut ifreq);
    // SAFETY: the SIOCSIF* requests used here read one struct ifreq, which `ifreq` is.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), request, &mut ifreq as *mut libc::ifreq) })?;
    Ok(())
}

/// Gives interface `name` the IPv4 address `ip` with a `prefix_len`-bit netmask.
pub fn set_ipv4_address(name: &str, ip: std::net::Ipv4Addr, prefix_len: u8) -> io::Result<()> {
    let mask = std::net::Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0));
    interface_ioctl(name, libc::SIOCSIFADDR, |r| r.ifr_ifru.ifru_addr = sockaddr_v4(ip))?;
    interface_ioctl(name, libc::SIOCSIFNETMASK, |r| r.ifr_ifru.ifru_netmask = sockaddr_v4(mask))
}

/// Sets the MTU of interface `name`.
pub fn set_mtu(name: &str, mtu: u16) -> io::Result<()> {
    interface_ioctl(name, libc::SIOCSIFMTU, |r| r.ifr_ifru.ifru_mtu = libc::c_int::from(mtu))
}

/// Sets the MAC address of interface `name`.
pub fn set_mac(name: &str, mac: [u8; 6]) -> io::Result<()> {
    interface_ioctl(name, libc::SIOCSIFHWADDR, |r| {
        let mut address = libc::sockaddr { sa_family: libc::ARPHRD_ETHER, sa_data: [0; 14] };
        for (dst, src) in address.sa_data.iter_mut().zip(mac) {
            *dst = src as libc::c_char;
        }
        r.ifr_ifru.ifru_hwaddr = address;
    })
}

/// Linux's `struct rtentry` (glibc does not export it through the libc crate).
#[repr(C)]
struct RouteEntry {
    pad1: libc::c_ulong,
    dst: libc::sockaddr,
    gateway: libc::sockaddr,
    genmask: libc::sockaddr,
    flags: libc::c_ushort,
    pad2: libc::c_short,
    pad3: libc::c_ulong,
    tos: libc::c_uchar,
    class: libc::c_uchar,
    pad4: [libc::c_short; 3],
    metric: libc::c_short,
    dev: *mut libc::c_char,
    mtu: libc::c_ulong,
    window: libc::c_ulong,
    irtt: libc::c_ushort,
}

/// Adds a default route via `gateway`.
pub fn add_default_route(gateway: std::net::Ipv4Addr) -> io::Result<()> {
    let sock = ioctl_socket()?;
    let any = std::net::Ipv4Addr::UNSPECIFIED;
    let mut route = RouteEntry {
        pad1: 0,
        dst: sockaddr_v4(any),
        gateway: sockaddr_v4(gateway),
        genmask: sockaddr_v4(any),
        flags: (libc::RTF_UP | libc::RTF_GATEWAY) as libc::c_ushort,
        pad2: 0,
        pad3: 0,
        tos: 0,
        class: 0,
        pad4: [0; 3],
        metric: 0,
        dev: std::ptr::null_mut(),
        mtu: 0,
        window: 0,
        irtt: 0,
    };
    // SAFETY: SIOCADDRT reads one struct rtentry, which `route` is laid out as; its
    // device pointer is null, so the kernel picks the interface from the gateway.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT, &mut route as *mut RouteEntry) })?;
    Ok(())
}

/// Where `si_syscall` lies in a `siginfo_t` on 64-bit Linux: after three ints, the union
/// starts at 16, and the SIGSYS member holds the call's address (8 bytes) first.
const SI_SYSCALL_OFFSET: usize = 24;

/// Makes a system call that the sandbox's seccomp filter stops end vnet with one line on
/// standard error naming the call, instead of the kernel's silent kill.
pub fn report_stopped_calls() -> io::Result<()> {
    // SAFETY: a zeroed sigaction is valid; the handler is an extern "C" function that
    // only makes async-signal-safe calls (write, _exit) and touches no shared state.
    unsafe {
        let mut action: libc::sigaction = zeroed();
        action.sa_sigaction = on_stopped_call as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        check(libc::sigemptyset(&mut action.sa_mask))?;
        check(libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()))?;
    }
    Ok(())
}

extern "C" fn on_stopped_call(_signal: libc::c_int, info: *mut libc::siginfo_t, _context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t, and for a SIGSYS raised by seccomp it
    // fills the SIGSYS member, whose call number lies at SI_SYSCALL_OFFSET.
    let number =
        unsafe { std::ptr::read_unaligned(info.cast::<u8>().add(SI_SYSCALL_OFFSET).cast::<libc::c_int>()) };
    let mut line = LineBuffer::default();
    line.push(b"vnet: the sandbox stopped system call ");
    line.push(crate::syscall_names::syscall_name(i64::from(number)).unwrap_or("unknown").as_bytes());
    line.push(b" (number ");
    line.push_number(number);
    line.push(b"); vnet cannot go on. Run with --sandbox off to work around it, and report the call.\n");
    // SAFETY: write and _exit are async-signal-safe; the buffer outlives the call.
    unsafe {
        libc::write(2, line.bytes.as_ptr().cast(), line.len);
        libc::_exit(159);
    }
}

/// A line built without allocating, as a signal handler must.
struct LineBuffer {
    bytes: [u8; 256],
    len: usize,
}

impl Default for LineBuffer {
    fn default() -> Self {
        Self { bytes: [0; 256], len: 0 }
    }
}

impl LineBuffer {
    fn push(&mut self, text: &[u8]) {
        let take = text.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + take].copy_from_slice(&text[..take]);
        self.len += take;
    }

    fn push_number(&mut self, number: libc::c_int) {
        let mut digits = [0u8; 12];
        let mut at = digits.len();
        let mut rest = i64::from(number).unsigned_abs();
        loop {
            at -= 1;
            digits[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        if number < 0 {
            self.push(b"-");
        }
        self.push(&digits[at..]);
    }
}
