#!/usr/bin/env bash
# The domains a new Bulkhead starts with, as Qubes' first boot makes them: the service domain
# `net` (every other domain's netvm), `work` (blue), `personal` (yellow), `untrusted` (red;
# its disposables come from debian-12-dvm) and `vault` (black, no network at all), each with
# a terminal (foot) in its application menu, and the service domain `usb` when the host has
# USB controllers (`$BULKHEAD_SYSFS/bus/usb/devices/usbN`, /sys by default), as Qubes makes
# sys-usb. A domain that exists is left as it is.
# Needs domaind running with the debian-12 template and the disposable template
# debian-12-dvm (scripts/setup.sh makes both first). Prints what it made.
set -euo pipefail

have() { bulkhead prefs "$1" >/dev/null 2>&1; }
make() {
    local name=$1
    shift
    if have "$name"; then
        echo "  $name: exists, left as it is"
    else
        bulkhead create "$@" "$name"
        echo "  $name: created ($*)"
    fi
}

make net --class service --template debian-12 --label red
make work --template debian-12 --label blue -P netvm=net
make personal --template debian-12 --label yellow -P netvm=net
make untrusted --template debian-12 --label red -P netvm=net -P default_dispvm=debian-12-dvm
make vault --template debian-12 --label black
sysfs=${BULKHEAD_SYSFS:-/sys}
if compgen -G "$sysfs/bus/usb/devices/usb*" >/dev/null; then
    # A sandbox: keyboards and mice reach dom0 only from a sandbox usb domain (README, USB).
    make usb --class service --template debian-12 --label red
    echo "  usb holds the host's USB devices: bulkhead usb list; bulkhead usb attach BUSID DOMAIN"
else
    echo "  usb: not made, this host has no USB controller"
fi
for d in work personal untrusted vault; do
    if ! bulkhead prefs "$d" features.menu-items >/dev/null 2>&1; then
        bulkhead prefs "$d" features.menu-items foot.desktop
    fi
done

if uplink=$(bulkhead prefs net uplink 2>/dev/null); then
    echo "  net's uplink: $uplink"
else
    cat <<'TEXT'
  net has no uplink yet: domains reach each other through it, but not the outside world.
  To give it the host's network interface (dom0 then has no network of its own, as in
  Qubes), add to /etc/bulkhead/domaind.toml and restart domaind:
      [net]
      uplink = "eth0"          # the host's interface
      address = "192.0.2.2/24" # net's address on that link
      gateway = "192.0.2.1"
      dns = ["192.0.2.1"]
TEXT
fi
