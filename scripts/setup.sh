#!/usr/bin/env bash
# Prepares a Debian machine to build and test hax: the Debian packages the
# build and the tests need, and a local Consul agent binary. Idempotent; run as
# root on a fresh machine (package installation needs it).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/debian-packages.sh"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { echo "setup: $*" >&2; }

if ! command -v cargo >/dev/null 2>&1; then
    log "no Rust toolchain: install one with rustup (stable, 1.85 or newer), then run this again"
    exit 1
fi

# gcc and make build the C emulator; libclang-dev lets the bindings test
# regenerate src/bindings.rs; pkg-config finds libmotr for feature `motr`;
# procps gives the tests ps/pgrep for leak checks; dpkg-dev (dpkg-shlibdeps),
# systemd (systemd-analyze) and man-db serve the package and its test
# (scripts/package.sh, scripts/test-package.sh).
packages=(gcc make libclang-dev pkg-config procps dpkg-dev systemd man-db)
ensure_packages "setup" "${packages[@]}" || exit 1

"$repo_root/scripts/install-consul.sh" >/dev/null
# promtool for the tests of the alert rules and dashboard (tests/tests/dist.rs).
# (cargo-deb, minutes to build, is installed by scripts/package.sh when it
# first needs it.)
"$repo_root/scripts/install-promtool.sh" >/dev/null
# Motr for the real-Motr tests, when its build is next to the repository
# (../shared/motr); says on stderr when it is not.
"$repo_root/scripts/install-motr.sh"
log "ready"
