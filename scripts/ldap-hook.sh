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

promote() {
  mkdir -p "$fuse" "$mnt"
  if ! mountpoint -q "$fuse"; then
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
    log "no filesystem yet: mkfs.ext4"
    mkfs.ext4 -q -F "$dev"
  fi
  mountpoint -q "$mnt" || mount "$dev" "$mnt"
  mkdir -p "$mnt/ldap"
  slapd -f "$LDAP_DIR/slapd-$node.conf" -h "ldap://127.0.0.1:$LDAP_PORT/" </dev/null >/dev/null 2>&1
  for _ in $(seq 100); do
    ldapsearch -x -H "ldap://127.0.0.1:$LDAP_PORT" -b "" -s base >/dev/null 2>&1 && break
    sleep 0.1
  done
  log "slapd serves ldap://127.0.0.1:$LDAP_PORT from $mnt"
}

demote() {
  local pid
  pid=$(cat "$LDAP_DIR/slapd-$node.pid" 2>/dev/null || true)
  if [[ -n $pid ]] && kill "$pid" 2>/dev/null; then
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  mountpoint -q "$mnt" && umount "$mnt"
  [[ -s $loopfile ]] && losetup -d "$(cat "$loopfile")" 2>/dev/null || true
  if mountpoint -q "$fuse"; then
    for _ in $(seq 50); do fusermount3 -u "$fuse" 2>/dev/null && break; sleep 0.1; done
  fi
  log "slapd stopped, export released"
}

case "${1:-}" in
  promote) promote ;;
  demote) demote ;;
  *) echo "usage: ldap-hook.sh promote|demote" >&2; exit 2 ;;
esac
