//! Unix socket paths that vnet binds: replacing the stale file a dead vnet left behind,
//! refusing one a live process still serves, removing ours on shutdown, and telling
//! whether a socket file is one of ours (so no peer can make vnet talk to itself).
//!
//! Nothing here knows about framing or ports; stream and dgram listeners both use it.

use std::collections::BTreeSet;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::TransportError;

/// Whether a socket file is served by a stream or a datagram socket, which decides how
/// liveness is probed.
#[derive(Debug, Clone, Copy)]
pub enum SocketKind {
    /// SOCK_STREAM.
    Stream,
    /// SOCK_DGRAM.
    Datagram,
}

/// The device and inode of every socket file vnet has bound and not yet removed.
static OWN_SOCKETS: Mutex<BTreeSet<(u64, u64)>> = Mutex::new(BTreeSet::new());

/// Whether the file with device `dev` and inode `ino` is a socket vnet bound.
pub fn is_own_socket(dev: u64, ino: u64) -> bool {
    OWN_SOCKETS.lock().is_ok_and(|own| own.contains(&(dev, ino)))
}

/// A socket file vnet created; dropping it removes the file.
#[derive(Debug)]
pub struct BoundPath {
    path: PathBuf,
    /// Device and inode, as [`is_own_socket`] knows the file.
    identity: Option<(u64, u64)>,
}

impl BoundPath {
    /// Makes `path` free to bind: an absent path is fine, a socket nobody answers on is
    /// removed, and anything else is an error that says what to do.
    pub fn prepare(path: &Path, kind: SocketKind) -> Result<(), TransportError> {
        let metadata = match std::fs::symlink_metadata(path) {
            Ok(metadata) => metadata,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(TransportError::io(format!("cannot inspect {}", path.display()), source))
            }
        };
        if !metadata.file_type().is_socket() {
            return Err(TransportError::PathNotSocket(path.to_owned()));
        }
        if is_served(path, kind) {
            return Err(TransportError::PathInUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(|source| {
            TransportError::io(format!("cannot remove stale socket {}", path.display()), source)
        })
    }

    /// Takes ownership of a path vnet has just bound.
    pub fn new(path: PathBuf) -> Self {
        let identity = std::fs::symlink_metadata(&path).ok().map(|metadata| (metadata.dev(), metadata.ino()));
        if let (Some(identity), Ok(mut own)) = (identity, OWN_SOCKETS.lock()) {
            own.insert(identity);
        }
        Self { path, identity }
    }

    /// The socket file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BoundPath {
    fn drop(&mut self) {
        if let (Some(identity), Ok(mut own)) = (self.identity, OWN_SOCKETS.lock()) {
            own.remove(&identity);
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove socket file");
        }
    }
}

fn is_served(path: &Path, kind: SocketKind) -> bool {
    match kind {
        SocketKind::Stream => UnixStream::connect(path).is_ok(),
        SocketKind::Datagram => UnixDatagram::unbound().and_then(|s| s.connect(path)).is_ok(),
    }
}

/// Maps a bind error on `path` to a message that says how to fix it.
pub fn bind_error(path: &Path, source: io::Error) -> TransportError {
    match source.kind() {
        io::ErrorKind::PermissionDenied => TransportError::PathNotWritable(path.to_owned()),
        io::ErrorKind::NotFound => TransportError::PathNotWritable(path.to_owned()),
        _ => TransportError::io(format!("cannot bind {}", path.display()), source),
    }
}
