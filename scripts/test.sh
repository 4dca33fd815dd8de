#!/usr/bin/env bash
# Sets everything up and runs every test: lint, native unit and property tests, bounded fuzzing
# of the parsers, the Worker build and a dry-run deploy, both wasm32-wasip2 components checked
# against their WIT worlds, then the end-to-end tests (standard behaviour and the hostile-input
# suite, the ndjson and influx sinks) under real workerd and real wasmtime serve against the
# real collector and a real InfluxDB, and the spin flavour under real Spin when a Spin CLI is
# there (SPIN=..., else ../shared/tools/spin; the command says plainly when it is not).
set -euo pipefail
cd "$(dirname "$0")/.."
# .tools/python: the Python tools' virtual environment (scripts/setup.sh).
export PATH="$PWD/.tools/python/bin:$HOME/.cargo/bin:$PATH" WRANGLER_SEND_METRICS=false NO_COLOR=1
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

scripts/setup.sh

say "set-up on a Python with no pip of its own (as a stock Debian/Ubuntu has, PEP 668): the Python tools land in a fresh virtual environment"
nopip="$(mktemp -d)"
python3 -m venv --without-pip "$nopip/python"
if "$nopip/python/bin/python" -m pip --version >/dev/null 2>&1; then echo "that Python has pip" >&2; exit 1; fi
PATH="${PATH//$PWD\/.tools\/python\/bin:/}" PYTHON="$nopip/python/bin/python" PYTHON_TOOLS="$nopip/tools" scripts/setup.sh python
"$nopip/tools/bin/schemathesis" --version && "$nopip/tools/bin/wasm-tools" --version
rm -rf "$nopip"

say "format and lint (native, wasm32-unknown-unknown, wasm32-wasip2 in both flavours), and the docs' links"
python3 scripts/check-links.py
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy --all-targets --target wasm32-unknown-unknown -- -D warnings
cargo clippy --all-targets --target wasm32-wasip2 -- -D warnings
cargo clippy --all-targets --target wasm32-wasip2 --features spin -- -D warnings

say "unit and property tests (native core and collector)"
cargo test --workspace

say "fuzz targets: lint, replay saved regressions, then 15 s of fuzzing per parser"
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
cargo clippy --manifest-path fuzz/Cargo.toml --all-targets -- -D warnings
scripts/fuzz.sh 15

say "build the Worker and check that production deploys (wrangler deploy --dry-run runs the [build])"
rm -rf dist
node_modules/.bin/wrangler deploy --dry-run --env production --outdir dist > target/deploy-dry-run.log 2>&1 || { cat target/deploy-dry-run.log; exit 1; }
grep -E "Total Upload|env\.BATCHER " target/deploy-dry-run.log
compgen -G "dist/*.wasm" > /dev/null && compgen -G "dist/*.js" > /dev/null && test -s build/entry.mjs

say "build both Spin / wasi:http components and check their imports against wit/"
scripts/build-components.sh

cargo build -p edge-enrich-collector
say "end-to-end under wasmtime serve (portable component; instance reuse on and off)"
cargo test --test e2e_wasmtime -- --ignored --test-threads=1
say "end-to-end under workerd (wrangler dev) against the reference collector"
cargo test --test e2e_workers -- --ignored --test-threads=1

# Spin is on no package registry: use $SPIN, else the CLI this workplace provides beside the
# checkout. Without either, say so: the spin flavour's end-to-end suite did not run.
SPIN="${SPIN:-}"
[[ -z "$SPIN" && -x ../shared/tools/spin ]] && SPIN="$(cd ../shared/tools && pwd)/spin"
if [[ -n "$SPIN" ]]; then
  say "end-to-end under real Spin ($("$SPIN" --version)): the spin flavour against the reference collector"
  SPIN="$SPIN" cargo test --test e2e_spin -- --ignored --test-threads=1
else
  say "SKIPPED: the spin flavour's end-to-end suite (tests/e2e_spin.rs): no Spin CLI (set SPIN=/path/to/spin)"
fi
