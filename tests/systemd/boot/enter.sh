#!/bin/bash
# Runs as PID 1 of fresh pid, mount, net, uts and ipc namespaces (see container.py), turns the
# host's root into a throwaway container root and execs systemd on it:
#  - the root is an overlay: the host's / read-only below, a tmpfs above, so systemd and the
#    tests write only into memory that vanishes with the namespace;
#  - /dev is its own (nodes bound in), /tmp, /var/tmp and /run are fresh tmpfs (systemd-tmpfiles cleans /tmp at boot: never the host's);
#  - /sys and /proc/sys are read-only (no udev trigger, no sysctl reaching the host), the cgroup
#    hierarchies below /sys/fs/cgroup stay writable for systemd;
#  - a private network namespace: only loopback, the host's interfaces are out of reach.
# Usage: enter.sh SETUP_SCRIPT [CHECKOUT INNER]  (SETUP_SCRIPT runs chrooted in the new root
# before systemd starts; a CHECKOUT that the fresh /tmp would hide is shown at INNER, as an overlay)
set -euo pipefail
setup=$1
checkout=${2:-}
inner=${3:-$checkout}
base=/mnt   # in this mount namespace only: the host keeps its own /mnt
mount --make-rprivate /
mount -t tmpfs -o mode=0755,size=2g tolk-boot "$base"
mkdir -p "$base"/{upper,work,root}
mount -t overlay overlay -o "lowerdir=/,upperdir=$base/upper,workdir=$base/work" "$base/root"
root=$base/root
mount -t proc proc "$root/proc"
mount --bind "$root/proc/sys" "$root/proc/sys"
mount -o remount,bind,ro "$root/proc/sys"
mount --rbind /sys "$root/sys"
mount -o remount,bind,ro "$root/sys"
# Its own /dev, as systemd-nspawn makes one: a tmpfs with the harmless nodes bound in (journald
# would otherwise link /dev/log, and systemd write to /dev/console, on the host).
mount -t tmpfs -o mode=0755,nosuid tolk-dev "$root/dev"
for node in null zero full random urandom tty; do
    touch "$root/dev/$node"
    mount --bind "/dev/$node" "$root/dev/$node"
done
touch "$root/dev/console"
mount --bind /dev/null "$root/dev/console"
mkdir "$root/dev/pts" "$root/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/dev/shm"
ln -s /proc/self/fd "$root/dev/fd"
for i in 0 1 2; do ln -s "/proc/self/fd/$i" "$root/dev/$(echo stdin stdout stderr | cut -d' ' -f$((i + 1)))"; done
for dir in tmp var/tmp run; do
    mount -t tmpfs -o mode=1777 tmpfs "$root/$dir"
done
chmod 0755 "$root/run"
if [ -n "$checkout" ] && [ "$inner" != "$checkout" ]; then
    mkdir -p "$base/checkout-upper" "$base/checkout-work" "$root$inner"
    mount -t overlay overlay -o "lowerdir=$checkout,upperdir=$base/checkout-upper,workdir=$base/checkout-work" "$root$inner"
fi
cp "$setup" "$root/boot-setup.sh"
chroot "$root" /bin/bash /boot-setup.sh
mkdir -p "$root/.oldroot"
cd "$root"
pivot_root . .oldroot
umount -l /.oldroot
rmdir /.oldroot
export container=tolk-boot
exec /lib/systemd/systemd --unit=tolk-boot.target --log-target=journal --show-status=no
