#!/usr/bin/env bash
# Where a replicated write's time goes, stage by stage: a protocol C pair
# on loopback, b reached through a `twinblock netem` relay (DELAY each way;
# --delay 0 for none), fio 4k randwrite at QD (default 32) for RUNTIME
# seconds, every process recording its write timeline
# (TWINBLOCK_TIMELINE, timeline/src/lib.rs); then scripts/timeline.py
# prints each stage's latency, and fio's own completion latency beside
# the nodes' whole (the rest is fio, libnbd and TCP).
#
# Usage: scripts/bench-timeline.sh [--delay 500us] [--iodepth 32]
#                                  [--runtime 4] [--size 256M] [--keep DIR]
#                                  [--set 'KEY = VALUE']
# (--set: one more line in the pair's resource file, e.g.
# --set 'busy-poll = "0"', to see which stages a setting moves.)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

DELAY=500us QD=32 RUNTIME=4 SIZE=256M KEEP="" EXTRA=""
while (($#)); do
  case $1 in
    --delay) DELAY=$2; shift 2 ;;
    --iodepth) QD=$2; shift 2 ;;
    --runtime) RUNTIME=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --keep) KEEP=$2; shift 2 ;;
    --set) EXTRA=$2; shift 2 ;;
    *) echo "usage: $0 [--delay DUR|0] [--iodepth N] [--runtime SECS] [--size SIZE] [--keep DIR] [--set 'KEY = VALUE']" >&2; exit 2 ;;
  esac
done
bench_setup bench-timeline bench-timeline

TL=$WORK/timeline
mkdir -p "$TL"
aq=$(free_port udp); bq=$(free_port udp); an=$(free_port tcp); bn=$(free_port tcp); relay=""
if [[ $DELAY != 0 ]]; then
  relay=$(free_port udp)
  TWINBLOCK_TIMELINE=$TL "$BIN" netem --listen "127.0.0.1:$relay" --forward "127.0.0.1:$bq" --delay "$DELAY" >"$WORK/netem.log" 2>&1 &
  PIDS+=($!)
fi
CFG=$WORK/r.toml
pair_config "$CFG" bench C "$SIZE" "$aq" "$an" "$bq" "$bn" "$relay" "$EXTRA"
for n in a b; do
  TWINBLOCK_TIMELINE=$TL "$BIN" up --config "$CFG" --node $n >/dev/null 2>"$WORK/$n.log" &
  PIDS+=($!)
done
pair_promote "$BIN" "$CFG"
URI="nbd://127.0.0.1:$an/bench"
wait_nbd "$URI"
for _ in $(seq 1200); do
  "$BIN" status --config "$CFG" --node a --json | python3 -c '
import json,sys; s=json.load(sys.stdin); sys.exit(0 if s["connection"]=="Connected" and s["out_of_sync_bytes"]==0 and s["peer"]["disk"]=="UpToDate" else 1)' && break
  sleep 0.1
done
prefill "$URI" "$WORK/a.img" "$WORK/b.img"
fio --name=t --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth="$QD" --size="$SIZE" \
    --time_based --runtime="$RUNTIME" --output-format=json --output="$WORK/fio.json" >/dev/null
sleep 1 # the recorders' last flush
stop_all
echo "protocol C, 4k randwrite QD$QD, relay ${DELAY} each way${EXTRA:+, $EXTRA} ($(date -u +%FT%TZ))"
python3 -c '
import json,sys; w=json.load(open(sys.argv[1]))["jobs"][0]["write"]; c=w["clat_ns"]; p=c.get("percentile",{})
iops, mean, p50, p99 = w["iops"], c["mean"]/1e3, p.get("50.000000",0)/1e3, p.get("99.000000",0)/1e3
print(f"fio: {iops:,.0f} IOPS, completion latency mean {mean:,.1f} us, p50 {p50:,.1f} us, p99 {p99:,.1f} us")' "$WORK/fio.json"
python3 scripts/timeline.py "$TL" --fio-clat-us "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["jobs"][0]["write"]["clat_ns"]["mean"]/1e3)' "$WORK/fio.json")"
if [[ -n $KEEP ]]; then
  mkdir -p "$KEEP" && cp "$TL"/*.timeline "$KEEP"/ && echo "timelines kept in $KEEP"
fi
