#!/usr/bin/env bash
# Installs the Motr build kept next to the repository (../shared/motr/motr-*.tar.xz,
# see its README) under /opt/motr, with the Debian packages of the libraries it
# links, so that CI can run the real-Motr tests (docs/motr.md). Idempotent: the
# tarball's checksum is kept in /opt/motr/.hax-motr-tarball, and a matching
# install is left alone.
#
# Without a tarball this says so on stderr and exits 0: Motr is optional, the
# tests that need it are then reported as ignored.
#
# Environment:
#   HAX_MOTR_TARBALL   the tarball to install (default: the newest
#                      <repo>/../shared/motr/motr-*.tar.xz)
#
# Exit status: 0 when Motr is installed or no tarball is there, 1 when an
# install was attempted and failed.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/debian-packages.sh"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The prefix the build was configured with (motr.pc and the tools name it).
prefix=/opt/motr
marker="$prefix/.hax-motr-tarball"

log() { echo "install-motr: $*" >&2; }

tarball="${HAX_MOTR_TARBALL:-}"
if [ -n "$tarball" ] && [ ! -r "$tarball" ]; then
    log "Motr is NOT available: HAX_MOTR_TARBALL=$tarball is not a readable file"
    exit 1
fi
if [ -z "$tarball" ]; then
    tarball="$(ls -1t "$repo_root"/../shared/motr/motr-*.tar.xz 2>/dev/null | head -n 1 || true)"
fi
if [ -z "$tarball" ] || [ ! -r "$tarball" ]; then
    if [ -f "$marker" ] && [ -e "$prefix/lib/libmotr.so" ]; then
        log "no Motr tarball (${tarball:-none found in $repo_root/../shared/motr}); keeping the Motr installed in $prefix"
        exit 0
    fi
    log "Motr is NOT available: no tarball (${tarball:-none found in $repo_root/../shared/motr/motr-*.tar.xz}; set HAX_MOTR_TARBALL)."
    log "the real-Motr tests will be reported as ignored"
    exit 0
fi

# The libraries libmotr.so and the Motr tools link (the tarball's README),
# and libisal-dev: Motr's installed headers include <isa-l.h>
# (sns/parity_ops.h), which hax-sys's glue pulls in.
packages=(libaio1 libyaml-0-2 libuuid1 libisal2 libssl3 libfabric1 libatomic1 libisal-dev)
ensure_packages "Motr is NOT available" "${packages[@]}" || exit 1

sum="$(sha256sum "$tarball" | cut -d' ' -f1)"
want="$(basename "$tarball") $sum"
if [ -f "$marker" ] && [ "$(cat "$marker")" = "$want" ] && [ -e "$prefix/lib/libmotr.so" ]; then
    log "already installed in $prefix: $(basename "$tarball")"
else
    if [ ! -w "$(dirname "$prefix")" ]; then
        log "Motr is NOT available: $(dirname "$prefix") is not writable (run as root to install $tarball)"
        exit 1
    fi
    log "installing $(basename "$tarball") into $prefix"
    # Unpacked beside the prefix and moved in place, so that an interrupted
    # install never leaves a half-written prefix with a marker.
    work="$(mktemp -d "$(dirname "$prefix")/.motr-install.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    tar -xJf "$tarball" -C "$work"
    if [ ! -e "$work/motr/lib/libmotr.so" ]; then
        log "Motr is NOT available: $tarball holds no motr/lib/libmotr.so"
        exit 1
    fi
    echo "$want" >"$work/motr/.hax-motr-tarball"
    rm -rf "$prefix"
    mv "$work/motr" "$prefix"
fi

# Every library libmotr.so and m0d need must resolve, or the tests fail in
# ways far from the cause.
unresolved="$(LD_LIBRARY_PATH="$prefix/lib" ldd "$prefix/lib/libmotr.so" "$prefix/bin/m0d" 2>&1 | grep 'not found' | sort -u || true)"
if [ -n "$unresolved" ]; then
    log "Motr is NOT usable: libraries not found:"
    echo "$unresolved" >&2
    exit 1
fi
log "Motr ready in $prefix ($(basename "$tarball"))"
