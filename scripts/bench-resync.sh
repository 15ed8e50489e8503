#!/usr/bin/env bash
# Resync throughput against the link's replication throughput, and bytes
# moved against bytes dirtied, on a loopback pair.
#
#   scripts/bench-resync.sh [--size SIZE] [--dirty MiB]
#
# 1. link: fio writes --dirty MiB sequentially (1 MiB, QD8) on the Primary in
#    protocol C; the rate is what the link carries for live writes.
# 2. resync: the Secondary goes down, fio writes --dirty MiB in 64 KiB blocks
#    at random offsets, the Secondary comes back; the script times the
#    bitmap resync and reads resync_bytes.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
SIZE=2G
DIRTY=256
while (($#)); do
  case $1 in
    --size) SIZE=$2; shift 2 ;;
    --dirty) DIRTY=$2; shift 2 ;;
    *) echo "usage: $0 [--size SIZE] [--dirty MiB]" >&2; exit 2 ;;
  esac
done
for t in fio python3; do command -v $t >/dev/null || { echo "bench-resync: $t missing" >&2; exit 1; }; done
cargo build --release -q
BIN=$(release_dir)/twinblock
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/tb-bresync.XXXXXX")
declare -A PID
trap 'for p in "${PID[@]}"; do kill $p 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$WORK"' EXIT
"$BIN" gen-certs --out "$WORK/certs" a b >/dev/null
AN=$(free_port tcp)
pair_config "$WORK/r.toml" bench C "$SIZE" "$(free_port udp)" "$AN" "$(free_port udp)" "$(free_port tcp)"
st() { "$BIN" status --config "$WORK/r.toml" --node a --json; }
field() { st | python3 -c "import json,sys; j=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }
up() { "$BIN" up --config "$WORK/r.toml" --node "$1" >/dev/null 2>>"$WORK/$1.log" & PID[$1]=$!; }
wait_for() { for _ in $(seq 600); do [[ $(field "$1") == True ]] && return 0; sleep 0.1; done; echo "timeout: $1" >&2; exit 1; }
up a; up b
pair_promote "$BIN" "$WORK/r.toml"
URI="nbd://127.0.0.1:$AN/bench"

T0=$(date +%s.%N)
fio --name=link --ioengine=nbd --uri="$URI" --rw=write --bs=1M --iodepth=8 --size="${DIRTY}M" --output=/dev/null
wait_for 'j["in_flight"]==0'
T1=$(date +%s.%N)

"$BIN" down --config "$WORK/r.toml" --node b >/dev/null
wait "${PID[b]}" 2>/dev/null || true
wait_for 'j["connection"]!="Connected"'
fio --name=dirty --ioengine=nbd --uri="$URI" --rw=randwrite --bs=64k --iodepth=8 --size="$SIZE" \
    --io_size="${DIRTY}M" --randrepeat=0 --norandommap=0 --output=/dev/null
DIRTY_BYTES=$(field 'j["out_of_sync_bytes"]')
BEFORE=$(field 'j["counters"]["resync_bytes"]')
T2=$(date +%s.%N)
up b
wait_for 'j["connection"]=="Connected" and j["sync"] is None and j["out_of_sync_bytes"]==0 and j["in_flight"]==0'
T3=$(date +%s.%N)
MOVED=$(( $(field 'j["counters"]["resync_bytes"]') - BEFORE ))
python3 - "$DIRTY" "$T0" "$T1" "$T2" "$T3" "$DIRTY_BYTES" "$MOVED" <<'PY'
import sys
mib, t0, t1, t2, t3, dirty, moved = sys.argv[1:]
mib = int(mib); dirty = int(dirty); moved = int(moved)
link = mib / (float(t1) - float(t0))
resync_s = float(t3) - float(t2)
rate = moved / 2**20 / resync_s
print(f"live replication (protocol C, 1M QD8): {link:,.0f} MiB/s")
print(f"resync of {dirty/2**20:,.0f} MiB out of sync: {resync_s:.2f} s including reconnect, {rate:,.0f} MiB/s ({rate/link:.2f}x live)")
print(f"bytes moved / bytes out of sync: {moved/2**20:,.1f} / {dirty/2**20:,.1f} MiB = {moved/dirty:.3f}")
PY
