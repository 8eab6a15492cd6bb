//! libvirt drives vnet: Debian's libvirt 9.0 boots TCG domains whose interfaces are
//! `type='client'`, `type='server'` (QEMU's socket backend, with vnet listening or
//! connecting), `type='udp'` (dgram) and `type='vhostuser'`, from the XML in
//! `tests/libvirt/`. Each pair of domains must get DHCP leases from vnet and ping the
//! gateway and each other. `tests/libvirt/run.sh` does the work: it starts a private
//! libvirtd the way CI can (no systemd, its own mount namespace for libvirt's fixed
//! paths), defines and boots the domains, and tears everything down.

mod support;

use std::path::Path;
use std::process::Command;

use support::guest::{image_dir, GuestLock};

#[test]
fn libvirt_domains_on_client_server_udp_and_vhostuser_interfaces_get_dhcp_from_vnet_and_reach_each_other() {
    support::prerequisites::require();
    let guest = image_dir();
    let _lock = GuestLock::acquire();
    let work = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/libvirt/run.sh");
    let output = Command::new("bash")
        .arg(&script)
        .env("VNET", support::vnet_binary())
        .env("GUEST_DIR", &guest)
        .env("WORK", work.path())
        .output()
        .expect("bash runs");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "tests/libvirt/run.sh failed:\n{log}");
    for pair in ["1:client+udp", "2:vhostuser+vhostuser", "3:server+client"] {
        assert!(log.contains(&format!("pairs {pair} passed")), "pair {pair} did not pass:\n{log}");
    }
    // Either guest of a pair may ask first and get 10.0.2.15; each pings the other's.
    for domain in [
        "vnetlv-p1-client-1",
        "vnetlv-p1-udp-2",
        "vnetlv-p2-vhostuser-1",
        "vnetlv-p2-vhostuser-2",
        "vnetlv-p3-server-1",
        "vnetlv-p3-client-2",
    ] {
        for line in [format!("{domain}: VNET-LEASE 10.0.2.1"), format!("{domain}: VNET-PEER-OK 10.0.2.1")] {
            assert!(log.contains(&line), "no '{line}':\n{log}");
        }
    }
    let leftover = Command::new("pgrep").args(["-f", "vnetlv-p"]).output().unwrap();
    assert!(leftover.stdout.is_empty(), "a domain's QEMU outlived the test");
}
