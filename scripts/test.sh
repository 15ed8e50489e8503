#!/usr/bin/env bash
# Installs what the tests need, then runs every test of the workspace:
# codec unit tests, store tests, and end-to-end tests that start real
# twinblock processes and drive them with real NBD clients.
# Tests that need root or a tool skip locally with a reason; with CI=true
# they fail instead.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --workspace --all-targets
cargo test --workspace --all-targets "$@"
