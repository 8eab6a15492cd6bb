//! DNS upstreams that follow the host: the resolv.conf the gateway took its upstreams
//! from, watched with inotify, so that a VPN coming up or a network change reaches the
//! guests without a restart.
//!
//! The file itself and the directories of its path (and of where a symlink such as
//! systemd-resolved's leads) are watched, so that a file written in place, replaced by a
//! rename, or removed and made again is seen. What changed is not read from the events:
//! the file is read again and its nameservers compared. This module knows files and
//! addresses, nothing of the gateway's protocols.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use vnet_gateway::resolv_conf_nameservers;
use vnet_runtime::sys::FileWatch;

/// A resolv.conf being followed.
pub struct ResolvConfWatch {
    path: PathBuf,
    watch: FileWatch,
    nameservers: Vec<SocketAddr>,
}

impl ResolvConfWatch {
    /// Watches `path`, whose nameservers are `nameservers` now.
    pub fn new(path: PathBuf, nameservers: Vec<SocketAddr>) -> io::Result<Self> {
        let watch = FileWatch::new()?;
        for dir in watched_dirs(&path) {
            watch.add(&dir)?;
        }
        // The file may be missing for now; its directory's watch sees it come.
        let _ = watch.add(&path);
        Ok(Self { path, watch, nameservers })
    }

    /// The watch, to register with the loop.
    pub fn watch(&self) -> &FileWatch {
        &self.watch
    }

    /// After the watch was readable: the new nameservers, if the file's changed. A file
    /// that cannot be read or names none leaves the upstreams as they were.
    pub fn changed_nameservers(&mut self) -> Option<Vec<SocketAddr>> {
        self.watch.drain().ok()?;
        // A replaced file is a new inode: watch it too.
        let _ = self.watch.add(&self.path);
        let text = std::fs::read_to_string(&self.path).ok()?;
        let nameservers = resolv_conf_nameservers(&text);
        if nameservers.is_empty() || nameservers == self.nameservers {
            return None;
        }
        self.nameservers = nameservers.clone();
        Some(nameservers)
    }
}

/// The directories whose entries decide what `path` is: its own, and that of each
/// symlink target on the way.
pub fn watched_dirs(path: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = path.parent().map(Path::to_path_buf).into_iter().collect();
    let mut current = path.to_path_buf();
    for _ in 0..8 {
        let Ok(target) = std::fs::read_link(&current) else {
            break;
        };
        let target = match current.parent() {
            Some(parent) if target.is_relative() => parent.join(target),
            _ => target,
        };
        if let Some(dir) = target.parent().filter(|dir| !dirs.iter().any(|d| d == dir)) {
            dirs.push(dir.to_path_buf());
        }
        current = target;
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_written_in_place_or_replaced_gives_its_new_nameservers_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::fs::write(&path, "nameserver 127.0.0.1\n").unwrap();
        let first = vec!["127.0.0.1:53".parse().unwrap()];
        let mut watch = ResolvConfWatch::new(path.clone(), first).unwrap();
        assert_eq!(watch.changed_nameservers(), None, "nothing changed");

        std::fs::write(&path, "# a VPN came up\nnameserver 127.0.0.2\n").unwrap();
        assert_eq!(watch.changed_nameservers(), Some(vec!["127.0.0.2:53".parse().unwrap()]));
        assert_eq!(watch.changed_nameservers(), None);

        let replacement = dir.path().join("resolv.conf.new");
        std::fs::write(&replacement, "nameserver ::1\n").unwrap();
        std::fs::rename(&replacement, &path).unwrap();
        assert_eq!(watch.changed_nameservers(), Some(vec!["[::1]:53".parse().unwrap()]), "replaced");
        std::fs::write(&path, "nameserver 127.0.0.3\n").unwrap();
        assert_eq!(watch.changed_nameservers(), Some(vec!["127.0.0.3:53".parse().unwrap()]));

        std::fs::write(&path, "search lan\n").unwrap();
        assert_eq!(watch.changed_nameservers(), None, "a file naming no server is ignored");
    }

    #[test]
    fn a_symlinked_resolv_conf_is_watched_where_it_leads() {
        let dir = tempfile::tempdir().unwrap();
        let target_dir = dir.path().join("run");
        std::fs::create_dir(&target_dir).unwrap();
        std::fs::write(target_dir.join("stub-resolv.conf"), "nameserver 127.0.0.53\n").unwrap();
        let link = dir.path().join("resolv.conf");
        std::os::unix::fs::symlink("run/stub-resolv.conf", &link).unwrap();
        assert_eq!(watched_dirs(&link), [dir.path().to_path_buf(), target_dir]);
    }
}
