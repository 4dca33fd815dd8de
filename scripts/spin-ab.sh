#!/usr/bin/env bash
# Interleaved A/B of spin-flavour builds under one load, for a VM too noisy for one run per build:
#   scripts/spin-ab.sh ROUNDS SECONDS CONNECTIONS MANIFEST...
# e.g. scripts/spin-ab.sh 3 10 100 spin.toml target/baseline/REV/spin.toml   (scripts/build-baseline.sh REV)
# One reference collector for the whole run; per round and manifest a fresh `spin up` (state dir
# on disk), SECONDS of warm-up at 2 connections, then SECONDS of GETs (one reading each, rate
# limit on and never reached, as the bench) at CONNECTIONS. Prints per run: requests/s, 2xx,
# p50/p99, CPU of `spin up` and its children per 2xx answer, and the answering instance's
# append-group and statement counters, and how the collector received that run's readings (batches,
# delivery lag, and of it the batches' transit from the edge's send to the collector), waiting up
# to 10 s for them; at the end, the collector's totals.
# Needs: scripts/bench.sh's tools (oha), target/release/edge-enrich-collector, a Spin CLI.
# KEEPLOG=PREFIX keeps each run's `spin up` output (the component's log lines) as PREFIX.ROUND.LABEL.
set -uo pipefail
cd "$(dirname "$0")/.."
rounds=$1; secs=$2; conns=$3; shift 3
SPIN="${SPIN:-}"; [[ -z "$SPIN" && -x ../shared/tools/spin ]] && SPIN="$(cd ../shared/tools && pwd)/spin"
[[ -x "$SPIN" ]] || { echo "spin-ab: no Spin CLI (set SPIN=/path/to/spin)" >&2; exit 1; }
COL=target/release/edge-enrich-collector
[[ -x $COL ]] || { echo "spin-ab: build it: cargo build --release -p edge-enrich-collector" >&2; exit 1; }
ADMIN=bench-admin-token-of-32-bytes-or-more
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
# utime+stime (clock ticks) of a process, its children and grandchildren (spin up runs its trigger as a child)
treecpu() { local t=0 p; for p in $1 $(pgrep -P $1) $(for c in $(pgrep -P $1); do pgrep -P $c; done); do
  t=$((t + $(awk '{print $14+$15}' /proc/$p/stat 2>/dev/null || echo 0))); done; echo $t; }
scratch=$(mktemp -d); trap 'rm -rf "$scratch"' EXIT
cport=$(free_port)
$COL --addr 127.0.0.1:$cport --db "$scratch/collector.db" >"$scratch/collector.log" 2>&1 & colpid=$!
sleep 1
for r in $(seq 1 "$rounds"); do
  for m in "$@"; do
    label=$(basename "$(dirname "$(realpath "$m")")"); [[ "$(realpath "$m")" == "$PWD/spin.toml" ]] && label=this-tree
    port=$(free_port); st=$(mktemp -d "$scratch/state.XXXX")
    "$SPIN" up --from "$m" --listen 127.0.0.1:$port --state-dir "$st" \
      --variable collector_origin=http://127.0.0.1:$cport --variable collector_path=/ingest \
      --variable auth_mode=off --variable admin_token=$ADMIN --variable edge_node=bench \
      --variable rate_limit_readings_per_s=1000000 --variable rate_limit_burst=1000000 >"$st/spin.log" 2>&1 & spid=$!
    for _ in $(seq 1 150); do curl -sf http://127.0.0.1:$port/healthz >/dev/null && break; sleep 0.2; done
    url="http://127.0.0.1:$port/v1/readings?device_id=bench-1&temp=21.5&unit=C"
    oha --no-tui -z "${secs}s" -c 2 "$url" >/dev/null 2>&1
    t0=$(treecpu $spid); since=$(date +%s%3N)
    out=$(oha --no-tui --output-format json -z "${secs}s" -c "$conns" "$url")
    t1=$(treecpu $spid)
    echo "$out" | OKFILE="$st/ok" TICKS=$((t1 - t0)) HZ=$(getconf CLK_TCK) LABEL=$label R=$r C=$conns python3 -c "
import json, os, sys
d = json.load(sys.stdin); s = d['summary']; p = d['latencyPercentiles']; sc = d['statusCodeDistribution']
n = sum(sc.values()); ok = sum(v for k, v in sc.items() if str(k).startswith('2'))
cpu_ms = int(os.environ['TICKS']) * 1000.0 / int(os.environ['HZ'])
print(f\"round {os.environ['R']} {os.environ['LABEL']:>12} c={os.environ['C']} rps={s['requestsPerSec']:6.0f} 2xx={ok}/{n} \"
      f\"p50={p['p50']*1000:6.1f} p99={p['p99']*1000:6.1f} ms cpu/2xx={cpu_ms/max(ok,1):.2f} ms\")
open(os.environ['OKFILE'], 'w').write(str(ok))"
    curl -s -H "authorization: Bearer $ADMIN" http://127.0.0.1:$port/admin/stats | python3 -c "
import json, sys
d = json.load(sys.stdin); print('   instance:', 'append_groups', d.get('append_groups'), 'sqlite', d.get('sqlite'))" 2>/dev/null
    # This run's readings only: received at the edge since its load began (the warm-up's are
    # older), with this spin up still running to deliver them.
    ok=$(cat "$st/ok" 2>/dev/null || echo 0)
    for _ in $(seq 1 40); do
      d=$(curl -s "127.0.0.1:$cport/delivery?since_ms=$since")
      [[ $(echo "$d" | python3 -c 'import json,sys; print(json.load(sys.stdin)["readings"])') -ge $ok ]] && break
      sleep 0.25
    done
    echo "$d" | OK=$ok python3 -c "
import json, os, sys
d = json.load(sys.stdin); lag = d['lag_ms']; tr = d.get('transit_ms', {})
print(f\"   delivery: {d['readings']}/{os.environ['OK']} readings in {d['batches']} batches, lag p50/p99/max {lag['p50']}/{lag['p99']}/{lag['max']} ms, transit p50/p99 {tr.get('p50')}/{tr.get('p99')} ms\")"
    kill $spid; wait $spid 2>/dev/null; [[ -n "${KEEPLOG:-}" ]] && cp "$st/spin.log" "$KEEPLOG.$r.$label"
  done
done
echo "collector: $(curl -s 127.0.0.1:$cport/delivery)"
kill $colpid
