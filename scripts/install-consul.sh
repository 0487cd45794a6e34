#!/usr/bin/env bash
# Installs a Consul agent binary into the project-local folder .local/consul/
# and prints the path of the binary.
#
# Debian bookworm ships no `consul` package, but bullseye's (1.8.x) runs fine on
# it. The package is fetched from the Debian mirror this machine is already
# configured to use (read from its apt sources), with a private apt state so the
# machine's own apt configuration is left untouched, then unpacked with
# `dpkg -x`. Nothing is installed system-wide and root is not required.
#
# Idempotent: when the binary is already there and runs, nothing is fetched.
#
# Environment:
#   HAX_CONSUL_PREFIX   where to unpack (default: <repo>/.local/consul)
#   HAX_DEBIAN_MIRROR   Debian mirror URI to use instead of the configured ones
#   HAX_CONSUL_SUITE    Debian suite to take the package from (default: bullseye)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="${HAX_CONSUL_PREFIX:-$repo_root/.local/consul}"
suite="${HAX_CONSUL_SUITE:-bullseye}"
binary="$prefix/usr/bin/consul"

log() { echo "install-consul: $*" >&2; }

if [ -x "$binary" ] && "$binary" version >/dev/null 2>&1; then
    log "already installed: $("$binary" version | head -n 1)"
    echo "$binary"
    exit 0
fi

for tool in apt-get dpkg; do
    command -v "$tool" >/dev/null 2>&1 || { log "$tool is required (a Debian system)"; exit 1; }
done

# The codename of the running release, so that only the main Debian archive
# entries are picked (not the security archive, nor third-party repositories).
codename=""
if [ -r /etc/os-release ]; then
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
fi

# Mirror URIs from the machine's apt sources: deb822 `.sources` files and the
# one-line `sources.list` format.
mirrors() {
    if [ -n "${HAX_DEBIAN_MIRROR:-}" ]; then
        echo "$HAX_DEBIAN_MIRROR"
        return
    fi
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        # One stanza per blank-line separated paragraph; keep the URIs of
        # stanzas of type deb whose suites include the running codename.
        awk -v want="$codename" '
            function flush() {
                if (types ~ /(^|[ \t])deb([ \t]|$)/ && (want == "" || suites ~ ("(^|[ \t])" want "([ \t]|$)")))
                    print uris
                types = ""; suites = ""; uris = ""
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            tolower($1) == "types:"  { sub(/^[^:]*:[ \t]*/, ""); types = $0; next }
            tolower($1) == "suites:" { sub(/^[^:]*:[ \t]*/, ""); suites = $0; next }
            tolower($1) == "uris:"   { sub(/^[^:]*:[ \t]*/, ""); uris = $0; next }
            END { flush() }
        ' "$f" | tr ' \t' '\n\n'
    done
    local list
    for list in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -r "$list" ] || continue
        # deb [options] URI suite components...
        awk -v want="$codename" '
            $1 != "deb" { next }
            {
                i = 2
                if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                if (want == "" || $(i + 1) == want) print $i
            }
        ' "$list"
    done
}

mapfile -t candidates < <(mirrors | grep -E '^(https?|file)://' | awk '!seen[$0]++')
if [ "${#candidates[@]}" -eq 0 ]; then
    log "no Debian mirror found in /etc/apt/sources.list{,.d}; set HAX_DEBIAN_MIRROR"
    exit 1
fi

keyring=/usr/share/keyrings/debian-archive-keyring.gpg
if [ ! -r "$keyring" ]; then
    log "$keyring is missing (package debian-archive-keyring)"
    exit 1
fi

mkdir -p "$(dirname "$prefix")"
work="$(mktemp -d "$(dirname "$prefix")/.consul-apt.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/state/lists/partial" "$work/cache/archives/partial" "$work/parts" "$work/pkg"
: >"$work/status"

apt_opts=(
    -o "Dir::Etc::SourceParts=$work/parts"
    -o "Dir::Etc::SourceList=$work/sources.list"
    -o "Dir::State=$work/state"
    -o "Dir::State::Lists=$work/state/lists"
    -o "Dir::State::status=$work/status"
    -o "Dir::Cache=$work/cache"
    -o "Debug::NoLocking=1"
    -o "APT::Sandbox::User=root"
)

deb=""
for mirror in "${candidates[@]}"; do
    log "trying suite $suite from the configured mirror $mirror"
    echo "deb [signed-by=$keyring] $mirror $suite main" >"$work/sources.list"
    if ! apt-get "${apt_opts[@]}" -q update >"$work/update.log" 2>&1; then
        log "apt-get update failed for $mirror:"
        tail -n 5 "$work/update.log" >&2
        continue
    fi
    if (cd "$work/pkg" && apt-get "${apt_opts[@]}" -q download consul >"$work/download.log" 2>&1); then
        deb="$(ls "$work"/pkg/consul_*.deb 2>/dev/null | head -n 1)"
        [ -n "$deb" ] && break
    fi
    log "apt-get download consul failed for $mirror:"
    tail -n 5 "$work/download.log" >&2
done

if [ -z "$deb" ]; then
    log "could not download the consul package of $suite from any configured mirror"
    exit 1
fi

log "unpacking $(basename "$deb") into $prefix"
rm -rf "$prefix"
mkdir -p "$prefix"
dpkg -x "$deb" "$prefix"

if ! "$binary" version >/dev/null 2>&1; then
    log "$binary does not run"
    exit 1
fi
log "installed: $("$binary" version | head -n 1)"
echo "$binary"
