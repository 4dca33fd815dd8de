#!/usr/bin/env bash
# Builds the spin flavour of an earlier commit for the bench's A/B run:
#   scripts/build-baseline.sh REV      -> target/baseline/REV/{spin.toml, edge_enrich_spin.wasm, REV}
#   BENCH_SPIN_BASELINE=target/baseline/REV scripts/bench.sh --only spin
# The commit is checked out in a git worktree under target/ and built with this checkout's
# tools; nothing is downloaded. Idempotent: an existing build of REV is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
rev="$(git rev-parse --short "${1:?usage: scripts/build-baseline.sh REV}")"
out="$PWD/target/baseline/$rev"
if [[ -f "$out/edge_enrich_spin.wasm" && -f "$out/spin.toml" ]]; then
  echo "$out"; exit 0
fi
tree="$PWD/target/baseline-tree-$rev"
git worktree remove --force "$tree" 2>/dev/null || true
git worktree add --detach "$tree" "$rev" >/dev/null
trap 'git worktree remove --force "$tree" >/dev/null 2>&1 || true' EXIT
mkdir -p "$out"
( cd "$tree" && WASM_OPT_BIN="$OLDPWD/node_modules/binaryen/bin/wasm-opt" \
    scripts/build-components.sh spin >&2 )
cp "$tree/target/components/edge_enrich_spin.wasm" "$out/"
# The manifest of that commit, its component by absolute path.
sed "s#^source = .*#source = \"$out/edge_enrich_spin.wasm\"#" "$tree/spin.toml" > "$out/spin.toml"
echo "$rev" > "$out/REV"
echo "$out"
