#!/usr/bin/env bash
# The replicated path side by side (issue 10, point 4): fio on the Primary of
# a loopback pair (file-backed) in protocols A, B and C (and C with a
# disk-timeout, and C without busy polling, against C) against the
# standalone `twinblock serve` on the same kind of file; protocol C through
# `twinblock netem` relays (1 ms nominal RTT) against the relay's measured
# round trip and the 32/RTT ceiling; adaptive mode under a 40 ms RTT against
# its latency budget. Prints ratios, and with --repeat N the median of N runs
# (each run measures standalone and every mode again, interleaved, so load
# from elsewhere on the machine hits both sides of a ratio alike).
#
#   scripts/bench-latency.sh [--runtime SECS] [--size SIZE] [--repeat N]
#                            [--relay-delay DUR] [--adaptive-delay DUR]
#                            [--budget DUR] [--adaptive-size SIZE]
#                            [--only loopback|relay|adaptive]
#                            [--halt-poll NS]
#
# --halt-poll NS sets the guest kernel's halt polling (cpuidle-haltpoll's
# guest_halt_poll_ns: how long an idle vCPU polls before it halts) for the
# run and restores it on exit. Some VMs boot with it off (0): every
# hand-off to a thread on an idle vCPU then waits for the hypervisor to
# wake a halted vCPU, and a replicated write crosses several threads.
# Every disk is written once end to end before it is measured (1 MiB
# writes), so no run pays for first-touch allocation or the activity log's
# warm-up (an extent's first write waits for a journal update) in a way the
# other side of its ratio does not. A pair is measured once it is in sync
# (a forced first promotion may start a full sync); the adaptive pair is
# smaller (--adaptive-size, 128M) so that sync is short at a 40 ms RTT.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

RUNTIME=5
SIZE=1G
REPEAT=1
RELAY_DELAY=500us
ADAPTIVE_DELAY=20ms
ADAPTIVE_SIZE=128M
BUDGET=3ms
ONLY=""
HALT_POLL=""
while (($#)); do
  case $1 in
    --runtime) RUNTIME=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --repeat) REPEAT=$2; shift 2 ;;
    --relay-delay) RELAY_DELAY=$2; shift 2 ;;
    --adaptive-delay) ADAPTIVE_DELAY=$2; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    --adaptive-size) ADAPTIVE_SIZE=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --halt-poll) HALT_POLL=$2; shift 2 ;;
    *)
      sed -n '2,/^set -e/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
      exit 2 ;;
  esac
done
bench_setup bench-latency tb-blat
HALT_POLL_FILE=/sys/module/haltpoll/parameters/guest_halt_poll_ns
halt_poll_active() { [[ $(cat /sys/devices/system/cpu/cpuidle/current_driver 2>/dev/null) == haltpoll && -r $HALT_POLL_FILE ]]; }
if [[ -n $HALT_POLL ]]; then
  if ! halt_poll_active || [[ ! -w $HALT_POLL_FILE ]]; then
    echo "bench-latency: --halt-poll needs root and the cpuidle-haltpoll driver in use ($HALT_POLL_FILE)" >&2
    exit 1
  fi
  HALT_POLL_WAS=$(cat "$HALT_POLL_FILE")
  trap 'echo "$HALT_POLL_WAS" >"$HALT_POLL_FILE"; stop_all; rm -rf "$WORK"' EXIT
  echo "$HALT_POLL" >"$HALT_POLL_FILE"
fi
RES=$WORK/results # lines: run key value...
: >"$RES"


# node_ticks: CPU time (user + system, clock ticks) used so far by the
# processes in $NODE_PIDS (the standalone server or the pair's two nodes;
# not fio, not the relay).
NODE_PIDS=()
node_ticks() {
  local p t=0 u s
  for p in "${NODE_PIDS[@]}"; do
    read -r u s < <(cut -d' ' -f14,15 "/proc/$p/stat" 2>/dev/null || echo "0 0")
    t=$((t + u + s))
  done
  echo "$t"
}
# relay_ticks: the same for the pair's netem relay ($RELAY_PID; 0 without).
RELAY_PID=""
relay_ticks() {
  local u s
  [[ -n $RELAY_PID ]] || { echo 0; return; }
  read -r u s < <(cut -d' ' -f14,15 "/proc/$RELAY_PID/stat" 2>/dev/null || echo "0 0")
  echo $((u + s))
}
# fio_run URI ARGS...: one job; prints "iops MiB/s clat_mean_us clat_p50_us
# clat_p99_us cpu_us_per_op relay_cpu_pct fio_cpu_us_per_op" (the nodes'
# CPU time per operation, over the whole run: what a write costs the
# machine, whatever it waits for; the relay's CPU in per cent of a core, 0
# without one; fio's own CPU time per operation, as fio counts it).
fio_run() {
  local uri=$1; shift
  local c0 t0 c1 t1 r0 r1
  c0=$(node_ticks); r0=$(relay_ticks); t0=$(date +%s.%N)
  fio --name=b --ioengine=nbd --uri="$uri" "$@" --size="$SIZE" --time_based --runtime="$RUNTIME" \
      --ramp_time=1 --output-format=json --output="$WORK/out.json" >/dev/null
  c1=$(node_ticks); r1=$(relay_ticks); t1=$(date +%s.%N)
  python3 -c '
import json,sys; j=json.load(open(sys.argv[1]))["jobs"][0]; w=j["write"]; c=w["clat_ns"]; p=c.get("percentile",{})
ticks, tck, wall = float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[5]) - float(sys.argv[4])
cpu = ticks / tck * 1e6 / max(w["iops"] * wall, 1)
relay = float(sys.argv[6]) / tck / wall * 100
fio = (j["usr_cpu"] + j["sys_cpu"]) / 100 * 1e6 / max(w["iops"], 1)
print(w["iops"], w["bw_bytes"]/2**20, c["mean"]/1e3, p.get("50.000000",0)/1e3, p.get("99.000000",0)/1e3, cpu, relay, fio)' \
    "$WORK/out.json" "$((c1 - c0))" "$(getconf CLK_TCK)" "$t0" "$t1" "$((r1 - r0))"
}

status_field() { "$BIN" status --config "$CFG" --node a --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]] or 0)' "$1"; }

# relay_rtt DELAY: the round trip through two relay hops of DELAY each, as a
# datagram sees it (netem relay -> UDP echo -> back): median of 300 pings, us.
relay_rtt() {
  local echo_port relay
  echo_port=$(free_port udp); relay=$(free_port udp)
  python3 -c '
import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", int(sys.argv[1])))
while True:
    d,a=s.recvfrom(65536); s.sendto(d,a)' "$echo_port" &
  local echo_pid=$!
  "$BIN" netem --listen "127.0.0.1:$relay" --forward "127.0.0.1:$echo_port" --delay "$1" >/dev/null 2>&1 &
  local relay_pid=$!
  sleep 0.5
  python3 -c '
import socket,sys,time,statistics
s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1); to=("127.0.0.1", int(sys.argv[1]))
rtts=[]
for i in range(300):
    t=time.perf_counter(); s.sendto(b"x"*64, to)
    try: s.recvfrom(100)
    except socket.timeout: continue
    rtts.append((time.perf_counter()-t)*1e6)
    time.sleep(0.002)
print(statistics.median(rtts[20:]))' "$relay"
  kill "$echo_pid" "$relay_pid" 2>/dev/null || true
  wait "$echo_pid" "$relay_pid" 2>/dev/null || true
}

WORKLOADS=(
  "4k randwrite QD1|--rw=randwrite --bs=4k --iodepth=1"
  "4k randwrite QD32|--rw=randwrite --bs=4k --iodepth=32"
  "1M write QD8|--rw=write --bs=1M --iodepth=8"
)
record() { echo "$*" >>"$RES"; }

for ((run = 1; run <= REPEAT; run++)); do
  echo "== run $run of $REPEAT" >&2
  if [[ -z $ONLY || $ONLY == loopback ]]; then
    # Standalone and each mode, workload by workload.
    P=$(free_port tcp)
    rm -f "$WORK/serve.img"
    "$BIN" serve --disk "$WORK/serve.img" --size "$SIZE" --listen "127.0.0.1:$P" >/dev/null 2>"$WORK/serve.log" &
    PIDS+=($!)
    NODE_PIDS=($!)
    RELAY_PID=""
    wait_nbd "nbd://127.0.0.1:$P"
    prefill "nbd://127.0.0.1:$P" "$WORK/serve.img"
    for w in "${WORKLOADS[@]}"; do
      IFS='|' read -r name args <<<"$w"
      # shellcheck disable=SC2086
      record "$run" "serve|$name" "$(fio_run "nbd://127.0.0.1:$P" $args)"
    done
    stop_all
    # Ct: protocol C with a disk-timeout (every store operation on the
    # node's store thread), against C; Cp: C without busy polling.
    for MODE in C Ct Cp B A; do
      case $MODE in
        Ct) pair C "" 'disk-timeout = "30s"' ;;
        Cp) pair C "" 'busy-poll = "0"' ;;
        *) pair "$MODE" ;;
      esac
      prefill "$URI" "$WORK/a.img" "$WORK/b.img"
      for w in "${WORKLOADS[@]}"; do
        IFS='|' read -r name args <<<"$w"
        # shellcheck disable=SC2086
        record "$run" "$MODE|$name" "$(fio_run "$URI" $args)"
      done
      stop_all
    done
  fi
  if [[ -z $ONLY || $ONLY == relay ]]; then
    record "$run" "relay|rtt" "$(relay_rtt "$RELAY_DELAY")"
    pair C "$RELAY_DELAY"
    prefill "$URI" "$WORK/a.img" "$WORK/b.img"
    record "$run" "relay|quic_rtt" "$(status_field rtt_us)"
    record "$run" "relay|4k randwrite QD1" "$(fio_run "$URI" --rw=randwrite --bs=4k --iodepth=1)"
    seen=$(wc -l <"$WORK/netem.log")
    record "$run" "relay|4k randwrite QD32" "$(fio_run "$URI" --rw=randwrite --bs=4k --iodepth=32)"
    # The relay's summary (every 5 s of traffic) of the window that ends
    # after the run: the busiest one since it started is the run's.
    for _ in $(seq 70); do
      (($(grep -c "sends, late by" "$WORK/netem.log") > $(head -n "$seen" "$WORK/netem.log" | grep -c "sends, late by") + 1)) && break
      sleep 0.1
    done
    record "$run" "relay|late" "$(tail -n "+$((seen + 1))" "$WORK/netem.log" | python3 -c '
import re, sys
w = [tuple(int(g or 0) for g in m.groups()) for m in (re.search(r"(\d+) sends, late by (\d+)us \(median\), (\d+)us \(p99\)(?:.*?; read (\d+)us \(median\), (\d+)us \(p99\) after arrival)?", l) for l in sys.stdin) if m]
print(*(max(w)[1:] if w else (0, 0, 0, 0)))')"
    stop_all
  fi
  if [[ -z $ONLY || $ONLY == adaptive ]]; then
    FULL_SIZE=$SIZE; SIZE=$ADAPTIVE_SIZE
    pair adaptive "$ADAPTIVE_DELAY" "$(printf '\n[adaptive]\nlatency_budget = "%s"' "$BUDGET")"
    prefill "$URI" "$WORK/a.img" "$WORK/b.img"
    record "$run" "adaptive|4k randwrite QD1" "$(fio_run "$URI" --rw=randwrite --bs=4k --iodepth=1)"
    record "$run" "adaptive|state" "$("$BIN" status --config "$CFG" --node a --json | python3 -c '
import json,sys; s=json.load(sys.stdin); print(s["connection"], s["counters"]["mode_switches"], s["rtt_us"] or 0)')"
    stop_all
    SIZE=$FULL_SIZE
  fi
done

HALT_NOW="not in use (cpuidle driver: $(cat /sys/devices/system/cpu/cpuidle/current_driver 2>/dev/null || echo none))"
if halt_poll_active; then HALT_NOW="$(cat "$HALT_POLL_FILE") ns"; fi
# The host's speed, which moves every figure from one day to the next (this
# VM has landed on hosts whose AES-GCM ran from about 2.3 to 8 GB/s): one
# core's AES-128-GCM, the cipher the link uses, in 8 KiB blocks.
AES_NOW=$(openssl speed -seconds 1 -evp aes-128-gcm -bytes 8192 2>/dev/null |
    awk '/^AES-128-GCM/ { printf "%.2f GB/s", $2 / 1e6 }')
python3 - "$RES" "$REPEAT" "$RUNTIME" "$SIZE" "$RELAY_DELAY" "$ADAPTIVE_DELAY" "$BUDGET" "$ADAPTIVE_SIZE" "$HALT_NOW" "${AES_NOW:-not measured (no openssl)}" <<'PY'
import sys, statistics
from collections import defaultdict
res, repeat, runtime, size, relay_delay, adaptive_delay, budget = sys.argv[1:8]
def load():
    d = defaultdict(list)  # key -> list of field lists
    for line in open(res):
        run, rest = line.rstrip("\n").split(" ", 1)
        head, _, tail = rest.partition("|")
        # the workload name is the words before the first numeric/state field
        words = tail.split(" ")
        for i, w in enumerate(words):
            try:
                float(w)
                break
            except ValueError:
                if w in ("Connected", "Ahead", "SyncSource", "SyncTarget", "Behind", "Connecting", "StandAlone"):
                    break
        name = " ".join(words[:i]); vals = words[i:]
        d[f"{head}|{name}"].append(vals)
    return d
d = load()
def med(key, idx=0):
    v = [float(x[idx]) for x in d.get(key, []) if len(x) > idx]
    return statistics.median(v) if v else None
def meds(key, idx=0):
    return [float(x[idx]) for x in d.get(key, []) if len(x) > idx]
n = int(repeat)
print(f"twinblock replication benchmark: file size {size}, {runtime}s per fio run, "
      f"{'median of ' + repeat + ' runs' if n > 1 else '1 run'}; guest halt polling: {sys.argv[9]}")
print(f"this host's AES-128-GCM, one core, 8 KiB blocks (openssl speed): {sys.argv[10]}")
if any(k.startswith("serve|") for k in d):
    print("\nloopback (fio on the Primary; ratio = mode / standalone serve, per run, then the median)")
    print(f"{'workload':<19}{'serve':>16}{'C':>26}{'B':>26}{'A':>26}")
    for name, metric, unit in (("4k randwrite QD1", 0, "IOPS"), ("4k randwrite QD32", 0, "IOPS"), ("1M write QD8", 1, "MiB/s")):
        base = meds(f"serve|{name}", metric)
        cells = [f"{statistics.median(base):,.0f} {unit}" if base else "-"]
        for mode in "CBA":
            v = meds(f"{mode}|{name}", metric)
            lat = med(f"{mode}|{name}", 2)
            if not v or not base:
                cells.append("-"); continue
            ratios = [a / b for a, b in zip(v, base)]
            cells.append(f"{statistics.median(v):,.0f} ({statistics.median(ratios):.2f}x, {lat:,.0f}us)")
        print(f"{name:<19}{cells[0]:>16}{cells[1]:>26}{cells[2]:>26}{cells[3]:>26}")
    print("\nCPU time of the nodes per operation (both nodes; serve: the one server), us; fio's own not counted")
    print(f"{'workload':<19}{'serve':>16}{'C':>26}{'B':>26}{'A':>26}")
    for name in ("4k randwrite QD1", "4k randwrite QD32", "1M write QD8"):
        cells = [med(f"{m}|{name}", 5) for m in ("serve", "C", "B", "A")]
        print(f"{name:<19}" + "".join(f"{'-' if c is None else format(c, ',.1f'):>{w}}" for c, w in zip(cells, (16, 26, 26, 26))))
    print("  C against A (the same replication without waiting for the peer), per run:")
    for name, metric in (("4k randwrite QD32", 0), ("1M write QD8", 1)):
        a = meds(f"A|{name}", metric); c = meds(f"C|{name}", metric)
        if a and c:
            print(f"    {name}: " + ", ".join(f"{x/y:.2f}" for x, y in zip(c, a)))
    print("  C with disk-timeout = 30s against C (medians; per run):")
    for name, metric in (("4k randwrite QD32", 0), ("1M write QD8", 1)):
        t = meds(f"Ct|{name}", metric); c = meds(f"C|{name}", metric)
        if t and c:
            print(f"    {name}: {statistics.median(t):,.0f} vs {statistics.median(c):,.0f}; "
                  + ", ".join(f"{x/y:.2f}" for x, y in zip(t, c))
                  + f"; CPU per op {med(f'Ct|{name}', 5):,.1f} vs {med(f'C|{name}', 5):,.1f} us")
    print("  C with busy-poll = 0 (the link's threads sleep at once) against C (medians; per run):")
    for name, metric in (("4k randwrite QD1", 0), ("4k randwrite QD32", 0), ("1M write QD8", 1)):
        t = meds(f"Cp|{name}", metric); c = meds(f"C|{name}", metric)
        if t and c:
            print(f"    {name}: {statistics.median(t):,.0f} vs {statistics.median(c):,.0f}; "
                  + ", ".join(f"{x/y:.2f}" for x, y in zip(t, c))
                  + f"; latency {med(f'Cp|{name}', 2):,.0f} vs {med(f'C|{name}', 2):,.0f} us"
                  + f"; CPU per op {med(f'Cp|{name}', 5):,.1f} vs {med(f'C|{name}', 5):,.1f} us")
    if n > 1:
        for name, metric in (("4k randwrite QD32", 0), ("1M write QD8", 1)):
            base = meds(f"serve|{name}", metric); v = meds(f"C|{name}", metric)
            print(f"  C/serve {name} per run: " + ", ".join(f"{a/b:.2f}" for a, b in zip(v, base)))
    # The machine's CPU per operation (the nodes' plus fio's): with both
    # cores busy, rates go as its inverse. Both terms slow down together
    # when the host lends this VM less CPU, so their quotient holds still
    # where the rates' quotient swings between runs.
    print("  the machine's CPU per operation (nodes + fio), us, and serve's over C's (the ratio the cores allow), per run:")
    for name in ("4k randwrite QD32", "1M write QD8"):
        def machine(mode):
            return [float(x[5]) + float(x[7]) for x in d.get(f"{mode}|{name}", []) if len(x) > 7]
        s_, c_ = machine("serve"), machine("C")
        if s_ and c_:
            q = [a / b for a, b in zip(s_, c_)]
            print(f"    {name}: serve {statistics.median(s_):,.1f}, C {statistics.median(c_):,.1f}; "
                  + ", ".join(f"{x:.2f}" for x in q) + f" (median {statistics.median(q):.2f})")
if "relay|rtt" in d:
    rtts = meds("relay|rtt"); rtt = statistics.median(rtts)
    qrtt = med("relay|quic_rtt")
    qd1 = meds("relay|4k randwrite QD1", 2); qd1p50 = med("relay|4k randwrite QD1", 3)
    qd32 = meds("relay|4k randwrite QD32", 0)
    print(f"\nprotocol C through netem relays ({relay_delay} each way)")
    print(f"  relay RTT (UDP ping through the relay, median): {rtt:,.0f} us; QUIC's estimate on the link: {qrtt:,.0f} us")
    print(f"  4k QD1 write latency: mean {statistics.median(qd1):,.0f} us, p50 {qd1p50:,.0f} us "
          f"= RTT + {statistics.median(qd1) - rtt:,.0f} us (target: within 300 us)")
    ratios = [v / (32 / (r / 1e6)) for v, r in zip(qd32, rtts)]
    print(f"  4k QD32: {statistics.median(qd32):,.0f} IOPS; ceiling 32/RTT = {32 / (rtt / 1e6):,.0f}: "
          f"{statistics.median(ratios):.2f} of it (target: 0.8)")
    if n > 1:
        print("  QD32 / (32/RTT) per run: " + ", ".join(f"{r:.2f}" for r in ratios))
    if "relay|late" in d:
        print(f"  the relay's sends during QD32 (its busiest 5 s), late beyond the delay: "
              f"{med('relay|late', 0):,.0f} us median, {med('relay|late', 1):,.0f} us p99 "
              "(each write crosses it twice)")
        print(f"  datagrams waiting to be read by the relay (part of the delay, which counts from arrival): "
              f"{med('relay|late', 2):,.0f} us median, {med('relay|late', 3):,.0f} us p99")
    print(f"  the relay's own CPU during QD1 / QD32: {med('relay|4k randwrite QD1', 6):.0f}% / "
          f"{med('relay|4k randwrite QD32', 6):.0f}% of a core (a real network takes none of the nodes')")
if "adaptive|4k randwrite QD1" in d:
    print(f"\nadaptive (latency_budget {budget}) through netem relays ({adaptive_delay} each way), {sys.argv[8]} device")
    p50 = med("adaptive|4k randwrite QD1", 3); p99 = med("adaptive|4k randwrite QD1", 4)
    mean = med("adaptive|4k randwrite QD1", 2); iops = med("adaptive|4k randwrite QD1", 0)
    st = d.get("adaptive|state", [])
    print(f"  4k QD1: {iops:,.0f} IOPS, clat mean {mean:,.0f} us, p50 {p50:,.0f} us, p99 {p99:,.0f} us "
          f"(budget {budget})")
    for s in st:
        print(f"  state after the run: {s[0]}, mode switches {s[1]}, QUIC RTT {float(s[2])/1e3:.1f} ms")
PY
