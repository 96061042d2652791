#!/usr/bin/env bash
# Builds the libFuzzer harnesses (build/fuzz, clang) and runs every harness, C++ and Python,
# for a bounded time over its seed corpus (tests/fuzz/README.md). One summary line per
# harness; exits 1 when any harness found something (inputs and logs under
# build/fuzz/findings/), 2 on a build or usage error.
#
#   tests/fuzz/run.sh [--seconds N] [--cpp-only | --py-only] [--engine auto|atheris|random]
#                     [--make-corpus] [HARNESS ...]
#
#   --seconds N     fuzz each harness N seconds (default 10); 0 runs each seed once (a
#                   regression check, no fuzzing)
#   --engine E      the Python harnesses' engine (default auto: atheris when it imports)
#   --make-corpus   rewrite the seed corpus (tests/fuzz/corpus) from the writers first
#   HARNESS         only these (fuzz_program, py_model_file, ...)
#
# Environment: FUZZ_CXX (default clang++), FUZZ_BUILD (default build/fuzz).
set -uo pipefail
cd "$(dirname "$0")/../.."

SECS=10
ENGINE=auto
DO_CPP=1
DO_PY=1
MAKE_CORPUS=0
ONLY=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECS="$2"; shift 2 ;;
    --seconds=*) SECS="${1#*=}"; shift ;;
    --engine) ENGINE="$2"; shift 2 ;;
    --engine=*) ENGINE="${1#*=}"; shift ;;
    --cpp-only) DO_PY=0; shift ;;
    --py-only) DO_CPP=0; shift ;;
    --make-corpus) MAKE_CORPUS=1; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    -*) echo "run.sh: unknown option $1" >&2; exit 2 ;;
    *) ONLY+=("$1"); shift ;;
  esac
done
case "$SECS" in ''|*[!0-9]*) echo "run.sh: --seconds takes a whole number" >&2; exit 2 ;; esac

BUILD="${FUZZ_BUILD:-build/fuzz}"
FINDINGS="$BUILD/findings"
LOGS="$BUILD/logs"
PY=.venv/bin/python
CXX_HARNESSES=(fuzz_program fuzz_xclbin fuzz_session)
PY_HARNESSES=(py_model_file py_hf_checkpoint py_gptq py_compiled py_gguf)
export HYPERDEX_PROGRESS=0 HF_HUB_OFFLINE=1
# Findings abort with a stack (UBSan findings already abort: -fno-sanitize-recover).
export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

selected() {
  [ ${#ONLY[@]} -eq 0 ] && return 0
  local h
  for h in "${ONLY[@]}"; do [ "$h" = "$1" ] && return 0; done
  return 1
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

T0=$(now)
mkdir -p "$FINDINGS" "$LOGS"
FAILED=0
SUMMARY=()

if [ "$DO_CPP" = 1 ]; then
  need_cpp=0
  for h in "${CXX_HARNESSES[@]}"; do selected "$h" && need_cpp=1; done
  if [ "$need_cpp" = 1 ] || [ "$MAKE_CORPUS" = 1 ]; then
    if ! command -v "${FUZZ_CXX:-clang++}" >/dev/null; then
      echo "run.sh: ${FUZZ_CXX:-clang++} not found (apt-get install clang)" >&2
      exit 2
    fi
    tb=$(now)
    if ! .venv/bin/cmake -G Ninja -DCMAKE_MAKE_PROGRAM="$PWD/.venv/bin/ninja" -S . -B "$BUILD" \
        -DCMAKE_CXX_COMPILER="${FUZZ_CXX:-clang++}" -DHYPERDEX_FUZZ=ON \
        -DHYPERDEX_BUILD_PYTHON=OFF -DHYPERDEX_BUILD_TESTS=OFF -DHYPERDEX_XRT=OFF \
        -DHYPERDEX_WERROR=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1" >"$LOGS/configure.log" 2>&1; then
      cat "$LOGS/configure.log" >&2
      exit 2
    fi
    if ! .venv/bin/cmake --build "$BUILD" >"$LOGS/build.log" 2>&1; then
      tail -40 "$LOGS/build.log" >&2
      exit 2
    fi
    echo "[fuzz] built the C++ harnesses in $BUILD ($(elapsed "$tb") s)"
  fi
fi

if [ "$MAKE_CORPUS" = 1 ]; then
  "$BUILD/hyperdex_fuzz_corpus" tests/fuzz/corpus >/dev/null || exit 2
  "$PY" tests/fuzz/make_corpus.py >/dev/null || exit 2
  echo "[fuzz] rewrote the seed corpus in tests/fuzz/corpus"
fi

line() {  # harness runs seconds result
  local l
  l=$(printf '%-18s %10s runs %7s s   %s' "$1" "$2" "$3" "$4")
  SUMMARY+=("$l")
  echo "$l"
}

if [ "$DO_CPP" = 1 ]; then
  for h in "${CXX_HARNESSES[@]}"; do
    selected "$h" || continue
    work="$BUILD/corpus/$h"  # what libFuzzer adds; the committed seeds stay as they are
    mkdir -p "$work" "$FINDINGS/$h"
    log="$LOGS/$h.log"
    if [ "$SECS" = 0 ]; then limit=(-runs=0); else limit=(-max_total_time="$SECS"); fi
    t=$(now)
    "$BUILD/$h" "${limit[@]}" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$FINDINGS/$h/" "$work" "tests/fuzz/corpus/$h" >"$log" 2>&1
    rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    if [ "$rc" = 0 ]; then
      line "$h" "${runs:-?}" "$(elapsed "$t")" "OK"
    else
      FAILED=1
      art=$(sed -n "s/.*Test unit written to //p" "$log" | tail -1)
      line "$h" "${runs:-?}" "$(elapsed "$t")" "FINDING (rc $rc): ${art:-see $log}; log $log"
      grep -E "ERROR:|runtime error|terminate called|what\(\)|SUMMARY" "$log" | awk '!seen[$0]++' |
        head -5 | cut -c1-200 | sed 's/^/    /'
    fi
  done
fi

if [ "$DO_PY" = 1 ]; then
  for h in "${PY_HARNESSES[@]}"; do
    selected "$h" || continue
    log="$LOGS/$h.log"
    t=$(now)
    if [ "$SECS" = 0 ]; then
      "$PY" tests/fuzz/pyfuzz.py "$h" --findings "$FINDINGS" tests/fuzz/corpus/"$h"/* >"$log" 2>&1
      rc=$?
      runs=$(find tests/fuzz/corpus/"$h" -type f | wc -l)
      engine="seeds once"
    else
      "$PY" tests/fuzz/pyfuzz.py "$h" --engine "$ENGINE" --seconds "$SECS" \
        --findings "$FINDINGS" >"$log" 2>&1
      rc=$?
      engine=$(sed -n 's/^\[pyfuzz\] engine //p' "$log" | head -1)
      runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
      [ -z "$runs" ] && runs=$(sed -n 's/^[a-z_]*: \([0-9]*\) runs in.*/\1/p' "$log" | tail -1)
    fi
    if [ "$rc" = 0 ]; then
      line "$h" "${runs:-?}" "$(elapsed "$t")" "OK ($engine)"
    else
      FAILED=1
      line "$h" "${runs:-?}" "$(elapsed "$t")" "FINDING ($engine): $FINDINGS/$h/; log $log"
      grep -E "FINDING|^[A-Za-z]*(Error|Exception)[:(]" "$log" | awk '!seen[$0]++' | head -5 |
        cut -c1-200 | sed 's/^/    /'
    fi
  done
fi

echo "[fuzz] ${#SUMMARY[@]} harnesses in $(elapsed "$T0") s; findings (if any) under $FINDINGS/"
exit "$FAILED"
