#!/usr/bin/env bash
# Installs promtool, which checks and unit-tests the Prometheus alert rules of
# dist/ (scripts/test-dist.sh), into the project-local folder
# .local/prometheus/ and prints the path of the binary.
#
# promtool comes with Debian's `prometheus` package. That package also brings
# a Prometheus server which its installation starts, and web libraries: the
# tests need neither, so the package is only downloaded (`apt-get download`,
# from the machine's own apt sources) and unpacked with `dpkg -x`. Nothing is
# installed system-wide.
#
# Idempotent: when the binary is already there and runs, nothing is fetched.
#
# Environment:
#   HAX_PROMETHEUS_PREFIX   where to unpack (default: <repo>/.local/prometheus)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="${HAX_PROMETHEUS_PREFIX:-$repo_root/.local/prometheus}"
binary="$prefix/usr/bin/promtool"

log() { echo "install-promtool: $*" >&2; }

if [ -x "$binary" ] && "$binary" --version >/dev/null 2>&1; then
    log "already installed: $("$binary" --version 2>&1 | head -n 1)"
    echo "$binary"
    exit 0
fi

mkdir -p "$(dirname "$prefix")"
work="$(mktemp -d "$(dirname "$prefix")/.prometheus-apt.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# apt's download user must be able to write there.
chmod 0777 "$work"

download() { (cd "$work" && apt-get -q download prometheus >"$work/download.log" 2>&1); }
if ! download; then
    # A machine whose package lists were never fetched knows no prometheus.
    if [ "$(id -u)" -ne 0 ]; then
        log "apt-get download prometheus failed (run as root to update the package lists):"
        tail -n 5 "$work/download.log" >&2
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    if ! download; then
        log "apt-get download prometheus failed:"
        tail -n 5 "$work/download.log" >&2
        exit 1
    fi
fi
deb="$(ls "$work"/prometheus_*.deb)"
log "unpacking $(basename "$deb") into $prefix"
rm -rf "$prefix"
mkdir -p "$prefix"
dpkg -x "$deb" "$prefix"
# The server and its web assets are not needed.
rm -rf "$prefix/usr/bin/prometheus" "$prefix/usr/share/prometheus"

if ! "$binary" --version >/dev/null 2>&1; then
    log "$binary does not run"
    exit 1
fi
log "installed: $("$binary" --version 2>&1 | head -n 1)"
echo "$binary"
