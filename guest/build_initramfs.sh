#!/bin/bash
# Build the tiny test guest: OUTDIR/vmlinuz and OUTDIR/initramfs.cpio.gz.
#
#   guest/build_initramfs.sh OUTDIR
#
# * kernel: Debian's linux-image-<version>-cloud-amd64 (the package linux-image-cloud-amd64
#   depends on), fetched with `apt-get download` and unpacked with `dpkg-deb -x`; it is never
#   installed on the host;
# * busybox: /bin/busybox of Debian's busybox-static, fetched and unpacked the same way;
# * the virtio-net modules of that kernel (virtio_ring, virtio, virtio_pci_modern_dev,
#   virtio_pci_legacy_dev, virtio_pci, failover, net_failover, virtio_net), decompressed if the
#   package ships them compressed, in dependency order (read from each module's .modinfo);
# * guest/initramfs/init and guest/initramfs/udhcpc.script (see guest/README.md).
#
# Idempotent: the .deb files are cached in OUTDIR/debs, and nothing is rebuilt when
# OUTDIR/build.stamp matches (same packages, same init, udhcpc script and build script).
# FORCE=1 rebuilds anyway. KERNEL_PKG=linux-image-... picks another kernel package.
# Needs: apt-get, apt-cache, dpkg-deb, cpio, gzip (xz/zstd only if modules are compressed).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROG=${0##*/}

die() { echo "$PROG: error: $*" >&2; exit 1; }
log() { echo "$PROG: $*" >&2; }

usage() {
    cat >&2 <<EOF
usage: $PROG OUTDIR

Builds OUTDIR/vmlinuz and OUTDIR/initramfs.cpio.gz (the busybox test guest) from Debian's
linux-image-cloud-amd64 and busybox-static packages, caching the packages in OUTDIR/debs.
Environment: FORCE=1 (rebuild), KERNEL_PKG=linux-image-<ver>-cloud-amd64 (another kernel).
EOF
    exit 2
}

[ $# -eq 1 ] || usage
case "$1" in -h | --help) usage ;; esac
OUT=$1

# The modules virtio-net needs; their dependencies are added automatically.
ROOT_MODULES=(virtio_pci virtio_net)
# ...and what the result must contain (a sanity check against a changed kernel).
EXPECTED_MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
    failover net_failover virtio_net)

for tool in apt-get apt-cache dpkg-deb cpio gzip find sha256sum; do
    command -v "$tool" >/dev/null || die "missing tool: $tool (install it with apt-get)"
done
[ -f "$HERE/initramfs/init" ] && [ -f "$HERE/initramfs/udhcpc.script" ] ||
    die "missing $HERE/initramfs/init or udhcpc.script"

mkdir -p "$OUT/debs" || die "cannot create $OUT"
OUT=$(cd "$OUT" && pwd)

# ---------------------------------------------------------------- which packages --------------
# The candidate version of a package, or "" when apt does not know it.
candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/{print $2}' | grep -v '(none)' || true; }

if [ -z "$(candidate linux-image-cloud-amd64)" ]; then
    log "apt does not know linux-image-cloud-amd64: running apt-get update"
    apt-get update -q >&2 || die "apt-get update failed"
fi
if [ -z "${KERNEL_PKG:-}" ]; then
    # the metapackage depends on exactly one linux-image-<abi>-cloud-amd64
    KERNEL_PKG=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    [ -n "$KERNEL_PKG" ] || die "cannot find the kernel package linux-image-cloud-amd64 depends on"
fi
KERNEL_VER=$(candidate "$KERNEL_PKG")
BUSYBOX_VER=$(candidate busybox-static)
[ -n "$KERNEL_VER" ] || die "apt knows no version of $KERNEL_PKG"
[ -n "$BUSYBOX_VER" ] || die "apt knows no version of busybox-static"

STAMP=$(
    echo "kernel $KERNEL_PKG $KERNEL_VER"
    echo "busybox busybox-static $BUSYBOX_VER"
    cat "${BASH_SOURCE[0]}" "$HERE/initramfs/init" "$HERE/initramfs/udhcpc.script" | sha256sum
)
if [ "${FORCE:-0}" != 1 ] && [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initramfs.cpio.gz" ] &&
    [ "$(cat "$OUT/build.stamp" 2>/dev/null)" = "$STAMP" ]; then
    log "up to date: $OUT/vmlinuz $OUT/initramfs.cpio.gz ($KERNEL_PKG $KERNEL_VER)"
    exit 0
fi

# ---------------------------------------------------------------- download (cached) -----------
# fetch PKG VERSION: prints the path of the cached .deb
fetch() {
    local pkg=$1 ver=$2 deb
    deb=$(find "$OUT/debs" -maxdepth 1 -name "${pkg}_*.deb" | while read -r f; do
        [ "$(dpkg-deb -f "$f" Version)" = "$ver" ] && echo "$f"; done | head -n1)
    if [ -z "$deb" ]; then
        log "downloading $pkg=$ver"
        # run as root without apt's _apt sandbox, which cannot write into a root-only directory
        (cd "$OUT/debs" && apt-get download -q -o APT::Sandbox::User=root "$pkg=$ver" >&2) ||
            die "apt-get download $pkg=$ver failed"
        deb=$(find "$OUT/debs" -maxdepth 1 -name "${pkg}_*.deb" | while read -r f; do
            [ "$(dpkg-deb -f "$f" Version)" = "$ver" ] && echo "$f"; done | head -n1)
        [ -n "$deb" ] || die "apt-get download did not produce ${pkg}_*.deb"
    fi
    echo "$deb"
}
KERNEL_DEB=$(fetch "$KERNEL_PKG" "$KERNEL_VER")
BUSYBOX_DEB=$(fetch busybox-static "$BUSYBOX_VER")

TMP=$(mktemp -d "${TMPDIR:-/tmp}/build_initramfs.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
log "unpacking $(basename "$KERNEL_DEB") and $(basename "$BUSYBOX_DEB")"
dpkg-deb -x "$KERNEL_DEB" "$TMP/kernel" || die "dpkg-deb -x $KERNEL_DEB failed"
dpkg-deb -x "$BUSYBOX_DEB" "$TMP/busybox" || die "dpkg-deb -x $BUSYBOX_DEB failed"

KVER=$(ls "$TMP/kernel/lib/modules" | head -n1)
[ -n "$KVER" ] && [ -f "$TMP/kernel/boot/vmlinuz-$KVER" ] || die "no kernel in $KERNEL_DEB"
MODDIR=$TMP/kernel/lib/modules/$KVER
BUSYBOX=$TMP/busybox/bin/busybox
[ -x "$BUSYBOX" ] || die "no /bin/busybox in $BUSYBOX_DEB"

# ---------------------------------------------------------------- the initramfs tree ----------
R=$TMP/root
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,root,lib/modules,var}
ln -s ../run "$R/var/run"
cp "$BUSYBOX" "$R/bin/busybox"
# one symbolic link per applet, where busybox would install it (bin/sh, sbin/udhcpc, ...)
"$BUSYBOX" --list-full | while read -r path; do
    [ "$path" = bin/busybox ] && continue
    rel=$(echo "$path" | sed 's|[^/]*/|../|g; s|[^/]*$||')   # "usr/bin/wget" -> "../../"
    ln -sf "${rel}bin/busybox" "$R/$path"
done

install -m 0755 "$HERE/initramfs/init" "$R/init"
install -m 0755 "$HERE/initramfs/udhcpc.script" "$R/udhcpc.script"
mkdir -p "$R/etc/udhcpc" && ln -s /udhcpc.script "$R/etc/udhcpc/default.script"

# a few files every program expects
echo "root:x:0:0:root:/root:/bin/sh" >"$R/etc/passwd"
echo "root:x:0:" >"$R/etc/group"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost\n' >"$R/etc/hosts"
printf 'http\t\t80/tcp\nhttps\t\t443/tcp\ndomain\t\t53/tcp\ndomain\t\t53/udp\nbootps\t\t67/udp\nbootpc\t\t68/udp\n' \
    >"$R/etc/services"
printf 'passwd: files\ngroup: files\nhosts: files dns\nservices: files\n' >"$R/etc/nsswitch.conf"
: >"$R/etc/resolv.conf"
echo guest >"$R/etc/hostname"
# the console the kernel opens for /init before /dev is mounted
mknod -m 600 "$R/dev/console" c 5 1 2>/dev/null || log "warning: cannot mknod /dev/console (not root?)"
mknod -m 666 "$R/dev/null" c 1 3 2>/dev/null || true

# ---------------------------------------------------------------- modules ---------------------
# modpath NAME: the module's file in the package (.ko, .ko.xz, .ko.zst or .ko.gz; - and _ alike)
modpath() {
    local alt=${1//_/-}
    find "$MODDIR/kernel" \( -name "$1.ko" -o -name "$1.ko.*" -o -name "$alt.ko" -o -name "$alt.ko.*" \) |
        head -n1
}
# unpack_mod NAME: an uncompressed copy in $TMP/ko/NAME.ko (runs in this shell, so die stops all)
unpack_mod() {
    local src dst=$TMP/ko/$1.ko
    [ -f "$dst" ] && return 0
    src=$(modpath "$1")
    [ -n "$src" ] || die "module $1 not found under lib/modules/$KVER of $KERNEL_DEB"
    mkdir -p "$TMP/ko"
    case "$src" in
    *.ko) cp "$src" "$dst" ;;
    *.ko.xz) xz -dc "$src" >"$dst" || die "cannot decompress $src (xz-utils installed?)" ;;
    *.ko.zst) zstd -qdc "$src" >"$dst" || die "cannot decompress $src (zstd installed?)" ;;
    *.ko.gz) gzip -dc "$src" >"$dst" || die "cannot decompress $src" ;;
    *) die "unknown module format: $src" ;;
    esac
}
# depends NAME: the modules NAME needs (the "depends=" field of its .modinfo section)
depends() { tr '\0' '\n' <"$TMP/ko/$1.ko" | sed -n 's/^depends=//p' | head -n1 | tr ',' ' '; }

ORDER=()
visit() {   # depth first: dependencies before the module itself
    local m=$1 d
    for d in "${ORDER[@]}"; do [ "$d" = "$m" ] && return 0; done
    unpack_mod "$m"
    for d in $(depends "$m"); do visit "${d//-/_}"; done
    ORDER+=("$m")
}
for m in "${ROOT_MODULES[@]}"; do visit "$m"; done
for m in "${EXPECTED_MODULES[@]}"; do
    # (no `printf | grep -q` here: with pipefail, grep's early exit makes printf's SIGPIPE fail the test)
    [[ " ${ORDER[*]} " == *" $m "* ]] || die "module $m missing from the load order (${ORDER[*]})"
done
for m in "${ORDER[@]}"; do cp "$TMP/ko/$m.ko" "$R/lib/modules/$m.ko"; done
printf '%s\n' "${ORDER[@]}" >"$R/lib/modules/load.order"
log "modules ($KVER): ${ORDER[*]}"

# ---------------------------------------------------------------- pack ------------------------
# reproducible: fixed owner and time stamps, sorted names
find "$R" -exec touch -h -d @0 {} +
(cd "$R" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet) |
    gzip -9n >"$TMP/initramfs.cpio.gz" || die "cpio failed"
cp "$TMP/kernel/boot/vmlinuz-$KVER" "$TMP/vmlinuz"

mv -f "$TMP/vmlinuz" "$OUT/vmlinuz"
mv -f "$TMP/initramfs.cpio.gz" "$OUT/initramfs.cpio.gz"
echo "$KVER" >"$OUT/kernel.release"
echo "$STAMP" >"$OUT/build.stamp"
log "built $OUT/vmlinuz ($KERNEL_PKG $KERNEL_VER) and $OUT/initramfs.cpio.gz" \
    "($(du -k "$OUT/initramfs.cpio.gz" | cut -f1) KiB, busybox $BUSYBOX_VER)"
