#!/usr/bin/env bash
# Builds the Worker (build/index.js + build/index_bg.wasm, and for edge-enrich the entry module
# build/entry.mjs from src/hosts/workers/entry.mjs) with worker-build, pointing it at
# tools installed from package registries instead of its own GitHub downloads.
# wrangler.toml's [build] command runs this, so a plain `npx wrangler dev` builds too.
#   scripts/build-worker.sh [CRATE_DIR]   (default: the repository root, i.e. edge-enrich)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
crate_dir="$(cd "${1:-$root}" && pwd)"
[[ $# -gt 0 ]] && shift
export PATH="$HOME/.cargo/bin:$PATH"

need() { command -v "$1" >/dev/null 2>&1 || { echo "build-worker: '$1' is missing; run scripts/setup.sh" >&2; exit 1; }; }
need worker-build
need wasm-bindgen

export WASM_BINDGEN_BIN="${WASM_BINDGEN_BIN:-$(command -v wasm-bindgen)}"
if [[ -z "${WASM_OPT_BIN:-}" && -x "$root/node_modules/binaryen/bin/wasm-opt" ]]; then
  export WASM_OPT_BIN="$root/node_modules/binaryen/bin/wasm-opt"
fi
if [[ -z "${ESBUILD_BIN:-}" && -x "$root/node_modules/@esbuild/linux-x64/bin/esbuild" ]]; then
  export ESBUILD_BIN="$root/node_modules/@esbuild/linux-x64/bin/esbuild"
elif [[ -z "${ESBUILD_BIN:-}" && -x "$root/node_modules/.bin/esbuild" ]]; then
  export ESBUILD_BIN="$root/node_modules/.bin/esbuild"
fi

# Optimize the Worker for size: the upload is what every cold start fetches and what Cloudflare
# limits, while the enrichment path stays a few microseconds per reading either way (opt-level s
# cost 3.2 -> 4.8 us per GET reading in wasm against 3; z against s: 280.5 -> 262.3 KB gzip,
# Worker CPU per request under load within noise, CHANGELOG.md).
export CARGO_PROFILE_RELEASE_OPT_LEVEL="${CARGO_PROFILE_RELEASE_OPT_LEVEL:-z}"
cd "$crate_dir"
worker-build --release "$@"
# worker-build passes --debuginfo to wasm-opt to keep the function-name section (for named
# panic backtraces); it is ~100 KB of the upload (~30 KB gzip). Drop it: a panic then shows
# function indices, and `twiggy`/`wasm-tools` on an unstripped build map them back.
# Then optimize again without the names, at -O3 (-3.8 KB gzip): more -Oz passes shrink it by
# 0.9 KB more but cost ~10% of Worker CPU per request in the bench (bench/runs/
# 2026-12-02-workerd-wasm-opt-ab.txt). --low-memory-unused: Rust's stack sits below its data
# and grows down from 1 MiB, so the first KiB is never addressed and constant offsets fold
# into loads and stores.
if [[ -n "${WASM_OPT_BIN:-}" && "${KEEP_WASM_NAMES:-0}" != 1 ]]; then
  "$WASM_OPT_BIN" build/index_bg.wasm --strip-debug --strip-producers \
    --low-memory-unused -O3 \
    --enable-mutable-globals --enable-sign-ext --enable-nontrapping-float-to-int --enable-bulk-memory \
    --enable-multivalue --enable-reference-types --enable-exception-handling -o build/index_bg.wasm
fi
# edge-enrich's entry module wraps the bundle so that its Durable Object serves Workers RPC.
if [[ -f src/hosts/workers/entry.mjs ]]; then
  cp src/hosts/workers/entry.mjs build/entry.mjs
fi
