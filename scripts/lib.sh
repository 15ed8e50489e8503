# Shared by the scripts: free loopback ports and a two-node resource file.
# Source it: . "$(dirname "$0")/lib.sh"

# release_dir: where cargo puts release builds (CARGO_TARGET_DIR or a
# cargo config may say elsewhere than ./target; before, the scripts ran
# ./target/release/..., absent then: helper-155).
release_dir() {
  local t
  t=$(cargo metadata --format-version 1 --no-deps 2>/dev/null | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
  echo "${t:-$PWD/target}/release"
}

# free_port udp|tcp: a port nothing listens on right now.
free_port() {
  python3 -c 'import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM if sys.argv[1]=="udp" else socket.SOCK_STREAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' "$1"
}

# pair_config FILE NAME PROTOCOL SIZE A_QUIC A_NBD B_QUIC B_NBD [B_CONNECT] [EXTRA]
# Nodes a and b on 127.0.0.1, files next to FILE, certificates in certs/.
# B_CONNECT: where a reaches b (a relay such as netem); EXTRA: more keys.
pair_config() {
  local file=$1 name=$2 protocol=$3 size=$4 aq=$5 an=$6 bq=$7 bn=$8 bc=${9:-} extra=${10:-}
  {
    printf 'name = "%s"\nprotocol = "%s"\nsize = "%s"\n%s\n\n[tls]\nca = "certs/ca.pem"\n' \
      "$name" "$protocol" "$size" "$extra"
    for n in a b; do
      local q n_port connect=""
      if [[ $n == a ]]; then q=$aq n_port=$an; else q=$bq n_port=$bn; fi
      [[ $n == b && -n $bc ]] && connect="connect = \"127.0.0.1:$bc\""
      printf '\n[nodes.%s]\naddress = "127.0.0.1:%s"\n%s\nnbd     = "127.0.0.1:%s"\ndisk    = "%s.img"\nmeta    = "%s.meta"\ncontrol = "%s.sock"\ncert    = "certs/%s.pem"\nkey     = "certs/%s.key"\n' \
        "$n" "$q" "$connect" "$n_port" "$n" "$n" "$n" "$n" "$n"
    done
  } >"$file"
}

# pair_promote BIN CONFIG: waits until node a is connected to b, then makes
# a Primary with --force (the first setup of fresh disks).
pair_promote() {
  local bin=$1 config=$2
  for _ in $(seq 100); do
    "$bin" status --config "$config" --node a --json 2>/dev/null | grep -q '"connection":"Connected"' && break
    sleep 0.1
  done
  "$bin" primary --config "$config" --node a --force >/dev/null
}

# bench_setup NAME PREFIX: what the replication benchmarks share — fio,
# nbdinfo and python3 present, a release build without the AWS SDK ($BIN;
# $TWINBLOCK_BIN instead names a binary built elsewhere),
# a work directory ($WORK, removed on exit) with certificates for a and b,
# and $PIDS, stopped on exit (stop_all stops them earlier).
bench_setup() {
  local name=$1 prefix=$2 t
  for t in fio nbdinfo python3; do
    command -v $t >/dev/null || { echo "$name: $t is missing (scripts/setup.sh)" >&2; exit 1; }
  done
  if [[ -n ${TWINBLOCK_BIN:-} ]]; then
    BIN=$TWINBLOCK_BIN # another build, for before/after comparisons
  else
    cargo build --release -q --no-default-features
    BIN=$(release_dir)/twinblock
  fi
  WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/$prefix.XXXXXX")
  PIDS=()
  trap 'stop_all; rm -rf "$WORK"' EXIT
  "$BIN" gen-certs --out "$WORK/certs" a b >/dev/null
}

stop_all() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}

# prefill URI FILES...: writes the export once end to end, then drops the
# files' page cache: large writes leave large folios behind, and a 4 KiB
# write into a large folio of an ext4 file costs far more than one into a
# small folio (ext4_block_write_begin walks the folio's buffer heads), so
# without this a run measures the prefill's folio sizes rather than the
# write path. Every side of a ratio starts the same way.
prefill() {
  local uri=$1; shift
  fio --name=fill --ioengine=nbd --uri="$uri" --rw=write --bs=1M --iodepth=8 --size="${SIZE:?}" --runtime=60 >/dev/null
  python3 -c '
import os, sys
for f in sys.argv[1:]:
    fd = os.open(f, os.O_RDWR)
    os.fdatasync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)' "$@"
}

# wait_nbd URI: until an NBD server answers there (10 s).
wait_nbd() { for _ in $(seq 100); do nbdinfo --size "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "no NBD at $1" >&2; exit 1; }

# pair MODE [RELAY_DELAY] [EXTRA]: starts a loopback pair of $SIZE (b
# reached through a netem relay when a delay is given; EXTRA: more lines in
# its resource file), a Primary, in sync; sets URI, CFG, NODE_PIDS and
# RELAY_PID (empty without a relay), and adds them to PIDS.
pair() {
  local mode=$1 delay=${2:-} extra=${3:-} relay=""
  RELAY_PID=""
  rm -f "$WORK"/{a,b}.{img,meta}*
  local aq bq an bn
  aq=$(free_port udp); bq=$(free_port udp); an=$(free_port tcp); bn=$(free_port tcp)
  if [[ -n $delay ]]; then
    relay=$(free_port udp)
    "$BIN" netem --listen "127.0.0.1:$relay" --forward "127.0.0.1:$bq" --delay "$delay" >"$WORK/netem.log" 2>&1 &
    PIDS+=($!)
    RELAY_PID=$!
  fi
  CFG=$WORK/r.toml
  pair_config "$CFG" bench "$mode" "$SIZE" "$aq" "$an" "$bq" "$bn" "$relay" "$extra"
  NODE_PIDS=()
  for n in a b; do
    "$BIN" up --config "$CFG" --node $n >/dev/null 2>"$WORK/$n.log" &
    PIDS+=($!)
    NODE_PIDS+=($!)
  done
  pair_promote "$BIN" "$CFG"
  URI="nbd://127.0.0.1:$an/bench"
  wait_nbd "$URI"
  wait_in_sync
}
wait_in_sync() { # until node a is Connected with nothing out of sync (at most 120 s)
  for _ in $(seq 1200); do
    "$BIN" status --config "$CFG" --node a --json | python3 -c '
import json,sys; s=json.load(sys.stdin); sys.exit(0 if s["connection"]=="Connected" and s["out_of_sync_bytes"]==0 and s["peer"]["disk"]=="UpToDate" else 1)' && return 0
    sleep 0.1
  done
  echo "the pair did not get in sync" >&2
}
