#!/usr/bin/env bash
# Sets up and runs edge-enrich locally: the reference collector plus `wrangler dev` (workerd).
# Ports: PORT (edge, default: a free one) and COLLECTOR_PORT (default: a free one).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH" WRANGLER_SEND_METRICS=false
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

scripts/setup.sh workers
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
  edge:      http://127.0.0.1:$PORT             (starting; the first build takes a minute)

  Try, once wrangler says Ready:
    curl -s 'http://127.0.0.1:$PORT/v1/readings?device_id=abc&temp=74.3&unit=F'
    curl -s -X POST 'http://127.0.0.1:$PORT/v1/readings' -H 'content-type: application/x-ndjson' \\
         --data-binary \$'{"device_id":"greenhouse-1","temp":21.4}\\n{"device_id":"lab-ref-01","temp":300,"unit":"K"}\\n'
    curl -s 'http://127.0.0.1:$COLLECTOR_PORT/stats'

  No device authentication in this build: run it on loopback only. State persists in .dev/.
MSG

node_modules/.bin/wrangler dev --ip 127.0.0.1 --port "$PORT" \
  --var "COLLECTOR_URL:http://127.0.0.1:$COLLECTOR_PORT/ingest" \
  --persist-to .dev/state --show-interactive-dev-session=false
