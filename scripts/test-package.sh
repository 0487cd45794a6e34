#!/usr/bin/env bash
# Tests the Debian package: builds it with scripts/package.sh from the build
# the test suite has made (profile dev, stripped, fast compression: what is
# checked is what the package holds and says, not how fast its binary runs),
# unpacks it into a scratch root with `dpkg -x` and checks
#   - the files: daemon, unit, system user, conffile, man page, completions,
#     documentation, dashboard and alert rules;
#   - /etc/hax/hax.toml listed in DEBIAN/conffiles;
#   - the unit: `systemd-analyze verify` in the scratch root clean (its
#     ExecStart binary and its Documentation= man page found there),
#     RestartPreventExitStatus=2, WatchdogSec, Documentation= naming only
#     files the package installs;
#   - the packaged hax runs, accepts the packaged configuration, and names
#     the backend the package's description names.
# Prints "test-package: N passed, N failed"; exits 1 on a failure.
#
# Environment: as scripts/package.sh (CARGO_TARGET_DIR picks the build:
# target/motr for the motr backend, as scripts/test.sh builds it).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
. scripts/debian-packages.sh
# dpkg-shlibdeps (the package's dependencies), systemd-analyze, and man,
# with which systemd-analyze checks a Documentation=man: page.
ensure_packages "test-package" dpkg-dev systemd man-db || exit 1

start=$SECONDS
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# The dev profile is the build the tests made: a release build would take
# minutes of CI. cargo-deb warns that it means dev builds to be refused one
# day; the pinned version takes them.
deb="$(scripts/package.sh --profile dev --strip --fast --output "$work")"
echo "test-package: built $(basename "$deb") ($(du -k "$deb" | cut -f1) KiB) in $((SECONDS - start)) s" >&2

passed=0
failed=0
check() {
    local what="$1"
    shift
    if "$@"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "test-package: FAILED: $what" >&2
    fi
}

root="$work/root"
mkdir -p "$root" "$work/control"
dpkg -x "$deb" "$root"
dpkg-deb -e "$deb" "$work/control"
unit="$root/usr/lib/systemd/system/hax.service"

for f in usr/bin/hax usr/lib/systemd/system/hax.service usr/lib/sysusers.d/hax.conf \
    etc/hax/hax.toml usr/share/man/man8/hax.8.gz \
    usr/share/bash-completion/completions/hax usr/share/zsh/vendor-completions/_hax \
    usr/share/fish/vendor_completions.d/hax.fish \
    usr/share/doc/hax/operations.md usr/share/doc/hax/copyright \
    usr/share/hax/grafana-dashboard.json usr/share/hax/prometheus-alerts.yml; do
    check "$f in the package" test -s "$root/$f"
done
check "usr/bin/hax executable" test -x "$root/usr/bin/hax"
check "the packaged configuration is dist/hax.toml" cmp -s "$root/etc/hax/hax.toml" dist/hax.toml
check "the packaged unit is dist/hax.service" cmp -s "$unit" dist/hax.service
check "/etc/hax/hax.toml is a conffile" grep -qx /etc/hax/hax.toml "$work/control/conffiles"
# hax needs its cluster configured first (Consul, the hax service): the
# operator enables it; an upgrade restarts it only if it runs.
check "the unit is not started on install" bash -c '! grep -q "deb-systemd-invoke start" "$1"' _ "$work/control/postinst"
check "the system user is created on install" grep -q "systemd-sysusers .*hax.conf" "$work/control/postinst"
check "the man page documents the options" bash -c 'zcat "$1" | grep -qF "motr\-keepalive\-interval\-ms"' _ "$root/usr/share/man/man8/hax.8.gz"
check "bash completes the options" grep -q -- "--check-config" "$root/usr/share/bash-completion/completions/hax"

# The unit.
check "RestartPreventExitStatus=2" grep -qx "RestartPreventExitStatus=2" "$unit"
check "WatchdogSec set" grep -Eqx "WatchdogSec=[1-9][0-9]*" "$unit"
check "ExecStart runs the packaged binary" grep -q "^ExecStart=/usr/bin/hax --config /etc/hax/hax.toml$" "$unit"
docs="$(sed -n 's/^Documentation=//p' "$unit")"
check "Documentation= set" test -n "$docs"
for d in $docs; do
    case "$d" in
        man:*)
            page="${d#man:}"
            name="${page%(*}"
            section="${page#*(}"
            section="${section%)}"
            check "Documentation=$d installed" test -s "$root/usr/share/man/man$section/$name.$section.gz"
            ;;
        file://*) check "Documentation=$d installed" test -s "$root${d#file://}" ;;
        *) check "Documentation=$d is an installed man page or file" false ;;
    esac
done
# systemd-analyze needs the units hax.service depends on in the root: the
# host's (which the package does not replace).
for u in /usr/lib/systemd/system/*; do
    [ -e "$root/usr/lib/systemd/system/$(basename "$u")" ] || cp -a "$u" "$root/usr/lib/systemd/system/"
done
verify="$(MANPATH="$root/usr/share/man" systemd-analyze verify --root="$root" /usr/lib/systemd/system/hax.service 2>&1)" || verify="$verify (exit $?)"
# Warnings (an unknown or unparsable setting) fail too.
check "systemd-analyze verify is clean${verify:+: $verify}" test -z "$verify"

# The packaged binary. libmotr is found where the motr build found it.
motr_lib="${MOTR_PREFIX:-/opt/motr}/lib"
hax() { LD_LIBRARY_PATH="$motr_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$root/usr/bin/hax" "$@"; }
version="$(hax --version 2>&1)" || version="does not run: $version"
backend="$(sed -n 's/.*(backend: \([a-z]*\)).*/\1/p' <<<"$version")"
check "the packaged hax names its backend ($version)" test -n "$backend"
description="$(dpkg-deb -f "$deb" Description)"
check "the package's description names backend $backend" grep -q "(backend: $backend)" <<<"$description"
depends="$(dpkg-deb -f "$deb" Depends)"
check "the package depends on the C library ($depends)" grep -q "libc6" <<<"$depends"
accepts_config() { hax --config "$root/etc/hax/hax.toml" --check-config >/dev/null; }
check "the packaged hax accepts the packaged configuration" accepts_config
status=0
hax --config "$root/etc/hax/hax.toml" --limits-event-queue 0 --check-config >/dev/null 2>&1 || status=$?
check "a configuration error exits 2 (status $status), which the unit does not restart" test "$status" -eq 2

echo "test-package: $((SECONDS - start)) s, the package's build included" >&2
echo "test-package: $passed passed, $failed failed" >&2
[ "$failed" -eq 0 ]
