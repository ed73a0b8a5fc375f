# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first, pinned to the build this project is tested with; override for other machines.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: venv demo test lint bench bench-accuracy bench-scaling bench-anomalib clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[dev,faiss,lite,onnx]"
	touch $@

demo: venv
	$(BIN)/anomap demo --out demo_out

test: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: venv
	$(BIN)/anomap bench --out benchmarks/results

bench-accuracy: venv
	$(BIN)/python benchmarks/accuracy_patchcore.py
	$(BIN)/python benchmarks/accuracy_methods.py --method pbas --epochs 100
	$(BIN)/python benchmarks/accuracy_methods.py --method glass --epochs 10
	$(BIN)/python benchmarks/accuracy_methods.py --method uniad --unified --epochs 20

bench-scaling: venv
	$(BIN)/python benchmarks/scaling.py

# anomap vs anomalib 2.7.0 (issue 7); anomalib lives in its own venv, never in anomap's
ANOMALIB_VENV ?= .venv-anomalib

bench-anomalib: $(ANOMALIB_VENV)/.installed
	$(ANOMALIB_VENV)/bin/python benchmarks/compare_anomalib.py

$(ANOMALIB_VENV)/.installed: benchmarks/requirements-anomalib.txt pyproject.toml
	$(PYTHON) -m venv $(ANOMALIB_VENV)
	$(ANOMALIB_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(ANOMALIB_VENV)/bin/python -m pip install --quiet $(TORCH_SPEC)
	$(ANOMALIB_VENV)/bin/python -m pip install --quiet -r benchmarks/requirements-anomalib.txt
	$(ANOMALIB_VENV)/bin/python -m pip install --quiet -e .
	touch $@

clean:
	rm -rf $(VENV) $(ANOMALIB_VENV) demo_out .pytest_cache
