#!/usr/bin/env bash
# Builds the hax Debian package with cargo-deb (crates/hax-bin's
# [package.metadata.deb]) and prints the path of the .deb. The package holds
# the daemon, its systemd unit and system user, /etc/hax/hax.toml (a
# conffile), the man page and the bash, zsh and fish completions made from
# the command line (crate hax-dist), the Grafana dashboard and the Prometheus
# alert rules, and the operator's guide (docs/operations.md, "Package").
#
# It is built on the motr backend when Motr is installed (libmotr in
# $MOTR_PREFIX, /opt/motr by default; scripts/install-motr.sh), on the
# emulator otherwise; its description says which, as `hax --version` does.
#
# Usage: scripts/package.sh [--profile PROFILE] [CARGO-DEB OPTION...]
#   --profile   Cargo profile to build and package (default: release)
#   the rest goes to `cargo deb` (e.g. --fast, --strip, --output DIR)
#
# Environment:
#   HAX_PACKAGE_BACKEND   motr or emulator, instead of the guess above
#   MOTR_PREFIX           where Motr is installed (default: /opt/motr)
#   CARGO_TARGET_DIR      as for cargo
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
log() { echo "package: $*" >&2; }

profile=release
if [ "${1:-}" = "--profile" ]; then
    profile="${2:?--profile needs a profile}"
    shift 2
fi
motr_prefix="${MOTR_PREFIX:-/opt/motr}"
backend="${HAX_PACKAGE_BACKEND:-}"
if [ -z "$backend" ]; then
    if [ -e "$motr_prefix/lib/libmotr.so" ]; then backend=motr; else backend=emulator; fi
fi
build=(--locked -p hax-bin -p hax-dist --profile "$profile")
deb=(deb -p hax-bin --no-build --profile "$profile" --locked)
case "$backend" in
    motr)
        export MOTR_PREFIX="$motr_prefix"
        build+=(--features hax-bin/motr)
        deb+=(--variant motr)
        ;;
    emulator) ;;
    *) log "HAX_PACKAGE_BACKEND must be motr or emulator, not $backend"; exit 2 ;;
esac

cargo_deb="$("$repo_root/scripts/install-cargo-deb.sh")"
target_dir="$(cargo metadata --format-version 1 --no-deps --locked | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
case "$profile" in
    dev) profile_dir=debug ;;
    *) profile_dir="$profile" ;;
esac
out="$target_dir/$profile_dir"

log "building hax ($backend backend, profile $profile)"
cargo build "${build[@]}" >&2
rm -rf "$out/dist"
"$out/hax-dist" "$out/dist" >/dev/null
# Debian compresses man pages; cargo-deb leaves built files as they are.
gzip -9n "$out/dist/man/"*.8
# The binary's own word for its backend must be the one the package says.
if ! version="$(LD_LIBRARY_PATH="$motr_prefix/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$out/hax" --version)"; then
    log "$out/hax does not run"
    exit 1
fi
case "$version" in
    *"(backend: $backend)") ;;
    *) log "$out/hax says '$version', not backend $backend"; exit 1 ;;
esac
log "packaging $version"
"$cargo_deb" "${deb[@]}" "$@" | tail -n 1
