//! Named networks' runtime directories: `$XDG_RUNTIME_DIR/vnet/NAME/`, or
//! `/run/vnet/NAME/` as root. Everything a named network creates lives there: the API
//! socket and the transports' default sockets. This module only names and creates the
//! paths; it never opens a socket.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

/// The API socket's file name in a runtime directory.
pub const API_SOCKET: &str = "api.sock";

/// The directory that holds every named network's runtime directory.
pub fn base() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/run/vnet");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("vnet"),
        _ => std::env::temp_dir().join(format!("vnet-{}", nix::unistd::geteuid())),
    }
}

/// Checks a network name: letters, digits, `-`, `_` and `.`, not starting with `.`, at
/// most 64 characters, so it is always one safe path component.
pub fn validate_name(name: &str) -> Result<(), String> {
    let valid_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if name.is_empty() || name.len() > 64 || name.starts_with('.') || !valid_chars {
        return Err(format!(
            "'{name}' is not a valid network name; use up to 64 letters, digits, '-', '_' or '.', not starting with '.'"
        ));
    }
    Ok(())
}

/// The runtime directory of network `name`.
pub fn of(name: &str) -> PathBuf {
    base().join(name)
}

/// Creates network `name`'s runtime directory (mode 0700, so only its owner reaches the
/// sockets inside) and returns it.
pub fn create(name: &str) -> anyhow::Result<PathBuf> {
    let dir = of(name);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create the runtime directory {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {} to its owner", dir.display()))?;
    Ok(dir)
}

/// The API socket of network `name`, or of the only running network when `name` is
/// None.
pub fn api_socket(name: Option<&str>) -> anyhow::Result<PathBuf> {
    if let Some(name) = name {
        validate_name(name).map_err(anyhow::Error::msg)?;
        return Ok(of(name).join(API_SOCKET));
    }
    let running = running_networks().unwrap_or_default();
    match running.as_slice() {
        [only] => Ok(of(only).join(API_SOCKET)),
        [] => bail!(
            "no named network is running under {}; start one with `vnet run --name NAME ...`",
            base().display()
        ),
        many => bail!("several networks are running ({}); name one", many.join(", ")),
    }
}

/// Names of networks whose API socket answers, sorted. The runtime directory of a vnet
/// that was killed stays behind with a dead socket, and is not counted.
pub fn running_networks() -> io::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(base())?
        .filter_map(Result::ok)
        .filter(|entry| api_answers(&entry.path()))
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

fn api_answers(dir: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(dir.join(API_SOCKET)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_single_safe_path_components() {
        for good in ["lab", "vm-1", "a.b_c", &"x".repeat(64)] {
            assert_eq!(validate_name(good), Ok(()), "{good}");
        }
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", "ü", &"x".repeat(65)] {
            assert!(validate_name(bad).unwrap_err().contains("not a valid network name"), "{bad}");
        }
    }
}
