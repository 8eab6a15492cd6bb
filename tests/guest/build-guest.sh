#!/usr/bin/env bash
# Build (and cache) a tiny Linux test guest for QEMU from Debian packages.
#
# Usage: tests/guest/build-guest.sh [OUTDIR]
#   OUTDIR defaults to <repo>/target/test-guest.
#
# Outputs:
#   OUTDIR/vmlinuz            Debian kernel (from linux-image-amd64's real package)
#   OUTDIR/initramfs.cpio.gz  busybox-static + iperf3, dhclient, rdisc6 (+ their libs)
#                             + NIC modules + /init;
#                             zero-padded to a 4-byte multiple so that an uncompressed
#                             newc cpio can simply be appended (cat) to it.
#   OUTDIR/stamp              kernel package/version + hash of this script (and of
#                             the host programs copied in); a matching stamp = cache hit.
#
# Host requirements (NOT installed by this script): apt (to resolve and
# `apt-get download` the kernel .deb), dpkg-deb, busybox-static, iperf3, cpio,
# gzip, sha256sum, dhclient (isc-dhcp-client), rdisc6 (ndisc6). Root is not required.
#
# Kernel command line the harness should use:
#   console=ttyS0 quiet panic=-1 loglevel=3 [vnet.hostname=NAME]
# plus QEMU flags `-no-reboot -nodefaults -serial stdio`, so the guest
# powering off, a kernel panic or /init dying all make QEMU exit.
#
# Guest protocol (/init, output on the console = ttyS0):
#   - mounts proc, sysfs, devtmpfs, tmpfs /tmp and /run; insmods the NIC
#     drivers (virtio-net, e1000, rtl8139/8139cp); brings lo up; sets the
#     hostname from `vnet.hostname=`;
#   - prints the line `VNET-GUEST-READY`;
#   - if /test.sh exists (the harness appends a second, uncompressed newc cpio
#     archive containing it to the initrd), runs `/bin/sh /test.sh` with
#     stdout+stderr on the console, prints `VNET-GUEST-EXIT <code>`, syncs and
#     powers off; otherwise starts an interactive shell on the console.
#   - /etc/udhcpc/default.script is provided so `udhcpc -i eth0` configures
#     the interface.
set -euo pipefail

SCRIPT_PATH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
REPO="$(cd "$(dirname "$SCRIPT_PATH")/../.." && pwd)"
OUTDIR="${1:-$REPO/target/test-guest}"

# Load order matters (no modprobe/depmod in the guest).
MODULES=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
         failover net_failover virtio_net e1000 mii 8139cp 8139too)
# Included only if it is a loadable module (it is built in on Debian 12).
OPTIONAL_MODULES=(af_packet)

die() { echo "build-guest: error: $*" >&2; exit 1; }
log() { echo "build-guest: $*" >&2; }
# One line per step, so a slow build (the download, the gzip) shows where it is.
STEP=0
step() { STEP=$((STEP + 1)); log "[$STEP/4] $* ($SECONDS s)"; }

BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || die "$BUSYBOX not found (install busybox-static)"
"$BUSYBOX" --list-full >/dev/null 2>&1 || die "$BUSYBOX is not a usable busybox"
IPERF3="$(command -v iperf3)" || die "iperf3 not found (install iperf3)"
DHCLIENT="$(command -v dhclient)" || die "dhclient not found (install isc-dhcp-client)"
RDISC6="$(command -v rdisc6)" || die "rdisc6 not found (install ndisc6)"
command -v cpio >/dev/null || die "cpio not found"
command -v apt-cache >/dev/null || die "apt-cache not found"
command -v dpkg-deb >/dev/null || die "dpkg-deb not found"

# --- resolve the kernel package (local apt metadata only, no network) -------
# One apt-cache call (it can take ~0.5 s): the metapackage's Depends line looks
# like "linux-image-6.1.0-NN-amd64 (= 6.1.xxx-y)".
KPKG="${VNET_GUEST_KERNEL_PKG:-}"
KVER_PKG=""
if [ -z "$KPKG" ]; then
    read -r KPKG KVER_PKG < <(apt-cache show --no-all-versions linux-image-amd64 2>/dev/null |
        awk '/^Depends:/ { if (match($0, /linux-image-[0-9][^ ,|]*( \(= [^)]*\))?/)) {
                 d = substr($0, RSTART, RLENGTH); gsub(/[(=)]/, "", d); print d; exit } }') || true
fi
[ -n "$KPKG" ] || die "cannot resolve linux-image-amd64 via apt-cache (run 'apt-get update'?)"
if [ -z "$KVER_PKG" ]; then
    KVER_PKG="$(apt-cache policy "$KPKG" 2>/dev/null | awk '$1 == "Candidate:" { print $2; exit }')" || true
fi
[ -n "$KVER_PKG" ] && [ "$KVER_PKG" != "(none)" ] || die "no candidate version for $KPKG"

STAMP_WANT="kernel=$KPKG $KVER_PKG
script=$(sha256sum "$SCRIPT_PATH" | cut -d' ' -f1)
busybox=$(sha256sum "$BUSYBOX" | cut -d' ' -f1)
iperf3=$(sha256sum "$IPERF3" | cut -d' ' -f1)
dhclient=$(sha256sum "$DHCLIENT" | cut -d' ' -f1)
rdisc6=$(sha256sum "$RDISC6" | cut -d' ' -f1)"

cache_hit() {
    [ -f "$OUTDIR/stamp" ] && [ -f "$OUTDIR/vmlinuz" ] && [ -f "$OUTDIR/initramfs.cpio.gz" ] &&
        [ "$(cat "$OUTDIR/stamp")" = "$STAMP_WANT" ]
}
if cache_hit; then
    exit 0
fi

mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
# Serialize concurrent builders; whoever waits gets a cache hit afterwards.
if command -v flock >/dev/null; then
    exec 9>"$OUTDIR/.lock"
    flock 9
    if cache_hit; then
        exit 0
    fi
fi

# Temp dir inside OUTDIR so the final mv is an atomic rename on one filesystem.
TMP="$(mktemp -d "$OUTDIR/.build.XXXXXX")"
cleanup() { rm -rf "$TMP"; }
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# --- fetch and unpack the kernel ---------------------------------------------
step "downloading $KPKG $KVER_PKG with apt-get download"
mkdir "$TMP/deb" "$TMP/kpkg"
APT_OPTS=(-q)
[ "$(id -u)" = 0 ] && APT_OPTS+=(-o APT::Sandbox::User=root)
(cd "$TMP/deb" && apt-get "${APT_OPTS[@]}" download "$KPKG=$KVER_PKG" >/dev/null) ||
    die "apt-get download $KPKG=$KVER_PKG failed"
DEB="$(find "$TMP/deb" -name '*.deb' -print -quit)"
[ -n "$DEB" ] || die "apt-get download produced no .deb"
dpkg-deb -x "$DEB" "$TMP/kpkg"

shopt -s nullglob
found=("$TMP"/kpkg/boot/vmlinuz-*)
[ "${#found[@]}" -eq 1 ] || die "expected exactly one boot/vmlinuz-* in $DEB"
VMLINUZ="${found[0]}"
found=("$TMP"/kpkg/lib/modules/*/ "$TMP"/kpkg/usr/lib/modules/*/)
[ "${#found[@]}" -ge 1 ] || die "no lib/modules/<ver> in $DEB"
MODDIR="${found[0]%/}"
shopt -u nullglob
KREL="$(basename "$MODDIR")"

# --- assemble the initramfs tree ---------------------------------------------
step "assembling the initramfs: kernel modules, busybox, host programs"
ROOT="$TMP/root"
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,etc/udhcpc,proc,sys,dev,tmp,run,root,var/run}
mkdir -p "$ROOT/lib/modules/$KREL"

# Returns the .ko path for module $1 (any compression; '-' and '_' equivalent).
find_module() {
    local alt="${1//_/-}"
    find "$MODDIR/kernel" -type f \( -name "$1.ko" -o -name "$1.ko.*" -o -name "$alt.ko" -o -name "$alt.ko.*" \) \
        -print -quit
}
is_builtin() {
    grep -qE "/($1|${1//_/-})\.ko\$" "$MODDIR/modules.builtin" 2>/dev/null
}
add_module() { # name src
    local dst="$ROOT/lib/modules/$KREL/$1.ko"
    case "$2" in
        *.ko) cp "$2" "$dst" ;;
        *.ko.xz) xz -dc "$2" >"$dst" ;;
        *.ko.zst) zstd -qdc "$2" >"$dst" ;;
        *.ko.gz) gzip -dc "$2" >"$dst" ;;
        *) die "unknown module format: $2" ;;
    esac
    echo "$1" >>"$ROOT/etc/modules.order"
}
: >"$ROOT/etc/modules.order"
for m in "${MODULES[@]}"; do
    src="$(find_module "$m")"
    if [ -n "$src" ]; then
        add_module "$m" "$src"
    elif is_builtin "$m"; then
        log "module $m is built into $KREL, skipping"
    else
        die "module $m neither found in $DEB nor built in"
    fi
done
for m in "${OPTIONAL_MODULES[@]}"; do
    src="$(find_module "$m")"
    if [ -n "$src" ]; then
        add_module "$m" "$src"
    elif ! is_builtin "$m"; then
        log "warning: optional module $m is neither a module nor built in"
    fi
done

# busybox + applet symlinks (created at build time; no --install at boot)
cp "$BUSYBOX" "$ROOT/bin/busybox"
chmod 0755 "$ROOT/bin/busybox"
while read -r applet; do
    [ -n "$applet" ] || continue
    [ -e "$ROOT/$applet" ] || [ -L "$ROOT/$applet" ] && continue
    mkdir -p "$ROOT/$(dirname "$applet")"
    ln -s /bin/busybox "$ROOT/$applet"
done < <("$BUSYBOX" --list-full)

# iperf3, dhclient (DHCPv6) and rdisc6 (shows router advertisements), each with the
# shared libraries and dynamic loader it needs, at host paths
copy_host_file() {
    mkdir -p "$ROOT$(dirname "$1")"
    cp -L "$1" "$ROOT$1"
}
copy_host_program() {
    copy_host_file "$1"
    ldd "$1" | awk '/=> \// { print $3 } /^[[:space:]]*\// { print $1 }' | sort -u |
        while read -r lib; do copy_host_file "$lib"; done
}
for program in "$IPERF3" "$DHCLIENT" "$RDISC6"; do
    copy_host_program "$program"
done
mkdir -p "$ROOT/var/lib/dhcp"
[ -n "$(find "$ROOT" -name 'ld-linux*' -print -quit)" ] ||
    die "dynamic loader was not picked up from ldd $IPERF3"

cat >"$ROOT/etc/hosts" <<'EOF'
127.0.0.1	localhost
::1	localhost
EOF
echo 'root:x:0:0:root:/root:/bin/sh' >"$ROOT/etc/passwd"
echo 'root:x:0:' >"$ROOT/etc/group"

cat >"$ROOT/etc/udhcpc/default.script" <<'EOF'
#!/bin/sh
# Minimal busybox udhcpc hook: configure address, default route, resolv.conf.
case "$1" in
    deconfig) ip -4 addr flush dev "$interface"; ip link set "$interface" up ;;
    bound|renew)
        ip -4 addr flush dev "$interface"
        ip addr add "$ip/${mask:-24}" ${broadcast:+broadcast "$broadcast"} dev "$interface"
        for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
        [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
        : >/etc/resolv.conf
        for d in $dns; do echo "nameserver $d" >>/etc/resolv.conf; done
        [ -n "$search" ] && echo "search $search" >>/etc/resolv.conf
        # What the server said, for tests to inspect.
        env | grep -E '^(ip|mask|subnet|router|dns|mtu|hostname|domain|search|lease|serverid)=' >/run/dhcp.env ;;
esac
exit 0
EOF
chmod 0755 "$ROOT/etc/udhcpc/default.script"

cat >"$ROOT/init" <<'EOF'
#!/bin/busybox sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=vt100
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || true
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=0755 tmpfs /run
# Make sure everything below talks to the console (ttyS0 via console=ttyS0).
exec </dev/console >/dev/console 2>&1

KREL=$(uname -r)
while read -r m; do
    [ -n "$m" ] || continue
    insmod "/lib/modules/$KREL/$m.ko" || echo "init: insmod $m failed" >&2
done </etc/modules.order

ip link set lo up
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        vnet.hostname=*) hostname "${arg#vnet.hostname=}" ;;
    esac
done

# Leading newline: firmware/console escape sequences (SeaBIOS "\ec\e[?7l\e[2J",
# "Booting from ROM..") are not newline-terminated, so without it the marker
# may share a line with them.
printf '\nVNET-GUEST-READY\n'
if dmesg 2>/dev/null | grep -q 'Initramfs unpacking failed'; then
    # Typically an appended cpio that does not start at a 4-byte aligned offset.
    dmesg | grep 'Initramfs unpacking failed'
    printf '\ninit: initramfs unpacking failed, /test.sh may be missing\nVNET-GUEST-EXIT 125\n'
    sync
    poweroff -f
elif [ -f /test.sh ]; then
    cd /
    /bin/sh /test.sh
    rc=$?
    # Leading newline in case test.sh's output did not end with one.
    printf '\nVNET-GUEST-EXIT %s\n' "$rc"
    sync
    poweroff -f
    sleep 5  # not reached
else
    echo "init: no /test.sh, starting shell (poweroff -f to quit)"
    setsid cttyhack sh -l || sh
    sync
    poweroff -f
fi
EOF
chmod 0755 "$ROOT/init"

# --- pack -------------------------------------------------------------------
step "packing and compressing the initramfs"
mkdir "$TMP/out"
cp "$VMLINUZ" "$TMP/out/vmlinuz"
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort |
    cpio --quiet -o -H newc -R 0:0) | gzip -n -9 >"$TMP/out/initramfs.cpio.gz"
# Zero-pad to a multiple of 4 bytes: the kernel only accepts an appended
# uncompressed cpio (the harness's /test.sh) at a 4-byte aligned offset
# ("Initramfs unpacking failed: invalid magic ..." otherwise); it skips the
# zero padding between archives.
pad=$(( (4 - $(stat -c %s "$TMP/out/initramfs.cpio.gz") % 4) % 4 ))
head -c "$pad" /dev/zero >>"$TMP/out/initramfs.cpio.gz"
printf '%s\n' "$STAMP_WANT" >"$TMP/out/stamp"

# Install: drop the stamp first so an interrupted install is never a cache hit;
# each rename is atomic, so readers never see a partially written file.
rm -f "$OUTDIR/stamp"
mv -f "$TMP/out/vmlinuz" "$OUTDIR/vmlinuz"
mv -f "$TMP/out/initramfs.cpio.gz" "$OUTDIR/initramfs.cpio.gz"
mv -f "$TMP/out/stamp" "$OUTDIR/stamp"
step "built $OUTDIR ($KPKG $KVER_PKG, kernel $KREL)"
