#!/usr/bin/env bash
# Shows hax working on this machine: prepares it, builds, starts the HA side
# on the emulator backend and a few simulated m0d processes, and prints what
# happens: entrypoint requests answered, links connected, process and service
# events received, NVEC GETs answered, state changes broadcast to every peer
# and delivered. Stops everything after a while (or on Ctrl-C).
#
# Environment: HAX_DEMO_PEERS (default 3), HAX_DEMO_SECONDS (default 12).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
peers="${HAX_DEMO_PEERS:-3}"
seconds="${HAX_DEMO_SECONDS:-12}"

./scripts/setup.sh
cargo build --release -q -p hax-core --example halon_demo
cargo build --release -q -p hax-sim --bin m0d-sim

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
endpoint="inet:tcp:127.0.0.1@$port"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

echo "== HA side (emulator backend) on $endpoint"
target/release/examples/halon_demo "$endpoint" 2>&1 | sed -u 's/^/[hax] /' &
pids+=($!)
for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done

echo "== $peers simulated m0d processes for $seconds s"
target/release/m0d-sim --ha-endpoint "$endpoint" --count "$peers" --events \
    --nvec-get 0x6400000000000001:0x20,0x7200000000000001:0x3 --keepalive \
    --duration "$seconds" 2>&1 | sed -u 's/^/[m0d-sim] /'
echo "== done"
