#!/usr/bin/env bash
# Deterministic simulator of a node pair (the real core): runs seeds and
# checks the design's invariants after every step.
#   scripts/sim.sh [--seeds N] [--seed S] [--first F] [--steps K] [--plant NAME] [--trace]
# A failing seed prints the line that replays it; the last line is
# `N seeds, N failed`. TWINBLOCK_PLANT=NAME selects a planted bug too.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
cargo build --quiet --release -p twinblock-sim
exec "$(release_dir)/twinblock-sim" "$@"
