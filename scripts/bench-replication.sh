#!/usr/bin/env bash
# fio on the Primary of a replicated pair (loopback, file-backed) in each
# protocol mode, side by side with the standalone `twinblock serve` on the
# same kind of file; prints each mode's ratio to standalone.
#
#   scripts/bench-replication.sh [--runtime SECS] [--size SIZE] [--delay DUR]
#
# --delay puts `twinblock netem` on the link (one-way delay, so RTT = 2x):
# then 4k QD32 in C/B is bounded by about 32/RTT writes per second, which the
# script prints as the ceiling to compare with.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

RUNTIME=5
SIZE=1G
DELAY=""
while (($#)); do
  case $1 in
    --runtime) RUNTIME=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --delay) DELAY=$2; shift 2 ;;
    *) echo "usage: $0 [--runtime SECS] [--size SIZE] [--delay DUR]" >&2; exit 2 ;;
  esac
done
bench_setup bench-replication tb-brepl


WORKLOADS=(
  "4k randwrite QD1|--rw=randwrite --bs=4k --iodepth=1|iops"
  "4k randwrite QD32|--rw=randwrite --bs=4k --iodepth=32|iops"
  "1M write QD8|--rw=write --bs=1M --iodepth=8|bw"
)
declare -A RESULT
run_workloads() { # label uri
  for w in "${WORKLOADS[@]}"; do
    IFS='|' read -r name args metric <<<"$w"
    # shellcheck disable=SC2086
    fio --name=b --ioengine=nbd --uri="$2" $args --size="$SIZE" --time_based --runtime="$RUNTIME" \
        --ramp_time=1 --output-format=json --output="$WORK/out.json" >/dev/null
    RESULT["$1|$name"]=$(python3 -c '
import json,sys; j=json.load(open(sys.argv[1]))["jobs"][0]["write"]
print(j["iops"] if sys.argv[2]=="iops" else j["bw_bytes"]/2**20, j["clat_ns"]["mean"]/1000)' "$WORK/out.json" "$metric")
  done
}

# Standalone baseline.
P=$(free_port tcp)
"$BIN" serve --disk "$WORK/serve.img" --size "$SIZE" --listen "127.0.0.1:$P" >/dev/null 2>"$WORK/serve.log" &
PIDS+=($!)
wait_nbd "nbd://127.0.0.1:$P"
run_workloads serve "nbd://127.0.0.1:$P"
stop_all

for MODE in C B A; do
  rm -f "$WORK"/{a,b}.{img,meta}*
  AQ=$(free_port udp); BQ=$(free_port udp); AN=$(free_port tcp); BN=$(free_port tcp)
  RELAY=""
  if [[ -n $DELAY ]]; then
    RELAY=$(free_port udp)
    "$BIN" netem --listen "127.0.0.1:$RELAY" --forward "127.0.0.1:$BQ" --delay "$DELAY" >/dev/null 2>&1 &
    PIDS+=($!)
  fi
  pair_config "$WORK/r.toml" bench "$MODE" "$SIZE" "$AQ" "$AN" "$BQ" "$BN" "${RELAY:-}"
  for n in a b; do
    "$BIN" up --config "$WORK/r.toml" --node $n >/dev/null 2>"$WORK/$n.log" &
    PIDS+=($!)
  done
  pair_promote "$BIN" "$WORK/r.toml"
  RTT=$("$BIN" status --config "$WORK/r.toml" --node a --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["rtt_us"] or 0)')
  RESULT["$MODE|rtt"]=$RTT
  run_workloads "$MODE" "nbd://127.0.0.1:$AN/bench"
  stop_all
done

echo "fio on the Primary vs standalone serve; file size $SIZE, ${RUNTIME}s per run${DELAY:+, netem one-way delay $DELAY}"
echo "QUIC RTT (C/B/A runs): ${RESULT[C|rtt]} / ${RESULT[B|rtt]} / ${RESULT[A|rtt]} us"
printf '%-18s %14s %22s %22s %22s\n' workload serve "C (ratio)" "B (ratio)" "A (ratio)"
for w in "${WORKLOADS[@]}"; do
  IFS='|' read -r name args metric <<<"$w"
  python3 - "$name" "$metric" "${RESULT[serve|$name]}" "${RESULT[C|$name]}" "${RESULT[B|$name]}" "${RESULT[A|$name]}" <<'PY'
import sys
name, metric = sys.argv[1:3]
vals = [tuple(map(float, a.split())) for a in sys.argv[3:]]
unit = "IOPS" if metric == "iops" else "MiB/s"
base = vals[0][0]
cells = [f"{vals[0][0]:,.0f} {unit}"] + [f"{v:,.0f} ({v/base:.2f}x, {lat:,.0f}us)" for v, lat in vals[1:]]
print(f"{name:<18} {cells[0]:>14} {cells[1]:>22} {cells[2]:>22} {cells[3]:>22}")
PY
done
if [[ -n $DELAY ]]; then
  python3 -c "
import sys
from datetime import timedelta
d = sys.argv[1]
units = {'us': 1e-6, 'ms': 1e-3, 's': 1}
for u in ('us', 'ms', 's'):
    if d.endswith(u): v = float(d[:-len(u)]) * units[u]; break
rtt = 2 * v
print(f'ceiling for QD32 at RTT {rtt*1e3:.2f} ms: {32/rtt:,.0f} writes/s; QD1: {1/rtt:,.0f}')" "$DELAY"
fi
