#!/usr/bin/env bash
# Shows hax working on this machine: prepares it (Debian packages, a local
# Consul), builds, then runs the whole bridge on loopback:
#   - a Consul dev agent whose watches POST to hax,
#   - a small sample cluster description loaded into it,
#   - `hax` on the emulator backend,
#   - simulated m0d processes (`m0d-sim`),
# and prints what happens: entrypoints answered, events written to Consul, a
# failure seen by Consul and broadcast to every process. Ends by itself.
#
# Environment: HAX_DEMO_PEERS (default 3), HAX_DEMO_KEEP (keep the work dir).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
peers="${HAX_DEMO_PEERS:-3}"

./scripts/setup.sh
echo "== building"
cargo build --release -q -p hax-bin -p hax-sim -p hax-testkit
bin="$repo_root/target/release"
consul="$repo_root/.local/consul/usr/bin/consul"

work="$(mktemp -d -t hax-demo.XXXXXX)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "${HAX_DEMO_KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

port_is_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 20000))
        port_is_free "$p" && { echo "$p"; return; }
    done
}
wait_port() {
    for _ in $(seq 100); do port_is_free "$1" || return 0; sleep 0.1; done
    echo "nothing listens on port $1" >&2
    return 1
}
say() { printf '\n== %s\n' "$*"; }

http=$(free_port); hax_port=$(free_port); consul_http=$(free_port); first_port=$(free_port)
export CONSUL_HTTP_ADDR="127.0.0.1:$consul_http"
cat >"$work/watches.json" <<JSON
{
  "watches": [
    {"type": "service", "service": "ios", "handler_type": "http",
     "http_handler_config": {"path": "http://127.0.0.1:$http/", "method": "POST", "timeout": "10s"}},
    {"type": "keyprefix", "prefix": "bq/", "handler_type": "http",
     "http_handler_config": {"path": "http://127.0.0.1:$http/watcher/bq", "method": "POST", "timeout": "10s"}}
  ]
}
JSON

say "Consul dev agent on $CONSUL_HTTP_ADDR"
"$consul" agent -dev -node demo -bind 127.0.0.1 -client 127.0.0.1 -http-port "$consul_http" \
    -dns-port -1 -grpc-port -1 -serf-lan-port "$(free_port)" -serf-wan-port "$(free_port)" \
    -server-port "$(free_port)" -config-file "$work/watches.json" >"$work/consul.log" 2>&1 &
pids+=($!)
wait_port "$consul_http"
until "$consul" info 2>/dev/null | grep -q 'leader = true'; do sleep 0.2; done

say "sample cluster: hax, a confd, $peers ioservices, each with a disk"
"$bin/hax-sample-cluster" --consul-address "$CONSUL_HTTP_ADDR" load \
    --hax-endpoint "inet:tcp:127.0.0.1@$hax_port" --hax-http-port "$http" \
    --ioservices "$peers" --first-port "$first_port"

say "hax (emulator backend) on inet:tcp:127.0.0.1@$hax_port, HTTP on 127.0.0.1:$http"
# Output through a process substitution, not a pipe: `$!` is then hax's own
# pid, which the cleanup signals (a pipe's `$!` is sed's, and hax ran on).
"$bin/hax" --consul-address "$CONSUL_HTTP_ADDR" --http-bind "127.0.0.1:$http" \
    --log 'info,hax_glue=warn' > >(sed -u 's/^/[hax] /') 2>&1 &
pids+=($!)
wait_port "$http"

say "$peers simulated m0d ioservices connect, send their start events, ask for states"
"$bin/m0d-sim" --ha-endpoint "inet:tcp:127.0.0.1@$hax_port" --count "$peers" --fid-base 20 \
    --events --nvec-get '0x6400000000000001:0xc8,0x7200000000000001:0x14' --duration 8 \
    2>&1 | sed -u 's/^/[m0d-sim] /' &
sim=$!
pids+=($sim)
sleep 3

say "process states hax wrote to Consul"
"$consul" kv get -recurse processes/

say "Consul sees ioservice 0x15 fail (its health check goes critical)"
"$bin/hax-sample-cluster" --consul-address "$CONSUL_HTTP_ADDR" set-check 21 critical
sleep 2
say "the failure as recorded in Consul, and broadcast to every process (see [m0d-sim] above)"
"$consul" kv get processes/0x7200000000000001:0x15
"$consul" kv get -recurse bq/ | tail -n 3

say "the cluster as hax status shows it (what hctl status shows, with the BQ offsets and the links)"
"$bin/hax" --http-bind "127.0.0.1:$http" status

wait "$sim" || true
say "hax metrics"
curl -fsS "http://127.0.0.1:$http/metrics" 2>/dev/null | grep -v '^#' | grep -v ' 0$' ||
    echo "(curl not installed: see http://127.0.0.1:$http/metrics)"
say "done"
