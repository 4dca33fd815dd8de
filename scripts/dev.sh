#!/usr/bin/env bash
# Sets up and runs edge-enrich locally with the reference collector.
#   scripts/dev.sh            Cloudflare Workers: `wrangler dev` (workerd)
#   scripts/dev.sh wasmtime   the wasi:http component (Spin's portable twin) under `wasmtime serve`
# Ports: PORT (edge) and COLLECTOR_PORT; both default to free ones.
set -euo pipefail
cd "$(dirname "$0")/.."
# .tools/python: the Python tools' virtual environment (scripts/setup.sh).
export PATH="$PWD/.tools/python/bin:$HOME/.cargo/bin:$PATH" WRANGLER_SEND_METRICS=false
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

host="${1:-workers}"
case "$host" in
  workers) scripts/setup.sh workers ;;
  wasmtime) scripts/setup.sh wasmtime ;;
  *) echo "usage: scripts/dev.sh [workers|wasmtime]" >&2; exit 2 ;;
esac
say "build the reference collector"
cargo build --release -p edge-enrich-collector
mkdir -p .dev
PORT="${PORT:-$(free_port)}"
COLLECTOR_PORT="${COLLECTOR_PORT:-$(free_port)}"

target/release/edge-enrich-collector --addr "127.0.0.1:$COLLECTOR_PORT" --db .dev/collector.sqlite &
collector_pid=$!
trap 'kill $collector_pid 2>/dev/null || true' EXIT

cat <<MSG

  collector: http://127.0.0.1:$COLLECTOR_PORT   (GET /stats, GET /readings?device_id=...)
  edge:      http://127.0.0.1:$PORT             ($host; starting)

  Try, once the edge is up:
    curl -s 'http://127.0.0.1:$PORT/v1/readings?device_id=abc&temp=74.3&unit=F'
    curl -s -X POST 'http://127.0.0.1:$PORT/v1/readings' -H 'content-type: application/x-ndjson' \\
         --data-binary \$'{"device_id":"greenhouse-1","temp":21.4}\\n{"device_id":"lab-ref-01","temp":300,"unit":"K"}\\n'
    curl -s 'http://127.0.0.1:$COLLECTOR_PORT/stats'

  Device authentication is OFF in this local run (AUTH_MODE=off): keep it on loopback.
  Deployed, wrangler.toml sets AUTH_MODE=token (see README, "Device authentication").
  State persists in .dev/.
MSG

if [[ "$host" == wasmtime ]]; then
  say "build the components"
  scripts/build-components.sh
  wasmtime serve -Scli --addr "127.0.0.1:$PORT" \
    --env "COLLECTOR_URL=http://127.0.0.1:$COLLECTOR_PORT/ingest" --env EDGE_NODE=local-wasmtime --env AUTH_MODE=off \
    target/components/edge_enrich_wasi_http.wasm
else
  node_modules/.bin/wrangler dev --ip 127.0.0.1 --port "$PORT" \
    --var "COLLECTOR_URL:http://127.0.0.1:$COLLECTOR_PORT/ingest" --var AUTH_MODE:off \
    --persist-to .dev/state --show-interactive-dev-session=false
fi
