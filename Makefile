# Set-up, tests and benchmarks. Every target is idempotent; `make quickstart` and `make test` set
# everything up on a fresh machine (a virtual environment in .venv, the pinned dependencies,
# Detectron2, and the compiled op, with CUDA kernels too when a GPU or FORCE_CUDA=1 is present).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.deps-installed
PACKAGE_DIR := $(CURDIR)/projects/DeformableDETR

.PHONY: setup build test test-fast bench quickstart clean

setup: build

$(PY):
	$(PYTHON) -m venv $(VENV)

$(DEPS_STAMP): requirements.txt tools/install_detectron2.sh | $(PY)
	$(PY) -m pip install --quiet pip==25.3
	$(PY) -m pip install -r requirements.txt
	bash tools/install_detectron2.sh $(PY)
	touch $@

# Builds deformable_detr._C in place (ninja: only what changed) and puts the package on the
# environment's path, as an editable install would, without a second build.
build: $(DEPS_STAMP)
	$(PY) setup.py --quiet build_ext --inplace
	$(PY) -c "import os, site; open(os.path.join(site.getsitepackages()[0], 'deformable_detr.pth'), 'w').write('$(PACKAGE_DIR)\n')"
	$(PY) -c "import deformable_detr.layers as l; print('deformable_detr: compiled op', 'loaded' if l.extension_available() else 'NOT built')"

# The whole suite, slow tests included (a few minutes on 2 cores).
test: build
	$(PY) -m pytest tests -q

# Everything but the tests marked slow.
test-fast: build
	$(PY) -m pytest tests -q -m "not slow"

bench: build
	$(PY) tools/benchmark_ms_deform_attn.py

# Until the training job lands (issue 4), the main job is the op's benchmark on built-in shapes.
quickstart: bench

clean:
	rm -rf build projects/DeformableDETR/deformable_detr/_C*.so
