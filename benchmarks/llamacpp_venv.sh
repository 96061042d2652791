#!/usr/bin/env bash
# The venv of benchmarks/decode_vs_llamacpp.py: llama.cpp (llama-cpp-python built from its PyPI
# source for this CPU), CTranslate2, and what their converters need. Keeps the vendored
# llama.cpp's convert_hf_to_gguf.py and gguf-py in VENV/llama.cpp/. Idempotent: a venv whose
# marker matches these pins is kept. Usage: benchmarks/llamacpp_venv.sh [VENV]
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$root/.venv-bench}"
llama="llama-cpp-python==0.3.36"
pins="$llama ctranslate2==4.8.5 native"
marker="$venv/.bench-pins"

if [[ -f "$marker" && "$(cat "$marker")" == "$pins" ]]; then
  exit 0
fi
rm -rf "$venv"
python3.11 -m venv "$venv"
py="$venv/bin/python"

# pip, its exit status kept, without this machine's notes on local index folders.
pip() {
  local log rc=0
  log="$(mktemp)"
  "$py" -m pip "$@" >"$log" 2>&1 || rc=$?
  grep -v "^WARNING: Location" "$log" || true
  rm -f "$log"
  return "$rc"
}

# torch and transformers as constraints.txt pins them (torch: the CPU build), for the
# converters of llama.cpp and CTranslate2.
pip install --quiet -c "$root/constraints.txt" \
  torch transformers tokenizers safetensors numpy sentencepiece ctranslate2==4.8.5

# llama.cpp from source, native to this CPU (AVX-512 where there is one), no BLAS: the ggml
# CPU kernels llama.cpp's own build runs. About 10 minutes on 2 cores.
pip download --quiet --no-deps --no-binary :all: -d "$venv/src" "$llama"
sdist="$(ls "$venv"/src/llama_cpp_python-*.tar.gz)"
tar -xzf "$sdist" -C "$venv/src"
vendored="$(ls -d "$venv"/src/llama_cpp_python-*/vendor/llama.cpp)"
mkdir -p "$venv/llama.cpp"
cp -r "$vendored/convert_hf_to_gguf.py" "$vendored/conversion" "$vendored/gguf-py" "$venv/llama.cpp/"
CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_BLAS=OFF -DLLAMA_CURL=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 \
  pip install --quiet -c "$root/constraints.txt" "$sdist"
"$py" -c "import llama_cpp, ctranslate2, torch; print('llama_cpp', llama_cpp.__version__)"
echo "$pins" >"$marker"
