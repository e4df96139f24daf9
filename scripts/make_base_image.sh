#!/usr/bin/env bash
# Build a Debian bookworm + Python 3.11 base image without pulling anything from a registry.
#
# Used only by tests and CI (through the Dockerfile's BASE_IMAGE) on machines that cannot reach a
# registry. Users build on the public default base instead. Bookworm's python3 is 3.11, the
# version the lock is made for. The host's extra CA certificates are trusted inside the image, so
# pip can reach the package index through a TLS-intercepting proxy during `docker build`.
#
# Usage: scripts/make_base_image.sh [TAG]      (default image-classifier-base:bookworm)
# Env:   DEBIAN_MIRROR (default http://deb.debian.org/debian), FORCE=1 to rebuild an existing tag.
set -euo pipefail

tag="${1:-image-classifier-base:bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
extra_ca_dir=/usr/local/share/ca-certificates

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
for tool in docker debootstrap; do
    command -v "$tool" >/dev/null || { echo "error: $tool not found (apt-get install docker.io debootstrap)" >&2; exit 1; }
done
if [[ $(id -u) -ne 0 ]]; then
    echo "error: debootstrap needs root" >&2
    exit 1
fi
if [[ -z "${FORCE:-}" ]] && docker image inspect "$tag" >/dev/null 2>&1; then
    echo "base image $tag already exists (FORCE=1 to rebuild)"
    exit 0
fi

rootfs=$(mktemp -d /var/tmp/bookworm-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT

echo "debootstrap bookworm into $rootfs ..."
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || { tail -20 "$rootfs.log" >&2; exit 1; }
rm -f "$rootfs.log"

# Trust the host's extra CAs (copied as-is; update-ca-certificates merges them into the bundle).
shopt -s nullglob
extra_cas=("$extra_ca_dir"/*.crt)
if ((${#extra_cas[@]})); then
    cp "${extra_cas[@]}" "$rootfs$extra_ca_dir/"
    chroot "$rootfs" update-ca-certificates >/dev/null
fi

# Keep the image small and its apt lists fresh for the Dockerfile's apt-get update.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/*
echo "deb $mirror bookworm main" >"$rootfs/etc/apt/sources.list"
echo "deb $mirror bookworm-updates main" >>"$rootfs/etc/apt/sources.list"
echo "deb http://deb.debian.org/debian-security bookworm-security main" >>"$rootfs/etc/apt/sources.list"

tar -C "$rootfs" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' \
    - "$tag" >/dev/null
echo "built $tag ($(docker image inspect --format '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
