#!/usr/bin/env bash
# fio against `twinblock serve` and `nbdkit file`, side by side: for each
# workload both servers serve the same pre-written file in turn, and the
# script prints twinblock/nbdkit ratios (above 1.0: twinblock is faster).
#
#   scripts/bench-nbd.sh [--runtime SECS] [--size SIZE] [--io auto|uring|threads] [--pin] [--repeat N]
#
# --repeat N runs every workload N times (alternating the servers) and ends
# with the median ratio of each workload.
# --pin puts each server on CPU 0 and fio on CPU 1: on small VMs the
# scheduler's placement of client and server threads otherwise dominates
# the figures (a cross-CPU wake-up costs tens of microseconds there).
# Machines are noisy: compare the ratios of one run, not absolute figures.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNTIME=10
SIZE=1G
IO=auto
PIN=0
REPEAT=1
while (($#)); do
  case $1 in
    --runtime) RUNTIME=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --io) IO=$2; shift 2 ;;
    --pin) PIN=1; shift ;;
    --repeat) REPEAT=$2; shift 2 ;;
    *) echo "usage: $0 [--runtime SECS] [--size SIZE] [--io auto|uring|threads] [--pin] [--repeat N]" >&2; exit 2 ;;
  esac
done

for t in fio nbdkit nbdinfo python3 taskset; do
  command -v $t >/dev/null || { echo "bench-nbd: $t is missing (scripts/setup.sh installs it)" >&2; exit 1; }
done
. scripts/lib.sh
cargo build --release -q --no-default-features
BIN=$(release_dir)/twinblock

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/tb-bench.XXXXXX")
SERVER_PID=""
stop_server() {
  if [[ -n $SERVER_PID ]]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  SERVER_PID=""
}
trap 'stop_server; rm -rf "$WORK"' EXIT

SERVER_CPU=() CLIENT_CPU=()
if ((PIN)); then SERVER_CPU=(taskset -c 0) CLIENT_CPU=(taskset -c 1); fi

# One file, written in full (no holes), served by each server in turn.
IMG=$WORK/disk.img
fio --name=fill --filename="$IMG" --size="$SIZE" --rw=write --bs=1M --ioengine=psync \
    --end_fsync=1 --output=/dev/null

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
start_server() { # tb|kit
  if [[ $1 == tb ]]; then
    "${SERVER_CPU[@]}" "$BIN" serve --disk "$IMG" --listen "127.0.0.1:$PORT" --io "$IO" \
      >"$WORK/tb.out" 2>"$WORK/tb.log" &
  else
    "${SERVER_CPU[@]}" nbdkit -f -p "$PORT" -i 127.0.0.1 file "$IMG" 2>"$WORK/kit.log" &
  fi
  SERVER_PID=$!
  for _ in $(seq 100); do
    nbdinfo --size "nbd://127.0.0.1:$PORT" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "bench-nbd: $1 did not start" >&2; cat "$WORK"/*.log >&2; exit 1
}

start_server tb; echo "twinblock: $(head -1 "$WORK/tb.out")"; stop_server
echo "nbdkit:    $(nbdkit --version) file plugin"
echo "runtime ${RUNTIME}s per workload (after 2s ramp), file size $SIZE, pinned: $((PIN)) ($(nproc) CPUs)"
echo

# name|fio args|metric
WORKLOADS=(
  "4k randwrite QD1|--rw=randwrite --bs=4k --iodepth=1|write.iops"
  "4k randread QD32|--rw=randread --bs=4k --iodepth=32|read.iops"
  "1M write QD8|--rw=write --bs=1M --iodepth=8|write.bw_bytes"
)

run_fio() { # args out
  # shellcheck disable=SC2086
  "${CLIENT_CPU[@]}" fio --name=bench --ioengine=nbd --uri="nbd://127.0.0.1:$PORT" $1 --size="$SIZE" \
      --time_based --runtime="$RUNTIME" --ramp_time=2 --output-format=json --output="$2" >/dev/null
}

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-20s %16s %16s %8s   %s\n' workload twinblock nbdkit ratio "mean latency tb/kit (us)"
for ((rep = 1; rep <= REPEAT; rep++)); do
for w in "${WORKLOADS[@]}"; do
  IFS='|' read -r name args metric <<<"$w"
  for s in tb kit; do
    start_server $s
    run_fio "$args" "$WORK/$s.json"
    stop_server
  done
  python3 - "$name" "$metric" "$WORK/tb.json" "$WORK/kit.json" "$WORK/ratios" <<'PY'
import json, sys
name, metric, tb, kit, ratios = sys.argv[1:]
side, field = metric.split(".")
def get(p):
    j = json.load(open(p))["jobs"][0][side]
    return j[field], j["clat_ns"]["mean"] / 1000 + j.get("slat_ns", {}).get("mean", 0) / 1000
(a, la), (b, lb) = get(tb), get(kit)
unit = "MiB/s" if field == "bw_bytes" else "IOPS"
fmt = (lambda v: f"{v/2**20:,.1f} {unit}") if field == "bw_bytes" else (lambda v: f"{v:,.0f} {unit}")
print(f"{name:<20} {fmt(a):>16} {fmt(b):>16} {a/b:8.2f}   {la:,.1f} / {lb:,.1f}")
with open(ratios, "a") as f:
    f.write(f"{name}|{a/b}\n")
PY
done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
if ((REPEAT > 1)); then
  echo
  python3 - "$WORK/ratios" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    name, r = line.rstrip("\n").split("|")
    runs.setdefault(name, []).append(float(r))
for name, rs in runs.items():
    print(f"{name:<20} median ratio {statistics.median(rs):.2f}  (runs: {', '.join(f'{r:.2f}' for r in rs)})")
PY
fi
