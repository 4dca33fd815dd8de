#!/usr/bin/env bash
# Builds both wasm32-wasip2 flavours and checks each against its WIT world (wit/), so an
# accidental import fails here rather than at deploy time:
#   target/components/edge_enrich_wasi_http.wasm  portable (wasmtime serve, any wasi:http P3 host)
#   target/components/edge_enrich_spin.wasm       Spin (what `spin build` produces)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
mkdir -p target/components

cargo build --target wasm32-wasip2 --profile component
cp target/wasm32-wasip2/component/edge_enrich.wasm target/components/edge_enrich_wasi_http.wasm
cargo build --target wasm32-wasip2 --profile component --features spin
cp target/wasm32-wasip2/component/edge_enrich.wasm target/components/edge_enrich_spin.wasm

wasm-tools component targets wit --world wasi-http target/components/edge_enrich_wasi_http.wasm
wasm-tools component targets wit --world spin target/components/edge_enrich_spin.wasm
# The portable build must not need anything only Spin provides.
if wasm-tools component targets wit --world wasi-http target/components/edge_enrich_spin.wasm 2>/dev/null; then
  echo "build-components: the spin flavour unexpectedly fits the portable world" >&2; exit 1
fi
for f in target/components/*.wasm; do
  printf '%s: %s bytes (%s gzip)\n' "$f" "$(stat -c %s "$f")" "$(gzip -9c "$f" | wc -c)"
done
