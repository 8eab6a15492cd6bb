//! `vnet qemu-args NAME`: the QEMU arguments that attach a VM to a running network,
//! ready to paste, built from the `--listen` specs the network reports. Each call gives
//! a fresh MAC address so two pasted VMs never clash. Nothing here talks to QEMU.

use std::hash::{BuildHasher, RandomState};
use std::path::Path;

use anyhow::bail;
use clap::ValueEnum;

use crate::endpoints::ListenSpec;
use crate::spec::{parse_listen_arg, ListenArg};

/// The NIC the guest sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Model {
    /// virtio-net-pci.
    VirtioNetPci,
    /// Intel e1000.
    E1000,
    /// Realtek rtl8139.
    Rtl8139,
}

impl Model {
    fn device(self) -> &'static str {
        match self {
            Model::VirtioNetPci => "virtio-net-pci",
            Model::E1000 => "e1000",
            Model::Rtl8139 => "rtl8139",
        }
    }
}

/// The QEMU backend that carries the frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    /// `-netdev stream`.
    Stream,
    /// `-netdev dgram`.
    Dgram,
    /// `-netdev vde`.
    Vde,
    /// `-netdev vhost-user`.
    VhostUser,
}

/// A MAC address in QEMU's 52:54:00 range, random per call.
fn random_mac() -> String {
    let bits = RandomState::new().hash_one(std::time::SystemTime::now());
    let [a, b, c, ..] = bits.to_le_bytes();
    format!("52:54:00:{a:02x}:{b:02x}:{c:02x}")
}

/// The `-netdev` value for `spec`, or None if it is not of `transport`.
fn netdev(spec: &ListenSpec, transport: Transport, unique: &str) -> Option<String> {
    match (spec, transport) {
        (ListenSpec::StreamUnix(path), Transport::Stream) => {
            Some(format!("stream,id=net0,server=off,addr.type=unix,addr.path={}", path.display()))
        }
        (ListenSpec::StreamTcp(addr), Transport::Stream) => {
            let (host, port) = addr.rsplit_once(':')?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            Some(format!("stream,id=net0,server=off,addr.type=inet,addr.host={host},addr.port={port}"))
        }
        (ListenSpec::DgramUnix(path), Transport::Dgram) => {
            let local = path.parent().unwrap_or(Path::new("/tmp")).join(format!("guest-{unique}.sock"));
            Some(format!(
                "dgram,id=net0,local.type=unix,local.path={},remote.type=unix,remote.path={}",
                local.display(),
                path.display()
            ))
        }
        (ListenSpec::Vde(dir), Transport::Vde) => Some(format!("vde,id=net0,sock={}", dir.display())),
        (ListenSpec::VhostUser(_) | ListenSpec::VhostUserDir(_), Transport::VhostUser) => {
            Some("vhost-user,id=net0,chardev=vnet0".to_owned())
        }
        (ListenSpec::DgramUdp(addr), Transport::Dgram) => {
            let (host, port) = addr.rsplit_once(':')?;
            Some(format!(
                "dgram,id=net0,local.type=inet,local.host={host},local.port=0,remote.type=inet,remote.host={host},remote.port={port}"
            ))
        }
        _ => None,
    }
}

/// The arguments for a VM with `model` on the network that listens at `listen`, over
/// `transport`.
pub fn qemu_args(listen: &[String], model: Model, transport: Transport) -> anyhow::Result<String> {
    let mac = random_mac();
    let unique = mac.replace(':', "");
    let specs: Vec<ListenSpec> = listen
        .iter()
        .filter_map(|text| match parse_listen_arg(text).ok()?.arg {
            ListenArg::Spec(spec) => Some(spec),
            _ => None,
        })
        .collect();
    let Some((spec, netdev)) =
        specs.iter().find_map(|spec| netdev(spec, transport, &unique[6..]).map(|netdev| (spec, netdev)))
    else {
        let name = transport.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default();
        let how = match transport {
            Transport::VhostUser => "--listen vhost-user:PATH".to_owned(),
            _ => format!("--listen {name} (and --name)"),
        };
        bail!("the network does not listen on {name}; start it with {how}, or choose another --transport");
    };
    let device = format!("-netdev {netdev} -device {},netdev=net0,mac={mac}", model.device());
    match spec {
        ListenSpec::VhostUser(path) => Ok(format!("{} {device}", vhost_user_prelude(path, model)?)),
        ListenSpec::VhostUserDir(dir) => {
            Ok(format!("{} {device}", vhost_user_prelude(&free_socket(dir)?, model)?))
        }
        _ => Ok(device),
    }
}

/// The free socket of a `vhost-user:DIR/` directory: the one with the highest number.
fn free_socket(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| anyhow::anyhow!("cannot list {}: {e}", dir.display()))?;
    let number = |name: &str| name.strip_prefix("vm-")?.strip_suffix(".sock")?.parse::<u32>().ok();
    let highest = entries.filter_map(|entry| number(entry.ok()?.file_name().to_str()?)).max();
    match highest {
        Some(n) => Ok(dir.join(vnet_vhost_user::directory_socket_name(n))),
        None => bail!("{} holds no vhost-user socket; is the network running?", dir.display()),
    }
}

/// The guest memory QEMU must share with vnet, and the socket to reach it: vhost-user
/// works only with virtio-net and memory backed by a shared file. SIZE must equal `-m`.
fn vhost_user_prelude(path: &Path, model: Model) -> anyhow::Result<String> {
    if model != Model::VirtioNetPci {
        bail!("vhost-user serves virtio-net only; use --model virtio-net-pci");
    }
    Ok(format!(
        "-object memory-backend-memfd,id=mem,size=256M,share=on -numa node,memdev=mem \\\n\
         -chardev socket,id=vnet0,path={},reconnect=1",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vhost_user_shares_guest_memory_and_names_the_socket() {
        let listen = ["vhost-user:/run/vnet/vm1.sock".to_owned()];
        let args = qemu_args(&listen, Model::VirtioNetPci, Transport::VhostUser).unwrap();
        assert!(
            args.starts_with("-object memory-backend-memfd,id=mem,size=256M,share=on -numa node,memdev=mem"),
            "{args}"
        );
        assert!(args.contains("-chardev socket,id=vnet0,path=/run/vnet/vm1.sock,reconnect=1"), "{args}");
        assert!(
            args.contains(
                "-netdev vhost-user,id=net0,chardev=vnet0 -device virtio-net-pci,netdev=net0,mac=52:54:00:"
            ),
            "{args}"
        );
        let error = qemu_args(&listen, Model::E1000, Transport::VhostUser).unwrap_err().to_string();
        assert!(error.contains("virtio-net"), "{error}");
    }

    #[test]
    fn a_vhost_user_directory_gives_its_free_socket() {
        let dir = tempfile::tempdir().unwrap();
        let listen = [format!("vhost-user:{}/", dir.path().display())];
        let error = qemu_args(&listen, Model::VirtioNetPci, Transport::VhostUser).unwrap_err().to_string();
        assert!(error.contains("holds no vhost-user socket"), "{error}");
        for name in ["vm-0.sock", "vm-2.sock", "vm-10.sock", "other.sock"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let args = qemu_args(&listen, Model::VirtioNetPci, Transport::VhostUser).unwrap();
        assert!(args.contains(&format!("path={}/vm-10.sock,", dir.path().display())), "{args}");
    }

    #[test]
    fn each_listen_spec_gives_its_netdev() {
        let listen =
            ["stream:unix:/run/vnet/lab/stream.sock".to_owned(), "dgram:udp:127.0.0.1:5555".to_owned()];
        let stream = qemu_args(&listen, Model::E1000, Transport::Stream).unwrap();
        assert!(stream.starts_with("-netdev stream,id=net0,server=off,addr.type=unix,addr.path=/run/vnet/lab/stream.sock -device e1000,netdev=net0,mac=52:54:00:"), "{stream}");
        let dgram = qemu_args(&listen, Model::VirtioNetPci, Transport::Dgram).unwrap();
        assert!(dgram.contains("remote.type=inet,remote.host=127.0.0.1,remote.port=5555"), "{dgram}");
        assert!(dgram.contains("-device virtio-net-pci,netdev=net0"));
        let tcp =
            qemu_args(&["stream:tcp:[::1]:4444".to_owned()], Model::Rtl8139, Transport::Stream).unwrap();
        assert!(tcp.contains("addr.type=inet,addr.host=::1,addr.port=4444"), "{tcp}");
    }

    #[test]
    fn a_transport_the_network_lacks_says_how_to_get_it() {
        let listen = ["stream:unix:/tmp/s.sock".to_owned()];
        let error = qemu_args(&listen, Model::E1000, Transport::Dgram).unwrap_err().to_string();
        assert!(error.contains("--listen dgram"), "{error}");
        let error = qemu_args(&listen, Model::E1000, Transport::VhostUser).unwrap_err().to_string();
        assert!(error.contains("--listen vhost-user:PATH"), "{error}");
        let vde =
            qemu_args(&["vde:/run/vnet/lab/vde,vlan=3".to_owned()], Model::E1000, Transport::Vde).unwrap();
        assert!(vde.starts_with("-netdev vde,id=net0,sock=/run/vnet/lab/vde -device e1000"), "{vde}");
    }
}
