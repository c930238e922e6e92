#!/usr/bin/env bash
# Installs Debian packages for the commands that are not on PATH.
#
# Usage: scripts/apt-ensure.sh COMMAND=PACKAGE [COMMAND=PACKAGE ...]
#   e.g. scripts/apt-ensure.sh redis-server=redis-server /usr/share/apertium/modes/eng-spa.mode=apertium-eng-spa
# A COMMAND that starts with / is a file the package installs (for packages of data, without a command).
#
# Runs apt-get directly as root and through sudo otherwise. `env` carries DEBIAN_FRONTEND through sudo and
# works with no sudo at all (a bare `VAR=value` after an empty "$SUDO" would be taken for a command name).
# tests/unit/test_apt_ensure.py runs this script with stand-in apt-get, sudo and id on a PATH without the
# commands, so a broken recipe fails the suite even on a machine that has everything installed.
set -euo pipefail

missing=()
for pair in "$@"; do
  command=${pair%%=*}
  package=${pair#*=}
  if [[ -z $command || -z $package || $pair != *=* ]]; then
    echo "apt-ensure: expected COMMAND=PACKAGE, got '$pair'" >&2
    exit 2
  fi
  if [[ $command == /* ]]; then
    [[ -e $command ]] || missing+=("$package")
  else
    command -v "$command" >/dev/null 2>&1 || missing+=("$package")
  fi
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "not found on PATH, installing Debian's packages: ${missing[*]}"
sudo=()
if [[ $(id -u) != 0 ]]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "apt-ensure: not root and no sudo; install these Debian packages yourself: ${missing[*]}" >&2
    exit 1
  fi
  sudo=(sudo)
fi
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
