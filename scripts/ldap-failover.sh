#!/usr/bin/env bash
# OpenLDAP failover end to end on one machine (needs root: losetup, mount):
# a witness and two twinblock nodes with the failover controller on
# loopback; slapd (MDB on ext4) runs on the Primary's export through the
# controller's hooks (scripts/ldap-hook.sh). Entries are added one by one;
# then the Primary's "availability zone" dies (slapd and twinblock killed
# with SIGKILL, its mount torn down). The survivor must take over by itself
# and serve every acknowledged entry within dead_time + 10 s. Finally the
# old Primary comes back as Secondary and resyncs (no failback).
#
# With --crash process only the twinblock process of a dies (a crash, an
# OOM kill): slapd and the mount it holds stay on a, as they would on a
# real host, until a's daemon starts again and runs on_demote for them.
# After a has come back and resynced, b's zone dies and a must serve
# every acknowledged entry again, those added on b included.
# With --crash process-fuse nbdfuse on a dies with it (the OOM killer took
# both, or nbdfuse lost its NBD connection): a's FUSE mount is left dead,
# every stat of it failing with ENOTCONN; a's takeover must clear it.
# With --crash slapd-fails b's slapd cannot start at the takeover (a
# broken configuration): b must say why in status's last_error; once the
# configuration is mended, `secondary --force` on b and the controller's
# next promotion serve every entry.
# Each node's slapd listens on a port of its own (as on its own host);
# clients go to the node the service address names.
#
#   scripts/ldap-failover.sh [--entries N] [--dead-time SECONDS] [--crash zone|process|process-fuse|slapd-fails]
#
# TWINBLOCK=path/to/twinblock uses that binary instead of building one.
# Prints the timeline and "PASS" (exit 0), or what went wrong (exit 1).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ENTRIES=200
DEAD=5
CRASH=zone
while (($#)); do
  case $1 in
    --entries) ENTRIES=$2; shift 2 ;;
    --dead-time) DEAD=$2; shift 2 ;;
    --crash) CRASH=$2; shift 2 ;;
    *) echo "usage: $0 [--entries N] [--dead-time SECONDS] [--crash zone|process|process-fuse|slapd-fails]" >&2; exit 2 ;;
  esac
done
[[ $(id -u) -eq 0 ]] || { echo "ldap-failover: needs root (losetup, mount)" >&2; exit 1; }
scripts/setup.sh >/dev/null   # slapd, ldap-utils, nbdfuse, ... on a fresh machine
for t in slapd ldapadd ldapsearch nbdfuse fusermount3 losetup mkfs.ext4 blkid findmnt python3; do
  command -v "$t" >/dev/null || { echo "ldap-failover: $t is missing (scripts/setup.sh installs it)" >&2; exit 1; }
done
BIN=${TWINBLOCK:-}
if [[ -z $BIN ]]; then
  cargo build --release -q --no-default-features   # the command mover is enough here
  BIN=$(release_dir)/twinblock
fi
HOOK=$PWD/scripts/ldap-hook.sh

export LDAP_DIR
LDAP_DIR=$(mktemp -d "${TMPDIR:-/tmp}/tb-ldap.XXXXXX")
PORT_a=$(free_port tcp) PORT_b=$(free_port tcp)
D=$LDAP_DIR
PIDS=()
cleanup() {
  set +e
  for n in a b; do LDAP_PORT=1 TWINBLOCK_NODE=$n TWINBLOCK_NBD=x TWINBLOCK_RESOURCE=r0 "$HOOK" demote >/dev/null 2>&1; done
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null
  for n in a b; do umount -l "$D/mnt-$n" 2>/dev/null; fusermount3 -u -z "$D/fuse-$n" 2>/dev/null; done
  [[ -n ${KEEP:-} ]] || rm -rf "$D"
}
trap cleanup EXIT

t0=$(date +%s.%N)
say() { printf '[%6.2fs] %s\n' "$(echo "$(date +%s.%N) - $t0" | bc)" "$*"; }
fail() { say "FAIL: $*"; for f in "$D"/*.log; do echo "--- $f"; tail -20 "$f"; done; exit 1; }

"$BIN" gen-certs --out "$D/certs" a b w >/dev/null
aq=$(free_port udp) bq=$(free_port udp) wq=$(free_port udp) an=$(free_port tcp) bn=$(free_port tcp)
pair_config "$D/r0.toml" r0 C 256M "$aq" "$an" "$bq" "$bn" "" \
  $'timeout = "3s"\nping-interval = "250ms"\nconnect-interval = "100ms"'
cat >>"$D/r0.toml" <<TOML

[nodes.w]
witness = true
address = "127.0.0.1:$wq"
meta = "w.state"
control = "w.sock"
cert = "certs/w.pem"
key = "certs/w.key"

[controller]
dead_time = "${DEAD}s"
heartbeat = "250ms"
on_promote = ["$HOOK promote"]
on_demote = ["$HOOK demote"]

[controller.address]
kind = "command"
command = "echo \$TWINBLOCK_NODE > $D/service-address"
TOML
for n in a b; do
  cat >"$D/slapd-$n.conf" <<CONF
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
pidfile $D/slapd-$n.pid
argsfile $D/slapd-$n.args
modulepath /usr/lib/ldap
moduleload back_mdb
database mdb
suffix "dc=example,dc=com"
rootdn "cn=admin,dc=example,dc=com"
rootpw secret
directory $D/mnt-$n/ldap
maxsize 268435456
CONF
done

start() { # start NAME VERB (the hooks' slapd listens on the node's port)
  local port=PORT_$1
  LDAP_PORT=${!port:-} "$BIN" "$2" --config "$D/r0.toml" --node "$1" >"$D/$1.out" 2>"$D/$1.log" &
  PIDS+=($!)
  eval "PID_$1=$!"
}
st() { "$BIN" status --config "$D/r0.toml" --node "$1" --json 2>/dev/null; }
field() { python3 -c 'import json,sys; d=json.load(sys.stdin); 
for k in sys.argv[1].split("."): d=d.get(k) if isinstance(d,dict) else None
print(d)' "$1"; }
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local until=$(($(date +%s) + $1)) what=$2; shift 2
  until "$@"; do (($(date +%s) < until)) || fail "timed out: $what"; sleep 0.2; done
}
is() { [[ $(st "$1" | field "$2" 2>/dev/null) == "$3" ]]; }
# The LDAP server the service address names.
uri() { local port=PORT_$(cat "$D/service-address" 2>/dev/null || echo a); echo "ldap://127.0.0.1:${!port}"; }
count() { ldapsearch -x -LLL -H "$(uri)" -b "ou=people,dc=example,dc=com" "(uid=*)" dn 2>/dev/null | grep -c '^dn:' || true; }
served() { [[ $(cat "$D/service-address") == "$1" ]] && (($(count) >= 1)); }

start w witness
start a up
start b up
wait_for 30 "a and b connected" is a connection Connected
say "witness and nodes up; first setup: primary --force on a"
"$BIN" primary --config "$D/r0.toml" --node a --force >/dev/null
ldap_up() { ldapsearch -x -H "$(uri)" -b "" -s base >/dev/null 2>&1; }
wait_for 60 "slapd on a" ldap_up
say "slapd serves from a's export (service address: $(cat "$D/service-address"))"
ldapadd -x -H "$(uri)" -D cn=admin,dc=example,dc=com -w secret >/dev/null <<LDIF
dn: dc=example,dc=com
objectClass: dcObject
objectClass: organization
o: example
dc: example

dn: ou=people,dc=example,dc=com
objectClass: organizationalUnit
ou: people
LDIF
acked=0
for i in $(seq 1 "$ENTRIES"); do
  printf 'dn: uid=user%d,ou=people,dc=example,dc=com\nobjectClass: inetOrgPerson\nuid: user%d\ncn: User %d\nsn: %d\n' "$i" "$i" "$i" "$i" |
    ldapadd -x -H "$(uri)" -D cn=admin,dc=example,dc=com -w secret >/dev/null
  acked=$i
done
say "$acked entries added (each acknowledged by slapd after its MDB commit)"
wait_for 120 "b UpToDate" is b disk UpToDate

kill_zone() { # kill_zone NODE: slapd and twinblock killed (SIGKILL), its kernel's mount gone
  local pid=PID_$1
  kill -9 "$(cat "$D/slapd-$1.pid")" "${!pid}"
  wait "${!pid}" 2>/dev/null || true
  umount -l "$D/mnt-$1" 2>/dev/null || true
  # (Only if still this node's: a recorded device may have been reused.)
  local dev back
  dev=$(cat "$D/loop-$1" 2>/dev/null || true)
  back=$([[ -n $dev ]] && losetup -n -O BACK-FILE --list "$dev" 2>/dev/null || true)
  [[ ${back% (deleted)} == "$D/fuse-$1/disk" ]] && losetup -d "$dev" 2>/dev/null || true
  fusermount3 -u -z "$D/fuse-$1" 2>/dev/null || true
}
if [[ $CRASH == slapd-fails ]]; then
  sed -i 's/^database mdb/database nosuchbackend/' "$D/slapd-b.conf"
  say "b's slapd configuration broken; availability zone of a fails"
  kill_zone a
  failed() { st b | field last_error | grep -q "slapd did not start: Unrecognized database type"; }
  wait_for $((DEAD + 30)) "b's last_error naming slapd's reason" failed
  [[ $(st b | field role) == Primary && $(cat "$D/service-address") == b ]] || fail "b is not Primary with the address"
  say "b Primary without slapd: $(st b | field last_error)"
  sed -i 's/^database nosuchbackend/database mdb/' "$D/slapd-b.conf"
  "$BIN" secondary --config "$D/r0.toml" --node b --force >/dev/null || fail "secondary --force on b"
  wait_for $((DEAD + 30)) "LDAP on b after its configuration was mended" served b
  n=$(count)
  ((n == acked)) || fail "$((acked - n)) acknowledged entries missing"
  echo "PASS: $n/$acked entries after slapd could not start at the takeover"
  exit 0
elif [[ $CRASH == process ]]; then
  say "twinblock on a crashes (SIGKILL); slapd and its mount stay on a"
  old_slapd=$(cat "$D/slapd-a.pid")
  kill -9 "$PID_a"
  wait "$PID_a" 2>/dev/null || true
elif [[ $CRASH == process-fuse ]]; then
  say "twinblock and nbdfuse on a crash (SIGKILL); slapd and its mounts stay on a, the FUSE one dead"
  old_slapd=$(cat "$D/slapd-a.pid")
  kill -9 "$PID_a" "$(cat "$D/nbdfuse-a.pid")"
  wait "$PID_a" 2>/dev/null || true
else
  say "availability zone of a fails: slapd and twinblock on a killed (SIGKILL)"
  kill_zone a
fi
killed=$(date +%s.%N)
wait_for $((DEAD + 30)) "LDAP back on b" served b
back=$(echo "$(date +%s.%N) - $killed" | bc)
n=$(count)
say "LDAP answers again after ${back}s (dead_time ${DEAD}s), from $(cat "$D/service-address"): $n of $acked entries"
[[ $(st b | field role) == Primary ]] || fail "b is not Primary"
[[ $(cat "$D/service-address") == b ]] || fail "the service address did not move to b"
((n == acked)) || fail "$((acked - n)) acknowledged entries missing after the failover"
python3 -c "import sys; sys.exit(0 if float('$back') <= $DEAD + 10 else 1)" || fail "took ${back}s, more than dead_time + 10 s"
ldapadd -x -H "$(uri)" -D cn=admin,dc=example,dc=com -w secret >/dev/null <<LDIF || fail "b refuses writes"
dn: uid=after,ou=people,dc=example,dc=com
objectClass: inetOrgPerson
uid: after
cn: After
sn: failover
LDIF

say "a comes back"
start a up
a_back() { [[ $(st a | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["role"], d["disk"], d["connection"])' 2>/dev/null) == "Secondary UpToDate Connected" ]]; }
wait_for 120 "a back as Secondary, in sync" a_back
sleep 2
[[ $(st a | field role) == Secondary && $(st b | field role) == Primary ]] || fail "roles changed after a came back (failback)"
say "a is Secondary and UpToDate again; b stays Primary (no automatic failback)"
if [[ $CRASH == process || $CRASH == process-fuse ]]; then
  # a's daemon, started again, ran on_demote for the reign its crash cut
  # short (the `<meta>.promoted` mark): the old slapd and mounts are gone.
  old_gone() { ! kill -0 "$old_slapd" 2>/dev/null && ! findmnt -rn --mountpoint "$D/mnt-a" >/dev/null 2>&1; }
  wait_for 30 "a's slapd and mount from before its crash gone" old_gone
  say "a's slapd and mount from before its crash were stopped when its daemon started again"
fi
if [[ $CRASH == process || $CRASH == process-fuse ]]; then
  say "availability zone of b fails: a must take over with what was left of its last reign"
  kill_zone b
  wait_for $((DEAD + 30)) "LDAP back on a" served a
  n=$(count)
  say "LDAP answers from $(cat "$D/service-address"): $n of $((acked + 1)) entries"
  ((n == acked + 1)) || fail "$((acked + 1 - n)) acknowledged entries missing after the second failover (a's old slapd or mount from before its crash?)"
  ldapadd -x -H "$(uri)" -D cn=admin,dc=example,dc=com -w secret >/dev/null <<LDIF || fail "a refuses writes"
dn: uid=again,ou=people,dc=example,dc=com
objectClass: inetOrgPerson
uid: again
cn: Again
sn: failover
LDIF
fi
echo "PASS: LDAP back in ${back}s after the Primary's loss (dead_time ${DEAD}s), $acked/$acked entries"
