#!/usr/bin/env bash
# Installs the Debian packages Bulkhead needs to build, run and test. Idempotent; run as root.
set -euo pipefail

PACKAGES=(
    mmdebstrap          # builds domain templates from Debian packages
    bubblewrap          # the peer the sandbox-start benchmark compares against
    dbus                # dbus-daemon: the system bus, and private buses in tests
    iproute2            # ip: loopback inside domains, later veth links
    pkg-config gcc      # -sys crates; gcc also builds the vmm's tiny test guests
    util-linux          # unshare/nsenter for tests and debugging
    procps psmisc       # ps/pkill used by tests to look for orphans
    acpica-tools        # iasl -d: the vmm test decodes its ACPI tables with ACPICA
    e2fsprogs           # mkfs.ext4 -d: the disk images of VM domains (template root, private, tools)
    kmod                # depmod: modules.dep of the guest kernel, for the VM initramfs
    libxkbcommon-dev    # gui-agent (smithay's keyboard links libxkbcommon)
    weston foot gtk-4-examples wl-clipboard  # real Wayland clients for gui-agent tests; headless weston for the GUI bench
    waypipe             # the peer the GUI benchmark compares against
    libgtk-4-dev        # dom0-ui (GTK 4.8 on bookworm)
    xvfb xauth xdotool  # dom0-ui's screenshot tests: a private X server, typing into it
    x11-xkb-utils       # xkbcomp: dom0-ui reads dom0's keymap with it and sends it to the guests
    openbox             # dom0-ui's focus tests: a real window manager on that X server
    nftables            # nft: NAT and the per-domain firewall inside the net domain
    busybox-static cpio  # scripts/nested-kvm.sh: the L1's initramfs
)

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# scripts/nested-kvm.sh: QEMU for the L1 with a real /dev/kvm (the VM tests). Bookworm's 7.2
# emulates nested SVM badly under an L2 guest's network load: its L1 kernel overflowed a vCPU
# thread's kernel stack in KVM_RUN (2 of 2 runs of the net VM test); 10.0 from
# bookworm-backports does not (see README, "VM domains").
qemu_version() { dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null | sed -E 's/^[0-9]+://; s/[^0-9.].*//'; }
if [[ $(qemu_version) != 1[0-9].* ]]; then
    if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        cat >/etc/apt/sources.list.d/bulkhead-backports.sources <<'SOURCES'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    fi
    echo "installing: qemu-system-x86 from bookworm-backports"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86
fi
