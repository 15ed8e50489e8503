#!/usr/bin/env bash
# The main job on an embedded default: a 1 GiB file-backed device in a
# temporary directory, exported over NBD on 127.0.0.1:10809 until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
DIR=$(mktemp -d "${TMPDIR:-/var/tmp}/twinblock-demo.XXXXXX")
trap 'rm -rf "$DIR"' EXIT
LISTEN=${LISTEN:-127.0.0.1:10809}
cat <<MSG
twinblock demo: disk $DIR/disk.img (1 GiB, sparse), NBD on $LISTEN

Connect from another terminal:
  nbdinfo nbd://$LISTEN
  qemu-io -f raw -t none nbd://$LISTEN -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M'
  fio --name=t --ioengine=nbd --uri=nbd://$LISTEN --rw=randwrite --bs=4k --iodepth=32 --size=256M
Mount it (as root; this kernel has no nbd module):
  mkdir -p /tmp/tb/fuse /tmp/tb/mnt
  nbdfuse /tmp/tb/fuse/disk nbd://$LISTEN &
  dev=\$(losetup -f --show /tmp/tb/fuse/disk); mkfs.ext4 -q \$dev; mount \$dev /tmp/tb/mnt
  ...; umount /tmp/tb/mnt; losetup -d \$dev; fusermount3 -u /tmp/tb/fuse
Ctrl-C stops the server (in-flight requests finish first).

MSG
target/release/twinblock serve --disk "$DIR/disk.img" --size 1G --listen "$LISTEN"
