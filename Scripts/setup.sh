#!/usr/bin/env bash
# Installs what kd needs on a Debian machine (OpenBLAS, LAPACKE and Open MPI) when it is missing.
set -euo pipefail
missing=()
for package in libopenblas-dev liblapacke-dev libopenmpi-dev openmpi-bin; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
