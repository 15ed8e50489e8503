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
relay_delay=$DELAY
[[ $DELAY == 0 ]] && relay_delay=""
TWINBLOCK_TIMELINE=$TL pair C "$relay_delay" "$EXTRA"
prefill "$URI" "$WORK/a.img" "$WORK/b.img"
fio --name=t --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth="$QD" --size="$SIZE" \
    --time_based --runtime="$RUNTIME" --output-format=json --output="$WORK/fio.json" >/dev/null
sleep 1 # the recorders' last flush
stop_all
where="relay ${DELAY} each way"; [[ $DELAY == 0 ]] && where="no relay"
echo "protocol C, 4k randwrite QD$QD, $where${EXTRA:+, $EXTRA} ($(date -u +%FT%TZ))"
python3 -c '
import json,sys; w=json.load(open(sys.argv[1]))["jobs"][0]["write"]; c=w["clat_ns"]; p=c.get("percentile",{})
iops, mean, p50, p99 = w["iops"], c["mean"]/1e3, p.get("50.000000",0)/1e3, p.get("99.000000",0)/1e3
print(f"fio: {iops:,.0f} IOPS, completion latency mean {mean:,.1f} us, p50 {p50:,.1f} us, p99 {p99:,.1f} us")' "$WORK/fio.json"
python3 scripts/timeline.py "$TL" --fio-clat-us "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["jobs"][0]["write"]["clat_ns"]["mean"]/1e3)' "$WORK/fio.json")"
if [[ -n $KEEP ]]; then
  mkdir -p "$KEEP" && cp "$TL"/*.timeline "$KEEP"/ && echo "timelines kept in $KEEP"
fi
