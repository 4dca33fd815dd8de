#!/usr/bin/env bash
# Fuzzes each parser for a bounded time: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
# (default 60 s each, all targets). cargo fuzz needs nightly-only flags; this machine has one
# stable toolchain, so RUSTC_BOOTSTRAP=1 lets it use them. A crash leaves its input under
# fuzz/artifacts/<target>/: copy it to fuzz/regressions/<target>/ and `cargo test` in fuzz/
# replays it for ever.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(query body_json body_ndjson calibration_profiles registry_and_jwt)

command -v cargo-fuzz >/dev/null || scripts/setup.sh
export RUSTC_BOOTSTRAP=1
# Replay the saved regressions first (plain test build, no fuzzer).
(cd fuzz && cargo test --quiet)
for target in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$target"
  echo "== fuzz $target for ${seconds}s"
  # Corpus: what earlier runs found, seeded with the regression inputs (read only).
  cargo fuzz run "$target" "fuzz/corpus/$target" "fuzz/regressions/$target" -- \
    -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    2>&1 | grep -E '^(#[0-9]+.*DONE|stat::number_of_executed_units|stat::new_units_added|==|INFO: Running|.*(panicked|ERROR|SUMMARY|Test unit written)).*' || true
  if compgen -G "fuzz/artifacts/$target/crash-*" > /dev/null; then
    echo "fuzz $target: crash inputs in fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
echo "fuzz: no crashes (${seconds}s per target)"
