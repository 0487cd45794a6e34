#!/usr/bin/env bash
# Runs every check and test of hax: formatting, clippy, the whole test suite
# (unit, contract, compile-fail, Consul and end-to-end tests, the alert rules
# and dashboard with promtool) on the emulator backend, and, when Motr is
# installed in /opt/motr (scripts/install-motr.sh), every real-Motr test on
# it; then the Debian package, built on Motr when it is installed
# (scripts/test-package.sh). This is what CI runs.
#
# Environment:
#   HAX_REQUIRE_MOTR=1   fail when Motr is not installed, instead of leaving
#                        the real-Motr tests ignored
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

motr_prefix=/opt/motr
require_motr="${HAX_REQUIRE_MOTR:-}"
# The emulator build must not see it: it would stop the real-Motr tests'
# build (they need the motr feature), which is for the Motr run below.
unset HAX_REQUIRE_MOTR

./scripts/setup.sh
# A build from a clean clone gains nothing from incremental state, which is
# 4.5 GB there and written all along the build.
export CARGO_INCREMENTAL=0
export HAX_CONSUL_BIN="$repo_root/.local/consul/usr/bin/consul"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The end-to-end tests run the hax binary this build makes, named to them:
# left to find it, each brings it up to date with a build of hax-bin alone,
# whose features differ from the workspace's (its dependencies rebuilt, a
# minute and more).
cargo test --workspace --locked --no-run
HAX_BIN="${CARGO_TARGET_DIR:-$repo_root/target}/debug/hax" cargo test --workspace --locked

# The library crates as their users get them (docs/releasing.md): docs with no
# warning (broken links, missing docs), and each crate built from its packaged
# sources alone. Offline: the build above fetched every dependency.
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked -p hax-sys -p hax-core -p hax-consul
# cargo verifies each crate against the others' packaged sources through a
# registry of its own under target/package, extracted once into
# $CARGO_HOME/registry/src/-<hash of that path>/: a copy an earlier run left
# for the same path and version would stand in for the new sources.
rm -rf "${CARGO_HOME:-$HOME/.cargo}"/registry/src/-*/hax-{sys,core,consul}-[0-9]*
cargo package --offline --locked --allow-dirty -p hax-sys -p hax-core -p hax-consul

# Fuzz smoke run: the corpus of every fuzz target, plus a short seeded
# mutation run, through the same checks `cargo fuzz` runs (docs/reliability.md).
# fuzz/ is its own workspace; it shares this target directory.
CARGO_TARGET_DIR="$repo_root/target" cargo test --manifest-path fuzz/Cargo.toml --no-default-features

# Real Motr (docs/motr.md): every tests/motr_*.rs of the workspace, built with
# the motr feature in a target directory of its own (the same crates built with
# and without the feature would otherwise rebuild each other).
if [ ! -e "$motr_prefix/lib/libmotr.so" ]; then
    if [ "$require_motr" = 1 ]; then
        echo "test: HAX_REQUIRE_MOTR=1 but Motr is not installed in $motr_prefix (scripts/install-motr.sh)" >&2
        exit 1
    fi
    echo "test: real-Motr tests NOT run: Motr is not installed in $motr_prefix (scripts/install-motr.sh); they are reported as ignored above" >&2
    # The package on the emulator backend, from the build above.
    CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo_root/target}" ./scripts/test-package.sh
    exit 0
fi

packages=()
targets=()
for f in crates/*/tests/motr_*.rs; do
    pkg="$(basename "$(dirname "$(dirname "$f")")")"
    [[ " ${packages[*]} " == *" $pkg "* ]] || packages+=("$pkg")
    targets+=("$(basename "$f" .rs)")
done
# Many processes' HA links from one process, for the tests that need more
# peers than m0ds are practical for.
export HAX_M0PEERS
HAX_M0PEERS="$(MOTR_PREFIX="$motr_prefix" ./scripts/build-m0peers.sh "$repo_root/target/motr/hax-m0peers")"
log="$repo_root/target/motr/real-motr-tests.log"
mkdir -p "$(dirname "$log")"
echo "test: real-Motr tests on $motr_prefix: ${targets[*]}" >&2
start=$SECONDS
status=0
# --no-fail-fast: one failing test binary must not hide how the others did.
CARGO_TARGET_DIR="$repo_root/target/motr" MOTR_PREFIX="$motr_prefix" HAX_REQUIRE_MOTR=1 \
    cargo test --locked --no-fail-fast --features motr \
    "${packages[@]/#/--package=}" "${targets[@]/#/--test=}" 2>&1 | tee "$log" || status=$?

# One line per test binary, then the totals. A test ignored here is one that
# runs on the emulator backend only (each says why).
awk -v secs="$((SECONDS - start))" -v logfile="$log" '
    /^ *Running tests\/motr_.*\.rs/ { bin = $2; sub(/^tests\//, "", bin); sub(/\.rs$/, "", bin) }
    /^test .* \.\.\. ignored/ { sub(/^test /, ""); ign = ign "\n    ignored: " $0 }
    /^test result:/ {
        p = $0; sub(/.*result: [A-Za-z]*\. /, "", p); split(p, n, /[;.] /)
        passed += n[1] + 0; failed += n[2] + 0; ignored += n[3] + 0
        t = $0; sub(/.*finished in /, "", t)
        printf "  %-14s %s\n", bin, p
        bins++
    }
    END {
        printf "test: real-Motr tests: %d ran, %d passed, %d failed, %d ignored, in %d test binaries, %d s (build included); log %s%s\n",
            passed + failed, passed, failed, ignored, bins, secs, logfile, ign
    }
' "$log" >&2
if [ "$status" -ne 0 ]; then
    echo "test: real-Motr tests FAILED (status $status); see $log" >&2
fi
# The package on the motr backend, from the build of the real-Motr tests.
package_status=0
CARGO_TARGET_DIR="$repo_root/target/motr" MOTR_PREFIX="$motr_prefix" ./scripts/test-package.sh || package_status=$?
[ "$status" -ne 0 ] || status="$package_status"
exit "$status"
