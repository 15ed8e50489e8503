#!/usr/bin/env bash
# What a client scraping `GET /metrics` in a tight loop costs a protocol C
# pair on loopback: fio 4k randwrite QD32 on the Primary without and with
# the flood, alternating, and the node's CPU during a flood alone. Prints
# the flood's scrapes per second, the node's share of a core, and the
# writes' rate with the flood over their rate without it, per round.
#
#   scripts/bench-metrics-flood.sh [--repeat N] [--runtime SECS]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
REPEAT=3 RUNTIME=5
while [[ $# -gt 0 ]]; do
  case $1 in
    --repeat) REPEAT=$2; shift 2 ;;
    --runtime) RUNTIME=$2; shift 2 ;;
    *) echo "usage: $0 [--repeat N] [--runtime SECS]" >&2; exit 2 ;;
  esac
done
bench_setup bench-metrics-flood tb-mflood
SIZE=256M
cd "$WORK"
aq=$(free_port udp); bq=$(free_port udp); an=$(free_port tcp); bn=$(free_port tcp); mp=$(free_port tcp)
CFG=$WORK/r.toml
pair_config "$CFG" bench C "$SIZE" "$aq" "$an" "$bq" "$bn"
sed -i "0,/^nbd /s//metrics = \"127.0.0.1:$mp\"\nnbd /" "$CFG"
for n in a b; do "$BIN" up --config "$CFG" --node $n >/dev/null 2>"$WORK/$n.log" & PIDS+=($!); done
A=${PIDS[0]}
pair_promote "$BIN" "$CFG"
URI="nbd://127.0.0.1:$an/bench"
wait_nbd "$URI"
wait_in_sync
fio --name=fill --ioengine=nbd --uri="$URI" --rw=write --bs=1M --iodepth=8 --size="$SIZE" >/dev/null 2>&1

flood() { # SECS: scrape in a loop; prints the scrapes per second
  python3 - "$mp" "$1" <<'PY'
import socket, sys, time
port, secs = int(sys.argv[1]), float(sys.argv[2])
n, t = 0, time.time()
while time.time() - t < secs:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    while s.recv(65536):
        pass
    s.close()
    n += 1
print(round(n / secs))
PY
}
ticks() { awk '{print $14 + $15}' "/proc/$A/stat"; }
iops() {
  fio --name=w --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=32 --size="$SIZE" \
    --runtime="$RUNTIME" --time_based --output-format=json 2>/dev/null |
    python3 -c 'import json,sys; t=sys.stdin.read(); print(int(json.loads(t[t.index("{"):])["jobs"][0]["write"]["iops"]))'
}
hz=$(getconf CLK_TCK)
c0=$(ticks); rate=$(flood "$RUNTIME"); c1=$(ticks)
echo "flood alone: $rate scrapes/s, node a $(( (c1 - c0) * 100 / hz / RUNTIME ))% of a core"
for r in $(seq "$REPEAT"); do
  quiet=$(iops)
  flood $((RUNTIME + 1)) >/dev/null & fp=$!
  loud=$(iops)
  wait $fp
  python3 -c "print(f'round $r: {$quiet} IOPS quiet, {$loud} with the flood: {$loud/$quiet:.2f}')"
done
