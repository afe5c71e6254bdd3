#!/usr/bin/env bash
# Runs a command inside an L1 Linux that has real hardware virtualization, on a host that has
# none (our build and CI machines: /dev/kvm there is PVM, a software KVM that cannot run a stock
# guest kernel). QEMU's TCG emulates AMD-V with nested paging, so a Debian kernel booted under
# `qemu-system-x86_64 -accel tcg -cpu EPYC` loads kvm_amd and has a real /dev/kvm.
#
#   scripts/nested-kvm.sh [--mem MiB] [--smp N] [--timeout SECONDS] [--usb-disk FILE]...
#                         [--usb-kbd] [--monitor] [--] CMD [ARGS...]
#
# --usb-disk FILE (up to 4 times) gives L1 an emulated USB stick (usb-storage, SuperSpeed)
# backed by FILE (raw, read-write), the Nth with serial bh-usb-disk-N, on port N of a
# qemu-xhci controller: in L1 its sysfs bus id is 2-N (/sys/bus/usb/devices/2-N). --usb-kbd
# adds a usb-kbd (product "QEMU USB Keyboard") on port 5: bus id 1-5. With either,
# xhci_pci is loaded and the devices have enumerated before the command starts, and the
# command gets BULKHEAD_NESTED_USB=1 (loading the drivers is up to it: no udev in L1, so
# `modprobe -a usb_storage sd_mod` for a disk, `modprobe -a usbhid hid_generic evdev` for the
# keyboard's /dev/input/event*).
# --monitor wires QEMU's human monitor to L1's /dev/ttyS2 (the command gets
# BULKHEAD_NESTED_MONITOR=/dev/ttyS2); scripts/nested-monitor CMD... (in L1) sends one
# monitor command there and prints its reply, e.g. scripts/nested-monitor sendkey a.
#
# Inside L1 the command sees this machine's own file system (read-only over virtio-9p, with an
# overlay on top so that writes work and vanish with L1; the overlay's upper layer, /tmp and
# /var/tmp live on a sparse scratch disk of $BULKHEAD_NESTED_SCRATCH_GIB GiB, default 16, that
# takes host disk only for what is written and is deleted afterwards), at the same paths, in the same
# working directory, with the same environment (but for the session bus, X and Wayland
# variables), as root, with fresh /tmp, /run, /dev, /proc, /sys, a cgroup2 hierarchy and
# kvm_amd, tun, loop, overlay and veth loaded. Its stdout and stderr come out here on stdout
# (one stream: L1's second serial port); its exit status is this script's. 125 means L1 could
# not be set up (the reason is printed); 124 means the timeout ended it; 123 means L1 itself
# ended before the command did (its kernel reset or crashed: QEMU's log of it is printed) or
# locked up (a CPU stuck for 2 min or more: stopped; its console is printed).
#
# Costs (2 cores, measured): downloading and unpacking the kernel once (cached in
# $BULKHEAD_NESTED_CACHE), the L1 initramfs (< 1 s, cached), L1's boot to the command (about
# 10-20 s of wall time), then the command at TCG speed (user code runs several times slower
# than on the host).
set -euo pipefail

usage() {
    sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-2}"
}

mem=${BULKHEAD_NESTED_MEM:-4096}
smp=${BULKHEAD_NESTED_SMP:-2}
tcg_thread=${BULKHEAD_NESTED_TCG_THREAD:-multi}
timeout_s=${BULKHEAD_NESTED_TIMEOUT:-1200}
cache=${BULKHEAD_NESTED_CACHE:-/var/cache/bulkhead-nested}
scratch_gib=${BULKHEAD_NESTED_SCRATCH_GIB:-16}
usb_disks=()
usb_kbd=0
monitor=0
while (($#)); do
    case "$1" in
        --mem) mem=$2; shift 2 ;;
        --smp) smp=$2; shift 2 ;;
        --timeout) timeout_s=$2; shift 2 ;;
        --usb-disk) (($# >= 2)) || { echo "nested-kvm: --usb-disk needs a FILE" >&2; usage; }
            usb_disks+=("$2"); shift 2 ;;
        --usb-kbd) usb_kbd=1; shift ;;
        --monitor) monitor=1; shift ;;
        -h|--help) usage 0 ;;
        --) shift; break ;;
        -*) echo "nested-kvm: unknown option $1" >&2; usage ;;
        *) break ;;
    esac
done
(($#)) || usage

fail() { echo "nested-kvm: cannot run: $*" >&2; exit 125; }

# What this needs, said plainly where it is missing.
[[ $(id -u) == 0 ]] || fail "needs root (the L1 kernel package is unpacked into $cache; qemu exports / read-only)"
[[ $(uname -m) == x86_64 ]] || fail "needs an x86_64 host (QEMU's TCG emulates AMD-V only for x86_64 guests here)"
for tool in qemu-system-x86_64:qemu-system-x86 busybox:busybox-static cpio:cpio dpkg-deb:dpkg \
    depmod:kmod modprobe:kmod apt-get:apt mkfs.ext4:e2fsprogs; do
    command -v "${tool%%:*}" >/dev/null ||
        fail "${tool%%:*} is missing (apt-get install ${tool##*:}; scripts/install-deps.sh installs it)"
done
busybox_bin=$(command -v busybox)
[[ $(ldd "$busybox_bin" 2>&1) == *"not a dynamic executable"* ]] ||
    fail "$busybox_bin is not static (apt-get install busybox-static)"
avail_kib=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
((avail_kib / 1024 >= mem + 512)) ||
    fail "L1 gets $mem MiB and this host has only $((avail_kib / 1024)) MiB available (set --mem or BULKHEAD_NESTED_MEM lower)"
((smp >= 1 && smp <= $(nproc))) || fail "--smp $smp: this host has $(nproc) CPUs"
((${#usb_disks[@]} <= 4)) || fail "${#usb_disks[@]} --usb-disk: at most 4 (ports 1-4 of L1's xhci controller)"
for f in "${usb_disks[@]}"; do
    [[ -f $f && -r $f && -w $f ]] || fail "--usb-disk $f: not a readable and writable file"
done

# The L1 kernel: Debian's generic kernel (it has kvm_amd, 9p and overlay as modules), fetched
# once with apt from the host's sources and unpacked (not installed); its .deb has no
# modules.dep, so depmod makes one.
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
kver=${BULKHEAD_NESTED_KERNEL:-$(apt-cache depends linux-image-amd64 2>/dev/null |
    sed -n 's/^ *Depends: linux-image-\([0-9].*-amd64\)$/\1/p' | head -n1)}
[[ -n $kver ]] || fail "apt knows no linux-image-amd64 (apt-get update first?)"
kroot=$cache/kernel-$kver
if [[ ! -e $kroot/.done ]]; then
    echo "nested-kvm: fetching linux-image-$kver for L1 (once)" >&2
    rm -rf "$kroot" "$cache/deb"
    mkdir -p "$cache/deb"
    (cd "$cache/deb" && apt-get download -q "linux-image-$kver" >&2) ||
        fail "apt-get download linux-image-$kver failed"
    dpkg-deb -x "$cache"/deb/linux-image-"$kver"_*.deb "$kroot"
    rm -rf "$cache/deb"
    depmod -b "$kroot" "$kver"
    touch "$kroot/.done"
fi
vmlinuz=$kroot/boot/vmlinuz-$kver
[[ -r $vmlinuz ]] || fail "$vmlinuz is missing (remove $kroot to fetch it again)"

# Stage 1 of L1 (its initramfs): busybox, the modules that mount the host's root over 9p and
# the overlay, and an /init that switch_roots into that overlay and runs the stage 2 script.
stage1_modules=(9pnet_virtio 9p overlay virtio_pci virtio_blk ext4)
initramfs_key=$( (cat "$0"; echo "$kver"; sha256sum "$busybox_bin") | sha256sum | cut -c1-16)
initramfs=$cache/l1-$initramfs_key.cpio.gz
if [[ ! -e $initramfs ]]; then
    rm -f "$cache"/l1-*.cpio.gz # older scripts' initramfs
    tree=$(mktemp -d "$cache/l1-tree.XXXXXX")
    trap 'rm -rf "$tree"' EXIT
    mkdir -p "$tree"/{bin,dev,proc,sys,lower,rw,newroot,modules}
    cp "$busybox_bin" "$tree/bin/busybox"
    : >"$tree/modules/order"
    while read -r kind path _; do
        [[ $kind == insmod ]] || continue
        base=$(basename "$path")
        grep -qx "$base" "$tree/modules/order" && continue
        case "$path" in
            *.xz) xz -dc "$path" >"$tree/modules/${base%.xz}"; base=${base%.xz} ;;
            *.zst) zstd -qdc "$path" >"$tree/modules/${base%.zst}"; base=${base%.zst} ;;
            *) cp "$path" "$tree/modules/$base" ;;
        esac
        echo "$base" >>"$tree/modules/order"
    done < <(for m in "${stage1_modules[@]}"; do modprobe -d "$kroot" -S "$kver" --show-depends "$m"; done)
    cat >"$tree/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
say() { echo "nested-kvm(L1): $*" >/dev/ttyS0; }
die() { say "FAILED: $*"; echo "nested-kvm: L1 setup failed: $*" >/dev/ttyS1; /bin/busybox poweroff -f; }
while read -r m; do /bin/busybox insmod "/modules/$m" || die "insmod $m"; done </modules/order
run=
for w in $(/bin/busybox cat /proc/cmdline); do
    case "$w" in nested.run=*) run=${w#nested.run=} ;; esac
done
[ -n "$run" ] || die "no nested.run= on the kernel command line"
/bin/busybox mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /lower ||
    die "mount the host's root over 9p"
/bin/busybox mount -t ext4 /dev/vda /rw || die "mount the scratch disk"
/bin/busybox mkdir -p /rw/upper /rw/work /rw/tmp /rw/var-tmp
/bin/busybox chmod 1777 /rw/tmp /rw/var-tmp
/bin/busybox mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot ||
    die "overlay over the host's root"
/bin/busybox mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 result "/newroot$run" ||
    die "mount the result dir $run"
for d in proc sys dev; do /bin/busybox mount --move "/$d" "/newroot/$d" || die "move /$d"; done
/bin/busybox mkdir -p /newroot/scratch && /bin/busybox mount --move /rw /newroot/scratch || die "move the scratch disk"
say "switching to the host's root"
exec /bin/busybox switch_root /newroot /bin/bash "$run/stage2.sh"
INIT
    chmod 0755 "$tree/init"
    (cd "$tree" && find . | cpio -o -H newc --quiet | gzip -1) >"$initramfs.new"
    mv "$initramfs.new" "$initramfs"
    rm -rf "$tree"
    trap - EXIT
fi
flock -u 9

# The run dir: the stage 2 script, the command, its environment; L1 writes the exit status
# here (shared read-write over 9p as tag "result").
run=$(mktemp -d "$cache/run.XXXXXX")
scratch=$(mktemp "$cache/scratch.XXXXXX")
trap 'rm -rf "$run" "$scratch"' EXIT
truncate -s "${scratch_gib}G" "$scratch"
mkfs.ext4 -q -F -O ^has_journal -E lazy_itable_init=1 "$scratch" || fail "mkfs.ext4 on the scratch disk $scratch"
{
    # The environment, but for what points at this host's session (bus, X, Wayland).
    export -p | grep -v -E '^declare -x (DBUS_SESSION_BUS_ADDRESS|XDG_RUNTIME_DIR|DISPLAY|WAYLAND_DISPLAY|XAUTHORITY|SSH_[A-Z_]*|TERM|OLDPWD)=' || true
    if ((${#usb_disks[@]} || usb_kbd)); then echo 'export BULKHEAD_NESTED_USB=1'; fi
    if ((monitor)); then echo 'export BULKHEAD_NESTED_MONITOR=/dev/ttyS2'; fi
    printf 'cd %q\n' "$PWD"
    printf 'exec'
    printf ' %q' "$@"
    printf '\n'
} >"$run/command.sh"
cat >"$run/stage2.sh" <<STAGE2
# Stage 2, pid 1 of L1, in the overlay over the host's root.
set -u
run=$run
kver=$kver
kroot=$kroot
usb_serials="$(for ((i = 1; i <= ${#usb_disks[@]}; i++)); do printf 'bh-usb-disk-%d ' "$i"; done)"
usb_kbd=$usb_kbd
monitor=$monitor
STAGE2
cat >>"$run/stage2.sh" <<'STAGE2'
say() { echo "nested-kvm(L1): $*" >/dev/ttyS0; }
finish() { echo "$1" >"$run/status"; sync; busybox poweroff -f; }
die() { say "FAILED: $*"; echo "nested-kvm: L1 setup failed: $*" >/dev/ttyS1; finish 125; }
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
for d in /run /dev/shm; do mkdir -p "$d"; mount -t tmpfs -o mode=1777 tmpfs "$d" || die "tmpfs on $d"; done
# /tmp and /var/tmp on the scratch disk (a test's domains and disk images outgrow L1's RAM)
mount --bind /scratch/tmp /tmp && mount --bind /scratch/var-tmp /var/tmp || die "/tmp on the scratch disk"
chmod 0755 /run
mkdir -p /dev/pts && mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null ||
    { mount -t tmpfs -o mode=0755 cgroup /sys/fs/cgroup && mkdir -p /sys/fs/cgroup/unified &&
      mount -t cgroup2 cgroup2 /sys/fs/cgroup; } || die "mount cgroup2"
echo "+cpu +memory +pids" >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null ||
    say "cannot enable the cpu, memory and pids controllers"
# The L1 kernel's modules where modprobe looks for them.
mkdir -p "/lib/modules/$kver" && mount --bind "$kroot/lib/modules/$kver" "/lib/modules/$kver" ||
    die "bind the modules of $kver"
for m in kvm_amd tun loop veth; do modprobe "$m" || say "modprobe $m failed"; done
# The emulated USB devices (--usb-disk, --usb-kbd): enumerated before the command starts.
if [ -n "$usb_serials" ] || [ "$usb_kbd" = 1 ]; then
    modprobe xhci_pci || say "modprobe xhci_pci failed"
    usb_present() { # serial|product VALUE
        local f
        for f in /sys/bus/usb/devices/*/"$1"; do
            [ -r "$f" ] && [ "$(cat "$f" 2>/dev/null)" = "$2" ] && return 0
        done
        return 1
    }
    usb_missing() {
        local s
        for s in $usb_serials; do usb_present serial "$s" || echo "usb-storage with serial $s"; done
        if [ "$usb_kbd" = 1 ]; then usb_present product "QEMU USB Keyboard" || echo "usb-kbd"; fi
    }
    for _ in $(seq 50); do [ -z "$(usb_missing)" ] && break; sleep 0.2; done
    usb_missing | while read -r what; do say "the $what never showed in /sys/bus/usb/devices"; done
fi
[ "$monitor" = 1 ] && stty -F /dev/ttyS2 raw -echo 115200 2>/dev/null
[ -c /dev/kvm ] || die "no /dev/kvm in L1 after modprobe kvm_amd (does this QEMU emulate SVM for -cpu EPYC?)"
ip link set lo up 2>/dev/null
hostname nested-l1
stty -F /dev/ttyS1 raw -echo 2>/dev/null
say "running the command"
( . "$run/command.sh" ) </dev/null >/dev/ttyS1 2>&1
finish $?
STAGE2

qemu=(
    qemu-system-x86_64 -accel "tcg,thread=$tcg_thread" -cpu EPYC -m "$mem" -smp "$smp"
    -display none -monitor none -nodefaults -no-reboot
    -kernel "$vmlinuz" -initrd "$initramfs"
    -append "console=ttyS0 panic=-1 quiet loglevel=4 nested.run=$run"
    -virtfs "local,path=/,mount_tag=hostroot,security_model=passthrough,readonly=on,multidevs=remap"
    -virtfs "local,path=$run,mount_tag=result,security_model=none"
    -drive "file=$scratch,if=virtio,format=raw,cache=unsafe"
    -serial "file:$run/console.log"
    # A reset of L1 (a triple fault: L1's kernel could not even print a panic) is logged with
    # the CPU state, to tell one from a panic or a hang.
    -d cpu_reset,guest_errors -D "$run/qemu.log"
    -chardev stdio,id=out,signal=off -serial chardev:out
)
if ((${#usb_disks[@]} || usb_kbd)); then
    # QEMU's port N is both the USB2 and the USB3 root port N: a SuperSpeed device (usb-storage)
    # on it is on L1's bus 2 (the USB3 root hub) at N, a USB 1/2 one (usb-kbd) on bus 1 at N.
    qemu+=(-device qemu-xhci,id=xhci,p2=5,p3=5)
    if ((usb_kbd)); then qemu+=(-device usb-kbd,bus=xhci.0,port=5); fi
    for ((i = 1; i <= ${#usb_disks[@]}; i++)); do
        f=${usb_disks[i - 1]}
        qemu+=(-drive "if=none,id=usbdisk$i,format=raw,file=${f//,/,,}"
            -device "usb-storage,bus=xhci.0,port=$i,drive=usbdisk$i,serial=bh-usb-disk-$i")
    done
fi
if ((monitor)); then
    # The monitor and L1's third serial port (COM3's I/O port, IRQ 5 so as not to share
    # COM1's) are two pipe chardevs over the same two FIFOs, crossed: what L1 writes to
    # /dev/ttyS2 is the monitor's input, its replies are L1's to read. (A socket chardev
    # connecting to a server chardev of the same QEMU came up unconnected now and then: the
    # monitor then never answered.) QEMU opens each FIFO read-write, so nothing blocks.
    mkfifo "$run/mon-in" "$run/mon-out"
    ln -s mon-in "$run/mon.in" && ln -s mon-out "$run/mon.out"
    ln -s mon-out "$run/monlink.in" && ln -s mon-in "$run/monlink.out"
    qemu+=(-chardev "pipe,id=mon,path=$run/mon" -mon chardev=mon,mode=readline
        -chardev "pipe,id=monlink,path=$run/monlink" -device isa-serial,chardev=monlink,index=2,irq=5)
fi
started=$SECONDS
set +e
# TCG names every EPYC feature it does not emulate, twice: noise, not news.
timeout --kill-after=10 "$timeout_s" "${qemu[@]}" </dev/null 2> >(grep -v "TCG doesn't support requested feature" >&2) &
qemu_pid=$!
# An L1 whose kernel reports a CPU stuck in one thread for two minutes or more (seen: both
# vCPUs of L1 inside KVM_RUN of L2 guests for ten minutes and more, with nothing else running)
# is stopped at once instead of at the timeout: that is the emulator failing, like a reset.
lockup_re='soft lockup - CPU#[0-9]+ stuck for (1[2-9][0-9]|[2-9][0-9]{2}|[0-9]{4,})s'
locked_up=0
while kill -0 "$qemu_pid" 2>/dev/null; do
    if grep -qE "$lockup_re" "$run/console.log" 2>/dev/null; then
        locked_up=1
        kill "$qemu_pid" 2>/dev/null
        break
    fi
    sleep 5
done
wait "$qemu_pid"
qemu_status=$?
set -e
if ((locked_up)); then
    echo "nested-kvm: L1 locked up (a CPU stuck for 2 min or more); stopped it; last lines of L1's console:" >&2
    tail -n 60 "$run/console.log" >&2 || true
    exit 123
fi
if [[ -s $run/status ]]; then
    status=$(<"$run/status")
    echo "nested-kvm: exit status $status after $((SECONDS - started)) s" >&2
    exit "$status"
fi
if ((qemu_status == 124 || qemu_status == 137)); then
    echo "nested-kvm: timed out after $timeout_s s; last lines of L1's console:" >&2
    tail -n 60 "$run/console.log" >&2 || true
    exit 124
fi
echo "nested-kvm: L1 ended without an exit status (qemu exit $qemu_status); last lines of L1's console:" >&2
tail -n 60 "$run/console.log" >&2 || true
echo "nested-kvm: the end of QEMU's log (CPU state at resets, guest errors):" >&2
tail -n 40 "$run/qemu.log" >&2 || true
exit 123
