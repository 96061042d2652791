# The two front-door commands (README.md): `make demo` and `make test`.
# Both set up everything they need first (scripts/setup.sh, idempotent).
PY := .venv/bin/python
BUILD := build/cpp-tests

.PHONY: demo test setup cpp-test py-test lint clean

demo: setup
	$(PY) examples/quickstart.py

test: setup cpp-test py-test

setup:
	./scripts/setup.sh

cpp-test:
	.venv/bin/cmake -S . -B $(BUILD) -G Ninja -DCMAKE_MAKE_PROGRAM=$(CURDIR)/.venv/bin/ninja \
	    -DHYPERDEX_BUILD_PYTHON=OFF -DHYPERDEX_BUILD_TESTS=ON
	.venv/bin/cmake --build $(BUILD)
	.venv/bin/ctest --test-dir $(BUILD) --output-on-failure

py-test:
	PATH=$(CURDIR)/.venv/bin:$$PATH HF_HUB_OFFLINE=1 HYPERDEX_PROGRESS=0 $(PY) -m pytest tests

lint:
	.venv/bin/ruff check hyperdex tests examples benchmarks

clean:
	rm -rf build .venv
