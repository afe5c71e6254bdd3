#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to a running Bulkhead:
# installs packages, builds and installs the binaries, installs the D-Bus policy and the
# systemd unit, starts domaind, builds the debian-12 template, creates the disposable
# template debian-12-dvm, runs a command in a fresh disposable, makes the default domains
# (scripts/default-domains.sh), puts the desktop user (SUDO_USER or BULKHEAD_USER) in
# bulkhead-admin with the domains' menus, and has dom0-ui start with the desktop. Run as root
# (sudo from the desktop user's account).
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX=${PREFIX:-/usr/local}
step() { printf '\n==> %s\n' "$*"; }

step "Debian packages"
scripts/install-deps.sh

step "Building (release)"
cargo build --release --workspace --bins

step "Installing into $PREFIX"
install -D -m 0755 target/release/domaind            "$PREFIX/sbin/domaind"
install -D -m 0755 target/release/bulkhead-sandbox   "$PREFIX/sbin/bulkhead-sandbox"
# The KVM monitor, found next to domaind (VM domains; they need VT-x/AMD-V).
install -D -m 0755 target/release/bulkhead-vmm       "$PREFIX/sbin/bulkhead-vmm"
install -D -m 0755 target/release/bulkhead           "$PREFIX/bin/bulkhead"
# The domain manager and policy editor (GTK), with its menu entry.
install -D -m 0755 target/release/bulkhead-manager   "$PREFIX/bin/bulkhead-manager"
install -D -m 0644 packaging/bulkhead-manager.desktop "$PREFIX/share/applications/bulkhead-manager.desktop"
# The dom0 desktop session (guest windows, clipboard, questions) and "Open in disposable".
install -D -m 0755 target/release/dom0-ui            "$PREFIX/bin/dom0-ui"
install -D -m 0644 packaging/dom0-ui.desktop "$PREFIX/share/applications/dom0-ui.desktop"
install -D -m 0644 packaging/bulkhead-open-in-dvm.desktop "$PREFIX/share/applications/bulkhead-open-in-dvm.desktop"
# The guest tools dir, as listed in packaging/guest-tools.txt (bin NAME / rpc SERVICE BINARY).
guest="$PREFIX/lib/bulkhead/guest"
install -d -m 0755 "$guest" "$guest/rpc"
while read -r kind a b; do
    case "$kind" in
        ''|'#'*) ;;
        bin) install -m 0755 "target/release/$a" "$guest/$a" ;;
        rpc) install -m 0755 "target/release/$b" "$guest/$b"; ln -sfn "../$b" "$guest/rpc/$a" ;;
        *) echo "packaging/guest-tools.txt: unknown entry '$kind'" >&2; exit 1 ;;
    esac
done < packaging/guest-tools.txt
install -d "$PREFIX/share/bulkhead/templates/recipes"
install -m 0644 templates/recipes/*.toml "$PREFIX/share/bulkhead/templates/recipes/"
install -D -m 0644 packaging/dbus/org.bulkhead.Domaind1.conf /etc/dbus-1/system.d/org.bulkhead.Domaind1.conf
install -D -m 0644 packaging/systemd/bulkhead-domaind.service /etc/systemd/system/bulkhead-domaind.service
getent group bulkhead-admin >/dev/null || groupadd --system bulkhead-admin
install -d -m 0750 /etc/bulkhead /etc/bulkhead/domains
install -d -m 0755 /etc/bulkhead/policy.d
# Default policies: copied once; an administrator's edits are never overwritten.
for f in policies/*.policy; do
    [ -e "/etc/bulkhead/policy.d/$(basename "$f")" ] || install -m 0644 "$f" /etc/bulkhead/policy.d/
done
bulkhead policy check --dir /etc/bulkhead/policy.d
install -d -m 0700 /var/lib/bulkhead /run/bulkhead

step "Starting domaind"
if [ "$(ps -p 1 -o comm=)" = systemd ]; then
    systemctl daemon-reload
    systemctl reload dbus || true
    systemctl enable --now bulkhead-domaind.service
    systemctl restart bulkhead-domaind.service
else
    # No systemd here (a container or a CI machine): run the system bus and domaind directly.
    if dbus-send --system --dest=org.freedesktop.DBus --type=method_call --print-reply / \
        org.freedesktop.DBus.GetId >/dev/null 2>&1; then
        dbus-send --system --dest=org.freedesktop.DBus --type=method_call / org.freedesktop.DBus.ReloadConfig || true
    else
        # No bus answers: none was started, or one died and left its socket and pid file
        # (dbus-daemon refuses to start over a pid file).
        mkdir -p /run/dbus
        rm -f /run/dbus/system_bus_socket /run/dbus/pid
        dbus-daemon --system --fork
    fi
    pkill -x domaind || true
    for _ in $(seq 50); do pgrep -x domaind >/dev/null || break; sleep 0.1; done
    nohup "$PREFIX/sbin/domaind" --system >>/var/log/bulkhead-domaind.log 2>&1 &
    echo "domaind started (pid $!), log: /var/log/bulkhead-domaind.log"
fi
for _ in $(seq 100); do bulkhead ls >/dev/null 2>&1 && break; sleep 0.1; done
bulkhead ls >/dev/null

step "Template debian-12 (cached by recipe content)"
bulkhead template install debian-12

step "Disposable template debian-12-dvm"
bulkhead prefs debian-12-dvm >/dev/null 2>&1 ||
    bulkhead create --class disposable-template --template debian-12 --label red debian-12-dvm
bulkhead ls

step "A command in a fresh disposable"
bulkhead run --dispvm debian-12-dvm -- cat /etc/os-release

step "Default domains (as Qubes' first boot)"
scripts/default-domains.sh

# The desktop: dom0-ui starts with every graphical session; the desktop user (the one who
# ran sudo, or BULKHEAD_USER) may use the GUIs and gets the domains' menus.
install -D -m 0644 packaging/dom0-ui.desktop /etc/xdg/autostart/bulkhead-dom0-ui.desktop
desktop_user=${BULKHEAD_USER:-${SUDO_USER:-}}
if [ -n "$desktop_user" ] && [ "$desktop_user" != root ] && id "$desktop_user" >/dev/null 2>&1; then
    step "Desktop user $desktop_user"
    usermod -aG bulkhead-admin "$desktop_user"
    echo "  $desktop_user is in bulkhead-admin (takes effect at the next login)"
    home=$(getent passwd "$desktop_user" | cut -d: -f6)
    runuser -u "$desktop_user" -- env HOME="$home" "$PREFIX/bin/bulkhead" appmenus --sync ||
        echo "  (menu entries not written; run 'bulkhead appmenus --sync' as $desktop_user)"
else
    echo "  no desktop user given (run with sudo from that user, or BULKHEAD_USER=NAME):"
    echo "  add yours with 'usermod -aG bulkhead-admin NAME', then 'bulkhead appmenus --sync' as it"
fi

step "Done"
bulkhead ls
cat <<TEXT

Made: the template debian-12, the disposable template debian-12-dvm, the net domain, the
usb domain (where the host has USB) and work, personal, untrusted, vault (see above).
dom0-ui starts with your next desktop session (/etc/xdg/autostart) and frames every domain's
windows in its colour; the domains' terminals are in your menu as "[work] Foot" and so on.
Software for the template comes through net: give net an uplink first (see above).

  bulkhead run work -- foot &                        a terminal in work
  bulkhead run -u root debian-12 -- sh -c 'apt-get update && apt-get install -y mupdf'
  bulkhead shutdown debian-12                        ... and work has mupdf at its next start
  bulkhead appmenus work --list                      choose its menu entries (--set ID...)
  bulkhead usb list; bulkhead usb attach BUSID work  a USB device for work (policy decides)
  bulkhead-manager                                   the domain manager and policy editor
TEXT
