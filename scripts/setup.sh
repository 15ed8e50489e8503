#!/usr/bin/env bash
# Installs what twinblock's tests and benchmarks need (Debian packages).
# Idempotent: does nothing when everything is already there.
set -euo pipefail

PACKAGES=(libnbd-bin nbdfuse nbdkit fio e2fsprogs qemu-utils fuse3 python3-libnbd util-linux mount procps iproute2)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "setup: all packages present"
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
echo "setup: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
