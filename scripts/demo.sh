#!/usr/bin/env bash
# The main job on an embedded default: a replicated pair on loopback with
# file-backed disks in a temporary directory. Node a is Primary and exports
# NBD on 127.0.0.1:10809; node b is its Secondary (read-only NBD on 10810).
# Each node serves Prometheus metrics (a: 127.0.0.1:9942, b: 9943).
# Shows node a's live status until Ctrl-C, then stops both nodes.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
# The first build takes a couple of minutes: show its progress (cargo
# draws a progress bar on a terminal, and lists each crate otherwise).
# The demo needs no AWS address mover: it builds without the AWS SDK
# (`--no-default-features`), which would add several minutes.
# Cargo builds where CARGO_TARGET_DIR (or a cargo config) says, not always
# in ./target: lib.sh's release_dir asks it (before, the demo ran
# target/release/twinblock, absent with CARGO_TARGET_DIR set: "No such file
# or directory").
# TWINBLOCK names a binary built elsewhere (tests/newcomer.rs runs the
# demo so), as in ldap-failover.sh.
if [[ -n ${TWINBLOCK:-} ]]; then
  BIN=$TWINBLOCK
else
  BIN=$(release_dir)/twinblock
  if [[ ! -x $BIN ]]; then
    echo "demo: building twinblock (release, without the AWS SDK; about two minutes the first time)..."
  fi
  cargo build --release --no-default-features
fi
DIR=$(mktemp -d "${TMPDIR:-/var/tmp}/twinblock-demo.XXXXXX")
PROTOCOL=${PROTOCOL:-C}
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "logs were in $DIR (removed)"
  rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

"$BIN" gen-certs --out "$DIR/certs" a b >/dev/null
pair_config "$DIR/demo.toml" demo "$PROTOCOL" 1G 7788 10809 7789 10810
sed -i -e 's/^\[nodes\.a\]$/[nodes.a]\nmetrics = "127.0.0.1:9942"/' \
  -e 's/^\[nodes\.b\]$/[nodes.b]\nmetrics = "127.0.0.1:9943"/' "$DIR/demo.toml"
for n in a b; do
  "$BIN" up --config "$DIR/demo.toml" --node $n >"$DIR/$n.out" 2>"$DIR/$n.log" &
  PIDS+=($!)
done
pair_promote "$BIN" "$DIR/demo.toml"
C="$BIN status --config $DIR/demo.toml --node"
cat <<MSG
twinblock demo: resource "demo" (1 GiB, protocol $PROTOCOL) in $DIR
  node a: Primary,   NBD nbd://127.0.0.1:10809/demo, replication 127.0.0.1:7788
  node b: Secondary, NBD nbd://127.0.0.1:10810/demo (read-only), replication 127.0.0.1:7789

Connect from another terminal:
  nbdinfo nbd://127.0.0.1:10809/demo
  qemu-io -f raw -t none nbd://127.0.0.1:10809/demo -c 'write -P 0xab 0 1M'
  fio --name=t --ioengine=nbd --uri=nbd://127.0.0.1:10809/demo --rw=randwrite --bs=4k --iodepth=32 --size=256M
Mount it (as root; this kernel has no nbd module):
  mkdir -p /tmp/tb/fuse /tmp/tb/mnt; rm -f /tmp/tb/pid
  nbdfuse -P /tmp/tb/pid /tmp/tb/fuse/disk nbd://127.0.0.1:10809/demo &
  while [ ! -s /tmp/tb/pid ]; do sleep 0.1; done   # nbdfuse is ready
  dev=\$(losetup -f --show /tmp/tb/fuse/disk); mkfs.ext4 -q \$dev; mount \$dev /tmp/tb/mnt
  ...; umount /tmp/tb/mnt; losetup -d \$dev; fusermount3 -u /tmp/tb/fuse
Compare the two disks (while the demo runs, once writes are done): cmp $DIR/a.img $DIR/b.img
Other views: $C b   |   $C a --json
State changes: $BIN events --config $DIR/demo.toml --node a --now
Metrics:       curl -s http://127.0.0.1:9942/metrics | grep -v '^#'   (node b: 9943)
Ctrl-C stops both nodes. Live status of node a follows.
MSG
sleep 3
"$BIN" status --config "$DIR/demo.toml" --node a --watch
