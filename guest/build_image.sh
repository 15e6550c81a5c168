#!/bin/bash
# Build a small Debian 12 (bookworm) cloud image for QEMU guests of the emulator.
#
#   guest/build_image.sh OUTFILE        (OUTFILE ending in .qcow2: qcow2, anything else: raw)
#
# Makes, from Debian packages only (mmdebstrap; nothing is installed on the host):
#   OUTFILE          the disk: an MBR partition table, partition 1 = the ext4 root file system
#                    (label debian-root), GRUB (BIOS) in the MBR and the gap before partition 1
#   OUTFILE.vmlinuz  the image's kernel  } for direct-kernel boot:
#   OUTFILE.initrd   the image's initrd  }   -kernel OUTFILE.vmlinuz -initrd OUTFILE.initrd
#   OUTFILE.cmdline  the kernel command line for direct-kernel boot (root=/dev/vda1 console=ttyS0)
#
# BOOTLOADER=none makes instead a whole-disk ext4 file system (no partition table, no boot
# loader; direct-kernel boot only, root=/dev/vda), as with `mkfs.ext4 -d` alone.
#
# The guest: linux-image-cloud-amd64, systemd, udev, cloud-init (Nova's two datasources, in
# cloud-init's own default order: datasource_list [ ConfigDrive, OpenStack, None ]),
# openssh-server, ifupdown + isc-dhcp-client (cloud-init
# writes /etc/network/interfaces.d/50-cloud-init, DHCP on the first NIC when it has nothing
# better), serial console on ttyS0, no password for anyone (log in with the SSH key from the
# metadata, as the default user "debian"). ROOT_PASSWORD=... sets one for root, for debugging.
#
# Cached: when OUTFILE and its companions exist and OUTFILE is newer than this script, nothing
# is done. FORCE=1 rebuilds. MIRROR=http://... picks another Debian mirror (default
# deb.debian.org; SECURITY_MIRROR for debian-security). SIZE_MB=N sets the root file system size
# (default: what the tree needs plus 40 %, at least 1024 MiB). KEEP_WORK=1 keeps the work
# directory (the unpacked tree) for inspection.
# Needs (as root): mmdebstrap, mkfs.ext4 (e2fsprogs >= 1.43), qemu-img (for .qcow2), dd.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SELF=$HERE/$(basename "${BASH_SOURCE[0]}")
PROG=${0##*/}

die() { echo "$PROG: error: $*" >&2; exit 1; }
log() { echo "$PROG: $*" >&2; }

usage() {
    cat >&2 <<EOF
usage: $PROG OUTFILE

Builds a Debian 12 cloud image (cloud-init with the OpenStack datasource, serial console) in
OUTFILE (qcow2 when it ends in .qcow2, else raw), with OUTFILE.vmlinuz, OUTFILE.initrd and
OUTFILE.cmdline next to it for direct-kernel boot. Must run as root.
Environment: FORCE=1, BOOTLOADER=grub|none (default grub), MIRROR=URL, SECURITY_MIRROR=URL,
SIZE_MB=N, ROOT_PASSWORD=PW, KEEP_WORK=1.
EOF
    exit 2
}

[ $# -eq 1 ] || usage
case "$1" in -h | --help) usage ;; esac
OUTFILE=$1
BOOTLOADER=${BOOTLOADER:-grub}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
SUITE=bookworm
FS_LABEL=debian-root
case "$BOOTLOADER" in grub | none) ;; *) die "BOOTLOADER must be grub or none, not '$BOOTLOADER'" ;; esac
case "$OUTFILE" in *.qcow2) FORMAT=qcow2 ;; *) FORMAT=raw ;; esac

# ---------------------------------------------------------------- cache -----------------------
if [ "${FORCE:-0}" != 1 ] && [ -s "$OUTFILE" ] && [ "$OUTFILE" -nt "$SELF" ] &&
    [ -s "$OUTFILE.vmlinuz" ] && [ -s "$OUTFILE.initrd" ] && [ -s "$OUTFILE.cmdline" ]; then
    log "up to date: $OUTFILE (FORCE=1 to rebuild)"
    exit 0
fi

[ "$(id -u)" = 0 ] || die "must run as root (mmdebstrap in root mode, device nodes, chroot)"
for tool in mmdebstrap mkfs.ext4 dd du chroot; do
    command -v "$tool" >/dev/null || die "missing tool: $tool (apt-get install mmdebstrap e2fsprogs coreutils)"
done
[ -d /usr/share/mmdebstrap/hooks/merged-usr ] || die "mmdebstrap without its merged-usr hooks (need >= 1.3)"
[ "$FORMAT" = raw ] || command -v qemu-img >/dev/null ||
    die "missing tool: qemu-img (apt-get install qemu-utils)"

OUTDIR=$(dirname "$OUTFILE")
mkdir -p "$OUTDIR" || die "cannot create $OUTDIR"
# work next to the output (the tree is ~600 MB; /tmp may be small), removed on exit
WORK=$(mktemp -d "$OUTDIR/.build_image.XXXXXX")
if [ "${KEEP_WORK:-0}" = 1 ]; then
    trap 'log "work directory kept: $WORK"' EXIT
else
    trap 'rm -rf "$WORK"' EXIT
fi
ROOT=$WORK/root
START=$(date +%s)

# ---------------------------------------------------------------- packages --------------------
PACKAGES=(
    # what the brief asks for
    linux-image-cloud-amd64 systemd-sysv udev cloud-init openssh-server ifupdown
    isc-dhcp-client netbase iproute2
    # what booting needs: mmdebstrap installs no Recommends, so the initrd generator, and
    # dbus (hostnamectl, used by cloud-init's set_hostname), sudo (the default user's rules)
    initramfs-tools dbus sudo
    # cloud-image basics: growpart/resize2fs for a bigger disk, and a few tools for debugging
    # the network path from inside the guest
    cloud-guest-utils e2fsprogs procps kmod iputils-ping curl less
)
[ "$BOOTLOADER" = grub ] && PACKAGES+=(grub-pc-bin)

# Drop documentation, man pages and translations: about a third of the tree.
DPKG_EXCLUDES=(
    --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/info/*'
    --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/locale/*'
    --dpkgopt='path-include=/usr/share/locale/locale.alias'
    --dpkgopt='path-exclude=/usr/share/grub/themes/*'
    --dpkgopt='path-exclude=/usr/share/lintian/*'
)

# Hooks: (1) mmdebstrap's merged-usr hooks make the /usr symlinks themselves and install
# usr-is-merged; without them init-system-helpers' "usrmerge | usr-is-merged" brings usrmerge,
# and with it 50 MB of perl; (2) FSTYPE=ext4 for initramfs-tools before the kernel package
# makes the initrd: its fsck hook cannot probe the root file system's type in a chroot and
# would leave fsck out of the initrd ("fsck not present, so skipping root file system").
log "mmdebstrap $SUITE (${#PACKAGES[@]} packages) into $ROOT"
mmdebstrap --mode=root --variant=minbase --format=directory \
    --include="$(IFS=,; echo "${PACKAGES[*]}")" \
    "${DPKG_EXCLUDES[@]}" \
    --aptopt='Acquire::Retries "3"' \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --essential-hook='mkdir -p "$1/etc/initramfs-tools/conf.d"' \
    --essential-hook='echo FSTYPE=ext4 >"$1/etc/initramfs-tools/conf.d/fstype"' \
    "$SUITE" "$ROOT" \
    "deb $MIRROR $SUITE main" \
    "deb $MIRROR $SUITE-updates main" \
    "deb $SECURITY_MIRROR $SUITE-security main" >&2 ||
    die "mmdebstrap failed (see above)"

# ---------------------------------------------------------------- configuration ---------------
KVER=$(basename "$(ls -d "$ROOT"/lib/modules/* | head -n1)")
[ -f "$ROOT/boot/vmlinuz-$KVER" ] && [ -f "$ROOT/boot/initrd.img-$KVER" ] ||
    die "no kernel or initrd in the tree (kernel $KVER)"
log "kernel $KVER"

if [ "$BOOTLOADER" = grub ]; then ROOTDEV=/dev/vda1; else ROOTDEV=/dev/vda; fi
CMDLINE="root=$ROOTDEV ro console=tty0 console=ttyS0,115200n8"

echo debian >"$ROOT/etc/hostname"
cat >"$ROOT/etc/hosts" <<'EOF'
127.0.0.1	localhost
127.0.1.1	debian
::1		localhost ip6-localhost ip6-loopback
ff02::1		ip6-allnodes
ff02::2		ip6-allrouters
EOF
echo "LABEL=$FS_LABEL / ext4 defaults,errors=remount-ro 0 1" >"$ROOT/etc/fstab"
# no resolver of the build host's: the guest's comes from DHCP (dhclient writes it)
rm -f "$ROOT/etc/resolv.conf"
: >"$ROOT/etc/resolv.conf"
# C.UTF-8 needs no generation; with it set, cloud-init's locale module has nothing to do
echo "LANG=C.UTF-8" >"$ROOT/etc/default/locale"

# ifupdown: cloud-init writes its configuration into interfaces.d
cat >"$ROOT/etc/network/interfaces" <<'EOF'
# cloud-init writes the guest's NICs to /etc/network/interfaces.d/50-cloud-init
auto lo
iface lo inet loopback

source /etc/network/interfaces.d/*
EOF
mkdir -p "$ROOT/etc/network/interfaces.d"

# cloud-init: Nova's config drive when there is one (an ISO 9660 volume labelled config-2), else
# the OpenStack metadata service (found by the SMBIOS product "OpenStack Nova"); 99_ sorts after
# the 90_dpkg.cfg that dpkg-reconfigure cloud-init would write
cat >"$ROOT/etc/cloud/cloud.cfg.d/99_datasource.cfg" <<'EOF'
# Written by guest/build_image.sh: Nova's config drive, or its metadata service (169.254.169.254), then None
datasource_list: [ ConfigDrive, OpenStack, None ]
EOF
cat >"$ROOT/etc/cloud/cloud.cfg.d/99_ssh_keys.cfg" <<'EOF'
# Written by guest/build_image.sh: no DSA host key (OpenSSH 9 does not use it; slow under TCG)
ssh_genkeytypes: [ rsa, ecdsa, ed25519 ]
EOF

# serial console: a getty on ttyS0 even when the kernel command line lacks console=ttyS0
mkdir -p "$ROOT/etc/systemd/system/getty.target.wants"
ln -sf /lib/systemd/system/serial-getty@.service \
    "$ROOT/etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service"

# every VM gets its own identity: machine-id and SSH host keys are made at first boot
# (cloud-init's ssh module generates the host keys)
: >"$ROOT/etc/machine-id"
rm -f "$ROOT/var/lib/dbus/machine-id" "$ROOT"/etc/ssh/ssh_host_*

if [ -n "${ROOT_PASSWORD:-}" ]; then
    echo "root:$ROOT_PASSWORD" | chroot "$ROOT" chpasswd || die "cannot set the root password"
    log "root password set (ROOT_PASSWORD)"
fi

# the kernel and initrd for direct-kernel boot, taken before anything else changes /boot
cp "$ROOT/boot/vmlinuz-$KVER" "$WORK/vmlinuz"
cp "$ROOT/boot/initrd.img-$KVER" "$WORK/initrd"

# ---------------------------------------------------------------- GRUB (BIOS) -----------------
# No loop device, no mount: grub-mkimage (from the image's own grub-pc-bin) makes core.img,
# which goes into the gap between the MBR and partition 1 (sector 1 on); boot.img's first 440
# bytes go into the MBR. grub-mkimage already writes core.img's own length into its first
# sector (diskboot's block list, start sector 2), and boot.img loads sector 1 by default:
# exactly what grub-install would do for this layout.
GRUB_MODULES="biosdisk part_msdos ext2 normal linux configfile search search_label echo test
    serial terminal boot gzio zstd minicmd ls cat"
if [ "$BOOTLOADER" = grub ]; then
    mkdir -p "$ROOT/boot/grub"
    cp -r "$ROOT/usr/lib/grub/i386-pc" "$ROOT/boot/grub/"
    # /vmlinuz and /initrd.img are symbolic links the kernel package keeps up to date
    kernel=/boot/vmlinuz-$KVER initrd=/boot/initrd.img-$KVER
    [ -L "$ROOT/vmlinuz" ] && kernel=/vmlinuz
    [ -L "$ROOT/initrd.img" ] && initrd=/initrd.img
    cat >"$ROOT/boot/grub/grub.cfg" <<EOF
# Written by guest/build_image.sh (there is no update-grub in this image).
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=1
set default=0
search --no-floppy --label --set=root $FS_LABEL
menuentry "Debian GNU/Linux 12 ($KVER)" {
    linux $kernel root=LABEL=$FS_LABEL ro console=tty0 console=ttyS0,115200n8
    initrd $initrd
}
EOF
    # shellcheck disable=SC2086  # GRUB_MODULES is a word list
    chroot "$ROOT" grub-mkimage -O i386-pc -o /tmp/core.img -p '(hd0,msdos1)/boot/grub' \
        $GRUB_MODULES || die "grub-mkimage failed"
    mv "$ROOT/tmp/core.img" "$WORK/core.img"
    cp "$ROOT/usr/lib/grub/i386-pc/boot.img" "$WORK/boot.img"
    # GRUB's tools are not needed in the guest (nothing there runs grub-install or update-grub;
    # /boot/grub keeps the modules and grub.cfg): remove them and what only they needed
    DEBIAN_FRONTEND=noninteractive chroot "$ROOT" apt-get -y -q -o Dpkg::Use-Pty=0 purge --autoremove \
        grub-pc-bin grub-common >&2 || die "cannot remove the GRUB packages from the image"
    core_sectors=$((($(stat -c %s "$WORK/core.img") + 511) / 512))
    [ "$core_sectors" -lt 2047 ] || die "core.img too big for the gap ($core_sectors sectors)"
fi

# ---------------------------------------------------------------- file system -----------------
used_mb=$(du -sm "$ROOT" | cut -f1)
size_mb=${SIZE_MB:-$((used_mb * 14 / 10 + 64))}
[ -n "${SIZE_MB:-}" ] || [ "$size_mb" -ge 1024 ] || size_mb=1024
log "ext4 of $size_mb MiB for $used_mb MiB of files"
mkfs.ext4 -q -F -L "$FS_LABEL" -d "$ROOT" -E root_owner=0:0 "$WORK/root.ext4" "${size_mb}M" ||
    die "mkfs.ext4 -d failed"

# ---------------------------------------------------------------- the disk --------------------
# le32 N: N as 4 little-endian bytes, for printf
le32() { printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(($1 & 255)) $(($1 >> 8 & 255)) $(($1 >> 16 & 255)) $(($1 >> 24 & 255)); }

if [ "$BOOTLOADER" = grub ]; then
    start=2048                         # partition 1 at 1 MiB
    sectors=$((size_mb * 2048))
    truncate -s $(((start + sectors) * 512)) "$WORK/disk.raw"
    # MBR: partition entry 1 at byte 446 (bootable, type 0x83, LBA start and length; CHS fields
    # set to the "use LBA" value), the boot signature at byte 510
    entry="\\x80\\xfe\\xff\\xff\\x83\\xfe\\xff\\xff$(le32 $start)$(le32 $sectors)"
    # shellcheck disable=SC2059  # the format is the data
    printf "$entry" | dd of="$WORK/disk.raw" bs=1 seek=446 conv=notrunc status=none
    printf '\x55\xaa' | dd of="$WORK/disk.raw" bs=1 seek=510 conv=notrunc status=none
    dd if="$WORK/boot.img" of="$WORK/disk.raw" bs=440 count=1 conv=notrunc status=none
    dd if="$WORK/core.img" of="$WORK/disk.raw" bs=512 seek=1 conv=notrunc status=none
    dd if="$WORK/root.ext4" of="$WORK/disk.raw" bs=1M seek=1 conv=notrunc,sparse status=none
    rm -f "$WORK/root.ext4"
else
    mv "$WORK/root.ext4" "$WORK/disk.raw"
fi

if [ "$FORMAT" = qcow2 ]; then
    qemu-img convert -f raw -O qcow2 "$WORK/disk.raw" "$WORK/disk.out" || die "qemu-img convert failed"
else
    mv "$WORK/disk.raw" "$WORK/disk.out"
fi

# ---------------------------------------------------------------- publish ---------------------
echo "$CMDLINE" >"$WORK/cmdline"
mv -f "$WORK/vmlinuz" "$OUTFILE.vmlinuz"
mv -f "$WORK/initrd" "$OUTFILE.initrd"
mv -f "$WORK/cmdline" "$OUTFILE.cmdline"
mv -f "$WORK/disk.out" "$OUTFILE"      # last: its time stamp marks a complete build
log "built $OUTFILE ($FORMAT, $(du -h "$OUTFILE" | cut -f1) on disk, ${size_mb} MiB file system," \
    "boot loader: $BOOTLOADER) in $(($(date +%s) - START)) s"
log "direct-kernel boot: -kernel $OUTFILE.vmlinuz -initrd $OUTFILE.initrd -append \"$CMDLINE\""
