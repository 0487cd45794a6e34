#!/usr/bin/env bash
# Runs every check and test of hax: formatting, clippy, the whole test suite
# (unit, contract, compile-fail, Consul and end-to-end tests). This is what CI
# runs.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

./scripts/setup.sh
export HAX_CONSUL_BIN="$repo_root/.local/consul/usr/bin/consul"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
