#!/usr/bin/env bash
# Builds both wasm32-wasip2 flavours and checks each against its WIT world (wit/), so an
# accidental import fails here rather than at deploy time:
#   target/components/edge_enrich_wasi_http.wasm  portable (wasmtime serve, any wasi:http P3 host)
#   target/components/edge_enrich_spin.wasm       Spin (what `spin build` runs: build-components.sh spin)
set -euo pipefail
cd "$(dirname "$0")/.."
# .tools/python: the Python tools' virtual environment (scripts/setup.sh).
export PATH="$PWD/.tools/python/bin:$HOME/.cargo/bin:$PATH"
mkdir -p target/components

# rustc's linker (wasm-component-ld) would wrap the core module into a component at once. We
# ask for the core module instead, optimize it with wasm-opt (binaryen, from npm: about 15% off,
# mostly dead code and duplicate functions rustc leaves), then wrap it with wasm-tools exactly as
# the linker would (the component-type sections it needs stay in the module). Without wasm-opt
# (no `npm ci` yet) the plain linker output is used.
WASM_OPT="${WASM_OPT_BIN:-node_modules/binaryen/bin/wasm-opt}"
build() { # build NAME [CARGO_FEATURE_ARGS...]
  local name="$1"; shift
  local out="target/wasm32-wasip2/component/edge_enrich.wasm"
  if [[ -x "$WASM_OPT" ]]; then
    cargo rustc --lib --crate-type cdylib --target wasm32-wasip2 --profile component "$@" \
      -- -C link-arg=--skip-wit-component
    "$WASM_OPT" "$out" -O --strip-debug --strip-producers \
      --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
      --enable-nontrapping-float-to-int --enable-reference-types --enable-multivalue \
      -o "target/components/$name.core.wasm"
    wasm-tools component new "target/components/$name.core.wasm" -o "target/components/$name.wasm"
  else
    cargo build --target wasm32-wasip2 --profile component "$@"
    cp "$out" "target/components/$name.wasm"
  fi
}
[[ "${1:-all}" == spin ]] || build edge_enrich_wasi_http
build edge_enrich_spin --features spin
[[ "${1:-all}" == spin ]] && exit 0

wasm-tools component targets wit --world wasi-http target/components/edge_enrich_wasi_http.wasm
wasm-tools component targets wit --world spin target/components/edge_enrich_spin.wasm
# The portable build must not need anything only Spin provides.
if wasm-tools component targets wit --world wasi-http target/components/edge_enrich_spin.wasm 2>/dev/null; then
  echo "build-components: the spin flavour unexpectedly fits the portable world" >&2; exit 1
fi
for f in target/components/edge_enrich_{wasi_http,spin}.wasm; do
  printf '%s: %s bytes (%s gzip)\n' "$f" "$(stat -c %s "$f")" "$(gzip -9c "$f" | wc -c)"
done
