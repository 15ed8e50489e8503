#!/usr/bin/env bash
# The controller's hooks for OpenLDAP on a twinblock export, as used by
# scripts/ldap-failover.sh (and a template for real deployments):
#
#   ldap-hook.sh promote   mount this node's export (nbdfuse + losetup +
#                          ext4; mkfs on first use), start slapd on it
#   ldap-hook.sh demote    stop slapd, unmount, detach
#
# Environment from the controller: TWINBLOCK_RESOURCE, TWINBLOCK_NODE,
# TWINBLOCK_NBD (host:port of this node's export). From the caller:
# LDAP_DIR (working directory: slapd-NODE.conf, mounts), LDAP_PORT.
# On a real host the kernel's nbd client (nbd-client) replaces nbdfuse.
set -euo pipefail
: "${LDAP_DIR:?}" "${LDAP_PORT:?}" "${TWINBLOCK_NODE:?}" "${TWINBLOCK_NBD:?}" "${TWINBLOCK_RESOURCE:?}"
node=$TWINBLOCK_NODE
fuse=$LDAP_DIR/fuse-$node
mnt=$LDAP_DIR/mnt-$node
loopfile=$LDAP_DIR/loop-$node
log() { echo "ldap-hook[$node] $*" >&2; }

# mounted PATH: something is mounted there, read from the mount table.
# `mountpoint` stats PATH, and a FUSE mount whose nbdfuse died (killed
# with twinblock, or at the loss of its NBD connection) fails every stat
# with ENOTCONN ("Transport endpoint is not connected"): `mountpoint`
# said no, the dead mount stayed, and `mkdir -p` on it failed every
# later promote (review, helper-158: b's `up` killed during its takeover
# and restarted; scripts/ldap-failover.sh --crash process-fuse).
mounted() { findmnt -rn --mountpoint "$1" >/dev/null 2>&1; }

# detach DEV: detaches a loop device only if it is this node's (its
# backing file is this hook's FUSE disk): a device recorded by an earlier
# reign may have been detached and reused by anything else since.
detach() {
  [[ -n $1 ]] || return 0
  local back
  back=$(losetup -n -O BACK-FILE --list "$1" 2>/dev/null || true)
  if [[ ${back% (deleted)} == "$fuse/disk" ]]; then
    losetup -d "$1" 2>/dev/null || true
  fi
}

# stop_slapd: stops the slapd this hook started, if it still runs.
stop_slapd() {
  local pid
  pid=$(cat "$LDAP_DIR/slapd-$node.pid" 2>/dev/null || true)
  if [[ -n $pid ]] && kill "$pid" 2>/dev/null; then
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
}

# stale: what an earlier reign left, when twinblock died under it (a
# crash, an OOM kill: slapd and the mount stay, on an NBD connection that
# is gone). None of it may serve: slapd answers from the pages it holds,
# not from the export, and this node's copy has been resynced since.
stale() {
  stop_slapd
  if mounted "$mnt"; then
    log "a mount from before: unmounting it"
    umount "$mnt" 2>/dev/null || umount -l "$mnt"
  fi
  local dev
  for dev in $(losetup -j "$fuse/disk" 2>/dev/null | cut -d: -f1) $(cat "$loopfile" 2>/dev/null || true); do
    detach "$dev"
  done
  rm -f "$loopfile"
  if mounted "$fuse"; then
    fusermount3 -u "$fuse" 2>/dev/null || fusermount3 -u -z "$fuse"
  fi
  rm -f "$LDAP_DIR/nbdfuse-$node.pid"
}

promote() {
  # Never reuse a mount, loop device or slapd found here: on_demote did
  # not run (twinblock was killed), so they are a previous reign's. (Before
  # the mkdir: a dead FUSE mount fails it.)
  stale
  mkdir -p "$fuse" "$mnt"
  if ! mounted "$fuse"; then
    # nbdfuse stays in the foreground: detach it (and keep it off the
    # hook's output pipe, which the controller reads to the end).
    rm -f "$LDAP_DIR/nbdfuse-$node.pid"
    setsid nbdfuse -P "$LDAP_DIR/nbdfuse-$node.pid" "$fuse/disk" \
      "nbd://$TWINBLOCK_NBD/$TWINBLOCK_RESOURCE" </dev/null >/dev/null 2>&1 &
    for _ in $(seq 100); do [[ -s $LDAP_DIR/nbdfuse-$node.pid ]] && break; sleep 0.1; done
    [[ -e $fuse/disk ]] || { log "nbdfuse did not come up"; exit 1; }
  fi
  local dev
  dev=$(losetup -j "$fuse/disk" | cut -d: -f1 | head -1)
  [[ -n $dev ]] || dev=$(losetup -f --show "$fuse/disk")
  echo "$dev" >"$loopfile"
  if ! blkid "$dev" >/dev/null 2>&1; then
    # Only a blank export is formatted: blkid also fails on a read error,
    # and formatting then would replace the replicated file system (review,
    # helper-122). Its first MiB must read, and read as zeroes.
    if ! cmp -s -n 1048576 "$dev" /dev/zero; then
      log "no file system found on $dev, and its first MiB is not blank (or does not read): not formatting it"
      exit 1
    fi
    log "no filesystem yet: mkfs.ext4"
    mkfs.ext4 -q -F "$dev"
  fi
  mounted "$mnt" || mount "$dev" "$mnt"
  mkdir -p "$mnt/ldap"
  # slapd says why it did not start on stderr: keep it for the
  # controller's last_error (the hook's stderr tail).
  if ! slapd -f "$LDAP_DIR/slapd-$node.conf" -h "ldap://127.0.0.1:$LDAP_PORT/" </dev/null \
    >"$LDAP_DIR/slapd-$node.start" 2>&1; then
    log "slapd did not start: $(tail -c 300 "$LDAP_DIR/slapd-$node.start" | tr '\n' ' ')"
    exit 1
  fi
  for _ in $(seq 100); do
    if ldapsearch -x -H "ldap://127.0.0.1:$LDAP_PORT" -b "" -s base >/dev/null 2>&1; then
      log "slapd serves ldap://127.0.0.1:$LDAP_PORT from $mnt"
      return 0
    fi
    sleep 0.1
  done
  log "slapd does not answer on ldap://127.0.0.1:$LDAP_PORT"
  exit 1
}

demote() {
  stop_slapd
  if mounted "$mnt"; then umount "$mnt" 2>/dev/null || umount -l "$mnt"; fi
  [[ -s $loopfile ]] && detach "$(cat "$loopfile")"
  if mounted "$fuse"; then
    for _ in $(seq 50); do fusermount3 -u "$fuse" 2>/dev/null && break; sleep 0.1; done
    mounted "$fuse" && fusermount3 -u -z "$fuse"
  fi
  log "slapd stopped, export released"
}

case "${1:-}" in
  promote) promote ;;
  demote) demote ;;
  *) echo "usage: ldap-hook.sh promote|demote" >&2; exit 2 ;;
esac
