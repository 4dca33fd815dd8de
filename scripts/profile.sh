#!/usr/bin/env bash
# Where a request's CPU goes: `perf record` on the host process while load runs against
# edge-enrich and then against the hello-world floor, and for each the share of the kernel, the
# host runtime and JIT-compiled code (Wasm and JS), then the top symbols.
#   scripts/profile.sh workerd    attaches to workerd during `cargo xtask bench --only workerd`
#                                 (100 connections)
#   scripts/profile.sh wasmtime   `wasmtime serve --profile=perfmap`, 100 connections (oha), on a
#                                 component build that keeps its function names
# Run scripts/bench.sh once first (tools, release artifacts). Needs perf (Debian: apt-get
# install linux-perf). Output and perf data under target/profile/.
set -euo pipefail
cd "$(dirname "$0")/.."
# .tools/python: the Python tools' virtual environment (scripts/setup.sh).
export PATH="$PWD/.tools/python/bin:$HOME/.cargo/bin:$PATH" WRANGLER_SEND_METRICS=false NO_COLOR=1
host="${1:-}"
out=target/profile
mkdir -p "$out"
command -v perf >/dev/null || { echo "profile: perf is missing (apt-get install linux-perf)" >&2; exit 1; }

report() { # report NAME PID: 6 s of samples, then the breakdown (head closes the pipes early)
  local name="$1" pid="$2"
  perf record -F 1999 -g -p "$pid" -o "$out/$name.data" -- sleep 6 >/dev/null 2>&1
  echo "== $name: share by part"
  perf report -i "$out/$name.data" --no-children --sort dso -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -6 || true
  echo "== $name: top symbols"
  perf report -i "$out/$name.data" --no-children --sort dso,sym -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -25 | cut -c1-150 || true
}

wait_for() { # wait_for PATTERN: the pid of the newest process whose command line matches
  local pid=""
  for _ in $(seq 1 600); do
    pid=$(pgrep -nf "$1" || true)
    [[ -n "$pid" ]] && { echo "$pid"; return; }
    sleep 0.1
  done
  echo "profile: no process matching $1" >&2; exit 1
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

case "$host" in
  workerd)
    EDGE_ENRICH_COLLECTOR_BIN="$PWD/target/release/edge-enrich-collector" \
      cargo xtask bench --only workerd --duration 12 --connections 100 >"$out/bench.log" 2>&1 &
    bench=$!
    for name in edge-enrich hello-rust; do
      pid=$(wait_for "workerd-$name/workerd.capnp")
      sleep 3 # start-up and warm-up
      report "workerd-$name" "$pid"
    done
    wait "$bench"
    ;;
  wasmtime)
    # The component profile strips names and wasm-opt drops them: link a named build for perf.
    CARGO_PROFILE_COMPONENT_STRIP=none CARGO_TARGET_DIR=target/profile/build \
      cargo rustc --lib --crate-type cdylib --target wasm32-wasip2 --profile component \
      -- -C link-arg=--skip-wit-component
    wasm-tools component new target/profile/build/wasm32-wasip2/component/edge_enrich.wasm \
      -o "$out/edge-enrich-named.wasm"
    port=$(free_port)
    target/release/edge-enrich-collector --addr "127.0.0.1:$port" --db "$out/collector.sqlite" \
      >"$out/collector.log" 2>&1 &
    collector=$!
    trap 'kill $collector 2>/dev/null || true' EXIT
    for name in edge-enrich hello-component; do
      component="$out/edge-enrich-named.wasm"
      [[ "$name" == hello-component ]] && component=target/wasm32-wasip2/component/hello_peer.wasm
      serve_port=$(free_port)
      wasmtime serve -Scli --profile=perfmap --addr "127.0.0.1:$serve_port" \
        --env "COLLECTOR_URL=http://127.0.0.1:$port/ingest" --env AUTH_MODE=off --env EDGE_NODE=profile \
        --env RATE_LIMIT_READINGS_PER_S=1000000 --env RATE_LIMIT_BURST=1000000 \
        --env "CALIBRATION_PROFILES=$(cat profiles/calibration.json)" \
        "$component" >"$out/wasmtime-$name.log" 2>&1 &
      serve=$!
      sleep 2
      oha --no-tui -z 12s -c 100 \
        "http://127.0.0.1:$serve_port/v1/readings?device_id=profile-1&temp=21.5&unit=C" \
        >"$out/oha-$name.txt" 2>&1 &
      load=$!
      sleep 3
      report "wasmtime-$name" "$serve"
      wait "$load"
      kill "$serve"; wait "$serve" 2>/dev/null || true
      grep -E 'Requests/sec' "$out/oha-$name.txt"
    done
    ;;
  *)
    echo "usage: scripts/profile.sh workerd|wasmtime" >&2; exit 2 ;;
esac
