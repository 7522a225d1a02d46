#!/usr/bin/env bash
# Builds the lab's real guest from Debian packages only: Debian's kernel (linux-image-amd64,
# downloaded and unpacked, not installed) and an initramfs of busybox-static with the virtio
# network modules, virtio-rng (entropy from the host: under TCG a guest that waits for its own
# hangs in getrandom) and 802.1q (VLAN subinterfaces on trunk parents).
# Usage: tools/guest-image.sh OUT_DIR. Writes OUT_DIR/vmlinuz and OUT_DIR/base.cpio.gz (its
# /init runs /test.sh from a second cpio appended at boot, then powers off). Idempotent: an
# existing image with the same modules is kept.
set -euo pipefail
out=${1:?usage: guest-image.sh OUT_DIR}
# The module list is part of the image: an image with another list is built again.
wanted="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net virtio-rng llc stp garp mrp 8021q"
[ -s "$out/vmlinuz" ] && [ -s "$out/base.cpio.gz" ] && [ "$(cat "$out/modules" 2>/dev/null)" = "$wanted" ] && exit 0
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
[ -n "$pkg" ] || { echo "no linux-image package behind linux-image-amd64" >&2; exit 1; }
(cd "$work" && apt-get download "$pkg" >/dev/null 2>&1 || apt-get download "$pkg")
dpkg-deb -x "$work"/"$pkg"_*.deb "$work/pkg"
release=${pkg#linux-image-}
modules="$work/pkg/lib/modules/$release/kernel"

root="$work/root"
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,run,modules,etc/udhcpc}
cp /bin/busybox "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
# Load order matters: each module needs the ones before it.
order=""
for m in $wanted; do
    file=$(find "$modules" -name "$m.ko" | head -1)
    [ -n "$file" ] || { echo "module $m not in $pkg" >&2; exit 1; }
    cp "$file" "$root/modules/"
    order="$order $m"
done
cat > "$root/init" <<EOF
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in$order; do insmod /modules/\$m.ko; done
ip link set lo up
echo ISTHMUS-GUEST-UP
[ -x /test.sh ] && /test.sh
echo ISTHMUS-GUEST-DONE
poweroff -f
EOF
chmod +x "$root/init"
# The lease script: configure eth0 as told and print what was given.
cat > "$root/etc/udhcpc/default.script" <<'EOF'
#!/bin/sh
case "$1" in
bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
    set -- $staticroutes
    while [ $# -ge 2 ]; do ip route add "$1" via "$2" dev "$interface"; shift 2; done
    [ -z "$staticroutes" ] && [ -n "$router" ] && ip route add default via "$router"
    : > /etc/resolv.conf
    [ -n "$domain" ] && echo "search $domain" >> /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
    echo "LEASE ip=$ip mask=$mask router=$router dns=$dns mtu=$mtu hostname=$hostname domain=$domain"
    ;;
esac
EOF
chmod +x "$root/etc/udhcpc/default.script"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$work/base.cpio.gz"
cp "$work/pkg/boot/vmlinuz-$release" "$out/vmlinuz"
mv "$work/base.cpio.gz" "$out/base.cpio.gz"
echo "$wanted" > "$out/modules"
