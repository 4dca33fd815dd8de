#!/usr/bin/env bash
# The bench command: installs what it needs, builds release artifacts (edge-enrich and its
# peers), then runs `cargo xtask bench`, which prints one table and writes bench/results.json.
#   scripts/bench.sh [--duration SECONDS] [--connections 100,10] [--only core|sizes|workers|workerd|wrangler-dev|wasmtime|spin|fleet]
# Loopback only; each load run is bounded by --duration (default 20 s). About 15 minutes in all.
# The spin section runs under a real Spin CLI ($SPIN, else ../shared/tools/spin) and is skipped,
# saying so, without one.
set -euo pipefail
cd "$(dirname "$0")/.."
# .tools/python: the Python tools' virtual environment (scripts/setup.sh).
export PATH="$PWD/.tools/python/bin:$HOME/.cargo/bin:$PATH" WRANGLER_SEND_METRICS=false NO_COLOR=1
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

OHA_VERSION=1.16.0
scripts/setup.sh workers wasmtime
rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
oha --version 2>/dev/null | grep -qF "$OHA_VERSION" || { say "cargo install oha $OHA_VERSION"; cargo install oha --version "$OHA_VERSION" --locked; }

say "build release artifacts"
scripts/build-worker.sh
scripts/build-worker.sh bench/peers/hello
scripts/build-components.sh
cargo build --profile component -p hello-peer --target wasm32-wasip2
cargo build --release -p edge-enrich-collector
cargo build --release --example hot_path
cargo build --release --example hot_path --target wasm32-wasip1
say "criterion (native core)"
cargo bench --bench core -- --noplot 2>&1 | grep -E "^core/|time:|thrpt:" || true

export EDGE_ENRICH_COLLECTOR_BIN="$PWD/target/release/edge-enrich-collector"
[[ -z "${SPIN:-}" && -x ../shared/tools/spin ]] && export SPIN="$(cd ../shared/tools && pwd)/spin"
say "cargo xtask bench $*"
cargo xtask bench "$@"
