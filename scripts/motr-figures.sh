#!/usr/bin/env bash
# The figures of hax on real Motr (docs/motr.md, "Figures on real Motr"),
# measured the same way each time: a release hax built with the motr
# feature next to Motr's own HA listener (`m0ham -l`), then real m0ds killed
# and started again, then m0ham restarting under one process fid. Needs Motr
# in /opt/motr (scripts/install-motr.sh) and Consul (scripts/setup.sh).
#
# Environment (defaults in brackets):
#   FIG_ROUNDS          m0ham connects per listener [30]
#   FIG_LINKS           processes linked to hax at once (hax-m0peers) [100]
#   HAX_M0D_CYCLES      m0d kill/start cycles [50]
#   HAX_CHURN_ROUNDS    m0ham restarts under one fid [100]
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

export MOTR_PREFIX="${MOTR_PREFIX:-/opt/motr}"
if [ ! -e "$MOTR_PREFIX/lib/libmotr.so" ]; then
    echo "motr-figures: no Motr in $MOTR_PREFIX (scripts/install-motr.sh)" >&2
    exit 2
fi
./scripts/setup.sh >/dev/null
export HAX_CONSUL_BIN="$repo_root/.local/consul/usr/bin/consul"
motr_target="$repo_root/target/motr"

CARGO_TARGET_DIR="$motr_target" cargo build --release --locked -p hax-bin --features motr
cargo build --release --locked -p hax-e2e --bin hax-motr-figures

# Many processes' HA links from one process (tests/motr-peers).
peers="$(./scripts/build-m0peers.sh "$motr_target/hax-m0peers")"

echo "== side by side: m0ham -l and hax, ${FIG_ROUNDS:-30} connects each"
echo "   then hax with ${FIG_LINKS:-100} processes linked at once"
FIG_HAX="$motr_target/release/hax" FIG_ROUNDS="${FIG_ROUNDS:-30}" FIG_M0PEERS="$peers" \
    FIG_LINKS="${FIG_LINKS:-100}" "$repo_root/target/release/hax-motr-figures"

echo "== real m0ds killed and started again, ${HAX_M0D_CYCLES:-50} cycles"
HAX_REQUIRE_MOTR=1 HAX_M0D_CYCLES="${HAX_M0D_CYCLES:-50}" CARGO_TARGET_DIR="$motr_target" \
    cargo test --release --locked -p hax-bin --features motr --test motr_m0d_restarts \
    -- --nocapture 2>&1 | grep -E '^(cycle [0-9]+:|[0-9]+ cycles in|test result)'

echo "== m0ham restarting under one fid, ${HAX_CHURN_ROUNDS:-100} rounds"
HAX_REQUIRE_MOTR=1 HAX_CHURN_ROUNDS="${HAX_CHURN_ROUNDS:-100}" CARGO_TARGET_DIR="$motr_target" \
    cargo test --release --locked -p hax-bin --features motr --test motr_churn \
    -- --nocapture 2>&1 | grep -vE '^(motr\[|running|$)' | tail -15
