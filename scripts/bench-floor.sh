#!/usr/bin/env bash
# The best loopback ratio any implementation of the design could reach on
# this machine (issue 10, point 4): the standalone export's measured cost
# per write (fio's CPU and `serve`'s, from a fio run against `twinblock
# serve`) plus the work the design requires of a replicated write and
# nothing else (benches/floor.rs: AES-128-GCM both ways, one copy into the
# packets, the wire CRC on both nodes, the UDP datagrams through loopback
# with segmentation and receive offload as the link sends them, the
# Secondary's page-cache write), each measured alone. With the machine's
# cores saturated, protocol C can at best reach
#
#   cores / (fio + serve + floor)   writes per second,
#
# and that over serve's measured rate is the ratio's upper bound. It is
# generous: no QUIC framing or acknowledgements, no runtime, no wake-ups,
# no bookkeeping, fio's cost taken from the standalone run.
#
#   scripts/bench-floor.sh [--runtime SECS] [--size SIZE] [--repeat N]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

RUNTIME=5
SIZE=1G
REPEAT=3
while (($#)); do
  case $1 in
    --runtime) RUNTIME=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --repeat) REPEAT=$2; shift 2 ;;
    *)
      sed -n '2,/^set -e/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
      exit 2 ;;
  esac
done
bench_setup bench-floor tb-floor
RES=$WORK/results
: >"$RES"

# serve_run ARGS...: fio against serve; prints "iops serve_us_per_op fio_us_per_op".
serve_run() {
  local c0 c1 t0 t1
  c0=$(cut -d' ' -f14,15 "/proc/$SERVE/stat" | awk '{print $1 + $2}'); t0=$(date +%s.%N)
  fio --name=b --ioengine=nbd --uri="$URI" "$@" --size="$SIZE" --time_based --runtime="$RUNTIME" \
    --ramp_time=1 --output-format=json --output="$WORK/out.json" >/dev/null
  c1=$(cut -d' ' -f14,15 "/proc/$SERVE/stat" | awk '{print $1 + $2}'); t1=$(date +%s.%N)
  python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]; w = j["write"]
ticks, tck, wall = float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[5]) - float(sys.argv[4])
serve = ticks / tck * 1e6 / max(w["iops"] * wall, 1)
fio = (j["usr_cpu"] + j["sys_cpu"]) / 100 * 1e6 / max(w["iops"], 1)
print(w["iops"], serve, fio)' "$WORK/out.json" "$((c1 - c0))" "$(getconf CLK_TCK)" "$t0" "$t1"
}

for ((run = 1; run <= REPEAT; run++)); do
  echo "== serve, run $run of $REPEAT" >&2
  P=$(free_port tcp)
  rm -f "$WORK/serve.img"
  "$BIN" serve --disk "$WORK/serve.img" --size "$SIZE" --listen "127.0.0.1:$P" >/dev/null 2>"$WORK/serve.log" &
  SERVE=$!
  PIDS+=("$SERVE")
  URI="nbd://127.0.0.1:$P"
  wait_nbd "$URI"
  prefill "$URI" "$WORK/serve.img"
  echo "$run 4k $(serve_run --rw=randwrite --bs=4k --iodepth=32)" >>"$RES"
  echo "$run 1m $(serve_run --rw=write --bs=1M --iodepth=8)" >>"$RES"
  stop_all
done

echo "== benches/floor.rs" >&2
# Its results in this run's own directory (no stale ones from elsewhere);
# its page-cache file on the file system the pair's disks use.
CRITERION_HOME=$WORK/criterion TMPDIR=$WORK cargo bench -q --no-default-features --bench floor -- \
  --warm-up-time 1 --measurement-time 3 >&2

python3 - "$RES" "$WORK/criterion" "$(nproc)" "$REPEAT" "$RUNTIME" <<'PY'
import json, os, statistics, sys
res, crit, cores, repeat, runtime = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
def us(group, name):
    with open(os.path.join(crit, group, name, "new", "estimates.json")) as f:
        return json.load(f)["median"]["point_estimate"] / 1e3
runs = {"4k": [], "1m": []}
for line in open(res):
    _, size, iops, serve, fio = line.split()
    runs[size].append((float(iops), float(serve), float(fio)))
print(f"The floor of a replicated write on this machine ({cores} cores; serve: median of {repeat} runs of {runtime}s)")
print()
# 1 MiB writes: writes per second == MiB/s.
for size, label, unit in (("4k", "4k randwrite QD32", "IOPS"), ("1m", "1M write QD8", "MiB/s")):
    g = f"floor_{size}"
    seal, open_, copy, crc, udp, pw = (us(g, n) for n in ("seal", "open", "copy", "crc32", "udp", "pwrite"))
    if size == "4k":
        # A 4 KiB write shares its jumbo datagram with others at depth:
        # count its bytes at the 1 MiB run's per-byte rate when lower.
        udp = min(udp, us("floor_1m", "udp") / 256)
    floor = seal + open_ + copy + 2 * crc + udp + pw
    iops = statistics.median(r[0] for r in runs[size])
    serve = statistics.median(r[1] for r in runs[size])
    fio = statistics.median(r[2] for r in runs[size])
    best = cores * 1e6 / (fio + serve + floor)
    print(f"{label}:")
    print(f"  serve: {iops:,.0f} {unit}; CPU per write: serve {serve:,.1f} us, fio {fio:,.1f} us "
          f"({(serve + fio) * iops / 1e6:.2f} of {cores} cores busy)")
    print(f"  required per replicated write: seal {seal:,.1f} + open {open_:,.1f} + copy {copy:,.1f}"
          f" + CRC 2 x {crc:,.1f} + UDP {udp:,.1f} + Secondary's pwrite {pw:,.1f} = {floor:,.1f} us")
    # C does all serve does and more: it cannot beat serve, whatever the
    # sum says when serve leaves cores idle.
    best = min(best, iops)
    print(f"  best protocol C with nothing else: {cores} cores / {fio + serve + floor:,.1f} us, at most serve's rate = "
          f"{best:,.0f} {unit} = {best / iops:.2f}x serve (target 0.5x)")
    print()
PY
