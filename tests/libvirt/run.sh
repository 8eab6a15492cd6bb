#!/usr/bin/env bash
# libvirt (Debian 12's 9.0) driving vnet, as a CI job can: root, no systemd. The test
# vnet/tests/libvirt.rs runs it, holding the machine's guest-boot lock; scripts/setup
# installs the packages (libvirt-daemon, libvirt-daemon-driver-qemu, libvirt-clients,
# without libvirt-daemon-system, which would bring systemd units, polkit and a NAT network).
#
#  1. Starts a PRIVATE libvirtd: its own mount namespace in which /etc/libvirt,
#     /run/libvirt, /var/lib/libvirt, /var/log/libvirt and /var/cache/libvirt are bind
#     mounts of directories under $WORK (so a system libvirt, if any, is never touched),
#     its own libvirtd.conf (-f) with its socket in $WORK/state/sock, and only the QEMU
#     driver loaded. Clients use  qemu:///system?socket=$WORK/state/sock/libvirt-sock
#  2. For each pair of interface types, starts a vnet, defines and starts two TCG
#     domains (direct kernel boot of vnet's test guest), waits until both took a DHCP
#     lease from vnet and pinged the gateway and each other, then destroys and
#     undefines them and stops that vnet.
#  3. Stops libvirtd; a trap cleans up whatever is left on any exit.
#
# Environment:
#   PAIRS="client+udp vhostuser+vhostuser server+client"   pairs to prove, one after
#         the other (types: client, server, udp, vhostuser)
#   WORK=DIR        state, logs, results (wiped at start; default target/libvirt)
#   BOOT_TIMEOUT=240               seconds a pair may take from start to both pings
#   VNET, GUEST_DIR, QEMU          the vnet binary, the test guest, QEMU
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VNET="${VNET:-$REPO/target/release/vnet}"
GUEST_DIR="${GUEST_DIR:-$REPO/target/test-guest}"
QEMU="${QEMU:-/usr/bin/qemu-system-x86_64}"
WORK="${WORK:-$REPO/target/libvirt}"
PAIRS="${PAIRS:-client+udp vhostuser+vhostuser server+client}"
BOOT_TIMEOUT="${BOOT_TIMEOUT:-240}"
TEMPLATES="$HERE"
QEMU_DRIVER=/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so
PREFIX=vnetlv            # domain names and vnet network names start with this

STATE="$WORK/state"
RESULTS="$WORK/results"
SOCK="$STATE/sock/libvirt-sock"
URI="qemu:///system?socket=$SOCK"
export LIBVIRT_DEFAULT_URI="$URI"
# Bind-mount targets: real path -> directory under $STATE
declare -A BINDS=(
    [/etc/libvirt]="$STATE/etc"
    [/run/libvirt]="$STATE/run"
    [/var/lib/libvirt]="$STATE/lib"
    [/var/log/libvirt]="$STATE/log"
    [/var/cache/libvirt]="$STATE/cache"
)

T_START=$EPOCHREALTIME
log() { printf '[%6.1fs] %s\n' "$(elapsed "$T_START")" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }
elapsed() { local now=${2:-$EPOCHREALTIME}; awk -v a="$1" -v b="$now" 'BEGIN { printf "%.1f", b - a }'; }
TIMINGS=()
timing() { TIMINGS+=("$(printf '%-44s %7s s' "$1" "$2")"); }

# Every virsh call is bounded: a QEMU that cannot reach its vhost-user socket keeps
# `virsh start` waiting forever (and bash runs traps only after a foreground child ends).
virsh_() { timeout "${VIRSH_TIMEOUT:-60}" virsh -q -c "$URI" "$@"; }

# A pid we started, still alive and still the program we think (pids get reused).
pid_is() { # PID EXE-BASENAME
    local argv0=""
    [ -n "${1:-}" ] && [ -r "/proc/$1/cmdline" ] || return 1
    IFS= read -r -d '' argv0 <"/proc/$1/cmdline" 2>/dev/null || true
    case "$argv0" in *"$2"*) return 0 ;; *) return 1 ;; esac
}
stop_pid() { # PID EXE-BASENAME [SECONDS]
    local pid=$1 exe=$2 t=${3:-10} i
    pid_is "$pid" "$exe" || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < t * 20; i++)); do pid_is "$pid" "$exe" || break; sleep 0.05; done
    if pid_is "$pid" "$exe"; then log "$exe ($pid) ignored SIGTERM; SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
    wait "$pid" 2>/dev/null || true
}

# ---------------------------------------------------------------- cleanup --------
cleanup() {
    local rc=$? f
    set +e
    trap - EXIT INT TERM
    if [ -S "$SOCK" ] && pid_is "$(cat "$STATE/libvirtd.pid" 2>/dev/null)" libvirtd; then
        for d in $(virsh_ list --all --name 2>/dev/null | grep "^$PREFIX-"); do
            virsh_ destroy "$d" >/dev/null 2>&1
            virsh_ undefine "$d" >/dev/null 2>&1
        done
    fi
    # QEMUs libvirt started (libvirt writes their pids in /run/libvirt/qemu = $STATE/run/qemu)
    for f in "$STATE"/run/qemu/*.pid; do
        [ -e "$f" ] && stop_pid "$(cat "$f")" qemu-system 5
    done
    for f in "$WORK"/p*/vnet.pid; do
        [ -e "$f" ] && stop_pid "$(cat "$f")" vnet 5
    done
    [ -e "$STATE/libvirtd.pid" ] && stop_pid "$(cat "$STATE/libvirtd.pid")" libvirtd 15
    [ -n "${LIBVIRTD_PID:-}" ] && stop_pid "$LIBVIRTD_PID" libvirtd 15
    # Mount points this script created on the host (empty directories) go again.
    if [ -e "$WORK/created-mountpoints" ]; then
        while read -r f; do rmdir "$f" 2>/dev/null; done < <(sort -r "$WORK/created-mountpoints")
        rm -f "$WORK/created-mountpoints"
    fi
    [ "$rc" -eq 0 ] || log "exit status $rc; logs are in $WORK"
    exit "$rc"
}

# ---------------------------------------------------------------- 1. libvirtd ----
write_configs() {
    mkdir -p "$STATE"/{etc,run,lib,log,cache,sock}
    # The daemon's own config, passed with -f. Everything else of a privileged libvirtd
    # lives at fixed paths, which the mount namespace redirects.
    cat >"$STATE/libvirtd.conf" <<EOF
# private libvirtd: sockets in our own directory, root only, no polkit
unix_sock_dir = "$STATE/sock"
unix_sock_rw_perms = "0700"
unix_sock_ro_perms = "0700"
unix_sock_admin_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:file:$STATE/libvirtd.log"
EOF
    # /etc/libvirt/qemu.conf inside the namespace
    cat >"$STATE/etc/qemu.conf" <<'EOF'
# QEMU runs as root: it must reach vnet's vhost-user sockets (root's, mode 0755)
# and nothing has to be chowned for it.
user = "root"
group = "root"
# Never chown/label the kernel, initrd or console files, nor keep owner xattrs on them.
dynamic_ownership = 0
remember_owner = 0
# No AppArmor/SELinux confinement (Debian would try AppArmor where the kernel has it,
# and the profiles come with packages we do not install).
security_driver = "none"
# Do not make cgroups (libvirt would create /sys/fs/cgroup/*/machine on the host and
# leave it behind when there is no systemd-machined).
cgroup_controllers = [ ]
# QEMU's stdout/stderr straight to /var/log/libvirt/qemu/NAME.log: the default "logd"
# needs a running virtlogd (/run/libvirt/virtlogd-sock).
stdio_handler = "file"
EOF
    # The QEMU driver resolves its built-in default user 'libvirt-qemu' before it reads
    # qemu.conf, and only libvirt-daemon-system's postinst creates that user. Inside the
    # namespace /etc/passwd and /etc/group get it; the host's files stay untouched.
    cp /etc/passwd "$STATE/passwd"
    cp /etc/group "$STATE/group"
    if ! getent passwd libvirt-qemu >/dev/null; then
        local id
        id=$(awk -F: 'BEGIN { u = 64055 } { used[$3] = 1 } END { while (u in used) u++; print u }' /etc/passwd /etc/group)
        echo "libvirt-qemu:x:$id:$id:libvirt QEMU (private libvirtd namespace):/nonexistent:/usr/sbin/nologin" >>"$STATE/passwd"
        getent group libvirt-qemu >/dev/null || echo "libvirt-qemu:x:$id:" >>"$STATE/group"
    fi
    # Only the QEMU driver: no network/nwfilter/nodedev/storage/... drivers, so no
    # firewall, udev, D-Bus or bridge business at all.
    mkdir -p "$STATE/drivers"
    ln -sf "$QEMU_DRIVER" "$STATE/drivers/"
}

start_libvirtd() {
    local t0=$EPOCHREALTIME target mounts="" i
    for target in "${!BINDS[@]}"; do
        if [ ! -d "$target" ]; then
            mkdir -p "$target" && echo "$target" >>"$WORK/created-mountpoints"
        fi
        mounts+="mount --bind '${BINDS[$target]}' '$target' && "
    done
    # unshare and sh exec, so $! is libvirtd's pid.
    LIBVIRT_DRIVER_DIR="$STATE/drivers" \
        unshare --mount --propagation private -- sh -c "
            mount --bind '$STATE/passwd' /etc/passwd && mount --bind '$STATE/group' /etc/group &&
            $mounts exec libvirtd -f '$STATE/libvirtd.conf' -p '$STATE/libvirtd.pid'" \
        >"$STATE/libvirtd.stdout" 2>&1 &
    LIBVIRTD_PID=$!
    echo "LIBVIRT_DRIVER_DIR=$STATE/drivers unshare --mount --propagation private -- sh -c \"mount --bind ... && exec libvirtd -f $STATE/libvirtd.conf -p $STATE/libvirtd.pid\"" >"$RESULTS/libvirtd-cmdline.txt"
    # Ready = the socket answers. Deadline 90 s (the first start probes QEMU's
    # capabilities, a few seconds under TCG).
    for ((i = 0; ; i++)); do
        virsh_ version >/dev/null 2>&1 && break
        kill -0 "$LIBVIRTD_PID" 2>/dev/null || { cat "$STATE/libvirtd.stdout" "$STATE/libvirtd.log" >&2; die "libvirtd exited"; }
        [ "$(elapsed "$t0" | cut -d. -f1)" -lt 90 ] || die "libvirtd not answering after 90 s"
        sleep 0.05
    done
    timing "libvirtd start until the socket answers" "$(elapsed "$t0")"
    log "libvirtd $LIBVIRTD_PID up: $URI"
    virsh_ version >&2
}

# ---------------------------------------------------------------- 2. guests ------
USED_PORTS=""
free_port() { # VAR PROTO(t|u): VAR = a random port free on this host, not handed out before
    local p
    while :; do
        p=$((20000 + RANDOM % 40000))
        case " $USED_PORTS " in *" $p "*) continue ;; esac
        if [ -z "$(ss -H -"$2"an "sport = :$p" 2>/dev/null)" ]; then
            USED_PORTS+=" $p"; printf -v "$1" '%s' "$p"; return
        fi
    done
}

build_initrd() {
    local d="$WORK/guest"
    mkdir -p "$d/root"
    cp "$HERE/guest.sh" "$d/root/test.sh"
    (cd "$d/root" && echo test.sh | cpio -o -H newc --quiet) >"$d/extra.cpio"
    cat "$GUEST_DIR/initramfs.cpio.gz" "$d/extra.cpio" >"$d/initrd"
    INITRD="$d/initrd"
}

# setup_pair N TYPE_A+TYPE_B: starts the pair's vnet and defines its two domains.
# Sets PAIR_DOMAINS (appends).
setup_pair() {
    local n=$1 spec=$2 dir="$WORK/p$1" vnet_args=() t i name port lport sock mac xml
    local -a types
    IFS=+ read -r -a types <<<"$spec"
    [ "${#types[@]}" -eq 2 ] || die "pair '$spec' is not TYPE+TYPE"
    mkdir -p "$dir"
    i=0
    for t in "${types[@]}"; do
        i=$((i + 1))
        name="$PREFIX-p$n-$t-$i"
        mac=$(printf '52:54:00:76:%02x:%02x' "$n" "$i")
        port="" lport="" sock=""
        case $t in
        client) free_port port t; vnet_args+=(--listen "stream:tcp:127.0.0.1:$port") ;;
        server) free_port port t; vnet_args+=(--attach "stream:tcp:127.0.0.1:$port") ;;
        udp) free_port port u; free_port lport u; vnet_args+=(--listen "dgram:udp:127.0.0.1:$port") ;;
        vhostuser) sock="$dir/$name.sock"; vnet_args+=(--listen "vhost-user:$sock") ;;
        *) die "unknown interface type '$t'" ;;
        esac
        xml="$dir/$name.xml"
        sed -e "s|@NAME@|$name|g" -e "s|@MAC@|$mac|g" -e "s|@KERNEL@|$GUEST_DIR/vmlinuz|g" \
            -e "s|@INITRD@|$INITRD|g" -e "s|@CONSOLE@|$dir/$name.console|g" -e "s|@PORT@|$port|g" \
            -e "s|@LOCALPORT@|$lport|g" -e "s|@SOCKET@|$sock|g" -e "s|@QEMU@|$QEMU|g" \
            "$TEMPLATES/domain-$t.xml" >"$xml"
        PAIR_DOMAINS+=("$n:$name")
    done
    # vnet: one segment per pair, so the two leases are 10.0.2.15 and 10.0.2.16.
    rm -f "$dir/ready"; mkfifo -m 600 "$dir/ready"
    echo "$VNET run --name $PREFIX-$$-p$n --user dns-upstream=127.0.0.1:9 ${vnet_args[*]} --pidfile $dir/vnet.pid --ready-fd 3" >"$dir/vnet-cmdline.txt"
    "$VNET" run --name "$PREFIX-$$-p$n" --user 'dns-upstream=127.0.0.1:9' "${vnet_args[@]}" \
        --pidfile "$dir/vnet.pid" --ready-fd 3 3>"$dir/ready" >"$dir/vnet.log" 2>&1 &
    echo $! >"$dir/vnet.pid.launch"
    timeout 20 head -n1 "$dir/ready" | grep -q READY=1 || { cat "$dir/vnet.log" >&2; die "vnet for pair $n not ready"; }
    log "pair $n ($spec): vnet $(cat "$dir/vnet.pid.launch") ready: ${vnet_args[*]}"
    for i in 1 2; do
        name="$PREFIX-p$n-${types[$((i - 1))]}-$i"
        virsh_ define "$dir/$name.xml" >/dev/null || die "virsh define $name"
    done
}

# first time a marker shows in a console, as seconds since the domains started
declare -A SEEN=()
mark() { # KEY
    [ -n "${SEEN[$1]:-}" ] || SEEN[$1]=$(elapsed "$T_BOOT")
}

run_pairs() { # N:SPEC ...
    local p n spec dom name done_all t0 st fails polls=0
    PAIR_DOMAINS=()
    for p in "$@"; do setup_pair "${p%%:*}" "${p#*:}"; done
    T_BOOT=$EPOCHREALTIME
    for dom in "${PAIR_DOMAINS[@]}"; do
        virsh_ start "${dom#*:}" >/dev/null || die "virsh start ${dom#*:} (see $STATE/log/qemu/${dom#*:}.log)"
    done
    timing "virsh start of ${#PAIR_DOMAINS[@]} domains" "$(elapsed "$T_BOOT")"
    log "started: ${PAIR_DOMAINS[*]#*:}"
    # Wait for every console to say VNET-PEER-OK; any VNET-FAIL/VNET-GUEST-EXIT or a
    # domain that stopped is a failure. Polled with a deadline, never a fixed sleep.
    while :; do
        done_all=1 fails=""
        for dom in "${PAIR_DOMAINS[@]}"; do
            n=${dom%%:*} name=${dom#*:}
            local c="$WORK/p$n/$name.console"
            [ -e "$c" ] || { done_all=0; continue; }
            grep -q '^VNET-GUEST-READY' "$c" && mark "$name ready"
            grep -q '^VNET-LEASE' "$c" && mark "$name lease"
            if grep -q '^VNET-PEER-OK' "$c"; then mark "$name peer-ok"; else done_all=0; fi
            grep -q -E '^VNET-FAIL|^VNET-GUEST-EXIT' "$c" && fails+=" $name"
        done
        [ "$done_all" = 1 ] && break
        polls=$((polls + 1))
        if [ -z "$fails" ] && [ $((polls % 10)) = 0 ]; then
            for dom in "${PAIR_DOMAINS[@]}"; do
                st=$(virsh_ domstate "${dom#*:}" 2>/dev/null || echo gone)
                [ "$st" = running ] || fails+=" ${dom#*:}($st)"
            done
        fi
        if [ -n "$fails" ] || [ "$(elapsed "$T_BOOT" | cut -d. -f1)" -ge "$BOOT_TIMEOUT" ]; then
            for dom in "${PAIR_DOMAINS[@]}"; do
                n=${dom%%:*} name=${dom#*:}
                echo "---- $name console" >&2; tail -n 25 "$WORK/p$n/$name.console" >&2 2>/dev/null
                echo "---- $name qemu log" >&2; tail -n 5 "$STATE/log/qemu/$name.log" >&2 2>/dev/null
            done
            for p in "$@"; do echo "---- vnet p${p%%:*}" >&2; tail -n 15 "$WORK/p${p%%:*}/vnet.log" >&2; done
            [ -n "$fails" ] && die "failed:$fails"
            die "timeout after $BOOT_TIMEOUT s"
        fi
        sleep 0.2
    done
    # Results: timings, leases, the QEMU command line libvirt generated.
    for dom in "${PAIR_DOMAINS[@]}"; do
        name=${dom#*:}
        timing "  $name: READY / lease / peer ping ok" "${SEEN[$name ready]:-?} / ${SEEN[$name lease]:-?} / ${SEEN[$name peer-ok]}"
        grep '^VNET-' "$WORK/p${dom%%:*}/$name.console" | sed "s/^/    $name: /" >&2
        cp "$STATE/log/qemu/$name.log" "$RESULTS/$name.qemu.log"
        cp "$WORK/p${dom%%:*}/$name.xml" "$RESULTS/$name.xml"
        sed -n '/^\/usr\/bin\/qemu-system/,/^-msg/p' "$STATE/log/qemu/$name.log" >"$RESULTS/$name.qemu-cmdline.txt"
    done
    timing "  boot to both peers pinged (these pairs)" "$(elapsed "$T_BOOT")"
    for p in "$@"; do
        n=${p%%:*}
        "$VNET" leases "$PREFIX-$$-p$n" | tee "$RESULTS/p$n-leases.txt" | sed "s/^/    p$n leases: /" >&2
        "$VNET" ports "$PREFIX-$$-p$n" >"$RESULTS/p$n-ports.txt"
        cp "$WORK/p$n/vnet-cmdline.txt" "$RESULTS/p$n-vnet-cmdline.txt"
    done
    # Tear down: destroy + undefine the domains, stop the vnets.
    t0=$EPOCHREALTIME
    # (virsh destroy takes 1.5-2 s per TCG domain, so all at once)
    local pids=()
    for dom in "${PAIR_DOMAINS[@]}"; do
        virsh_ destroy "${dom#*:}" >/dev/null & pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || die "virsh destroy failed"; done
    for dom in "${PAIR_DOMAINS[@]}"; do
        virsh_ undefine "${dom#*:}" >/dev/null || die "virsh undefine ${dom#*:}"
    done
    for p in "$@"; do
        n=${p%%:*}
        stop_pid "$(cat "$WORK/p$n/vnet.pid.launch")" vnet 5
        cp "$WORK/p$n/vnet.log" "$RESULTS/p$n-vnet.log"
    done
    timing "  destroy + undefine + stop vnet" "$(elapsed "$t0")"
    log "pairs ${*} passed"
}

# ---------------------------------------------------------------- main -----------
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 2; }
for f in "$VNET" "$GUEST_DIR/vmlinuz" "$GUEST_DIR/initramfs.cpio.gz" "$QEMU" "$QEMU_DRIVER"; do
    [ -e "$f" ] || { echo "missing $f; scripts/setup installs libvirt's QEMU driver and builds the guest" >&2; exit 2; }
done
for c in libvirtd virsh unshare cpio ss awk timeout; do
    command -v $c >/dev/null || { echo "missing $c; run scripts/setup" >&2; exit 2; }
done

# Idempotence: a previous run's leftovers (processes by their recorded pids, then files).
if [ -d "$WORK" ]; then
    ( trap - EXIT; cleanup ) 2>/dev/null || true
    rm -rf "$WORK"
fi
mkdir -p "$WORK" "$RESULTS"
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

write_configs
start_libvirtd
build_initrd

n=0
for spec in $PAIRS; do n=$((n + 1)); run_pairs "$n:$spec"; done

t0=$EPOCHREALTIME
stop_pid "$LIBVIRTD_PID" libvirtd 15
timing "libvirtd stop" "$(elapsed "$t0")"
timing "TOTAL" "$(elapsed "$T_START")"
printf '%s\n' "${TIMINGS[@]}" | tee "$RESULTS/timings.txt" >&2
log "all pairs passed; results in $RESULTS"
