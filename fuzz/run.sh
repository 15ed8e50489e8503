#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time, starting from the seed
# corpus in fuzz/corpus/TARGET (new inputs go to a scratch copy, so the
# tree stays clean). Built without sanitizers (-s none): the decoders are
# safe Rust, and ASan made the 32 MiB frame reservations 10x slower.
# Exits non-zero on the first crash; the crashing input is left in
# fuzz/artifacts/TARGET/ (turn it into a unit test).
#
#   fuzz/run.sh [SECONDS_PER_TARGET]      default 20 (CI: about two minutes in all)
#   FUZZ_RUNS=10000000 fuzz/run.sh        a fixed number of executions instead
set -euo pipefail
cd "$(dirname "$0")"
SECS=${1:-20}
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
rustup toolchain list | grep -q nightly || { echo "fuzz: the nightly toolchain is required" >&2; exit 1; }
cargo +nightly fuzz build -O -s none
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tb-fuzz.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
for t in $(cargo +nightly fuzz list); do
  mkdir -p "$WORK/$t"
  if [[ -n ${FUZZ_RUNS:-} ]]; then
    limit=(-runs="$FUZZ_RUNS") what="$FUZZ_RUNS runs"
  else
    limit=(-max_total_time="$SECS") what="${SECS}s"
  fi
  echo "fuzz: $t ($what)"
  cargo +nightly fuzz run -O -s none "$t" "$WORK/$t" "corpus/$t" -- "${limit[@]}" -print_final_stats=1 2>"$WORK/$t.log" \
    || { tail -60 "$WORK/$t.log" >&2; echo "fuzz: $t crashed" >&2; exit 1; }
  grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "$WORK/$t.log" | sed "s/^/fuzz: $t: /"
done
