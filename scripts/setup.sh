#!/usr/bin/env bash
# Installs what twinblock's tests and benchmarks need (Debian packages).
# Idempotent: does nothing when everything is already there.
set -euo pipefail

PACKAGES=(libnbd-bin nbdfuse nbdkit fio e2fsprogs qemu-utils fuse3 python3-libnbd util-linux mount procps iproute2
  resource-agents   # resource-agents: ocf-tester for scripts/ocf/twinblock
  systemd           # systemd-analyze for scripts/systemd/ (tests/systemd.rs)
  slapd ldap-utils bc)  # scripts/ldap-failover.sh

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "setup: all packages present"
else
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    SUDO=sudo
  fi
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

# moto_server: the EC2 API emulator the address-mover tests run against.
if ! command -v moto_server >/dev/null; then
  echo "setup: installing moto[server] (pip)"
  pip_install=(python3 -m pip install --quiet --disable-pip-version-check)
  "${pip_install[@]}" 'moto[server]' 2>/dev/null \
    || "${pip_install[@]}" --break-system-packages 'moto[server]'
  if command -v pyenv >/dev/null; then pyenv rehash; fi
  command -v moto_server >/dev/null || { echo "setup: moto_server not on PATH after pip install" >&2; exit 1; }
fi
