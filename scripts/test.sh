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

# Fuzz smoke run: the corpus of every fuzz target, plus a short seeded
# mutation run, through the same checks `cargo fuzz` runs (docs/reliability.md).
# fuzz/ is its own workspace; it shares this target directory.
CARGO_TARGET_DIR="$repo_root/target" cargo test --manifest-path fuzz/Cargo.toml --no-default-features
