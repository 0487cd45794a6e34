#!/usr/bin/env bash
# Installs cargo-deb, which builds the hax Debian package (scripts/package.sh),
# into the project-local folder .local/cargo-bin/ and prints the path of the
# binary. The version is pinned: the package's metadata (crates/hax-bin's
# [package.metadata.deb]) is written for it.
#
# Idempotent: a cargo-deb of the pinned version already there is used as it
# is. It is built without optimisation: under a minute of CPU instead of five
# (each clean clone in CI builds it), for a package built a few seconds
# slower (xz of the dev build the tests package: 3 s with --fast, 17 s
# without).
#
# Environment:
#   HAX_CARGO_BIN_ROOT   where to install (default: <repo>/.local/cargo-bin);
#                        a folder kept between clones saves the build
set -euo pipefail

version=3.8.0
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
root="${HAX_CARGO_BIN_ROOT:-$repo_root/.local/cargo-bin}"
binary="$root/bin/cargo-deb"

log() { echo "install-cargo-deb: $*" >&2; }

if [ -x "$binary" ] && [ "$("$binary" --version 2>/dev/null)" = "cargo-deb $version" ]; then
    log "already installed: cargo-deb $version"
    echo "$binary"
    exit 0
fi

log "building cargo-deb $version into $root"
# Its own temporary build folder, not the workspace's target directory.
env -u CARGO_TARGET_DIR cargo install --quiet --locked --force --debug \
    --version "$version" --root "$root" cargo-deb >&2
if [ "$("$binary" --version 2>/dev/null)" != "cargo-deb $version" ]; then
    log "$binary does not run as cargo-deb $version"
    exit 1
fi
echo "$binary"
