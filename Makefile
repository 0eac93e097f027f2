# Set-up, tests and benchmarks. Every target is idempotent; `make quickstart` and `make test` set
# everything up on a fresh machine (a virtual environment in .venv, the pinned dependencies,
# Detectron2, and the compiled op, with CUDA kernels too when a GPU or FORCE_CUDA=1 is present).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.deps-installed
PACKAGE_DIR := $(CURDIR)/projects/DeformableDETR

.PHONY: setup build test test-fast lint format bench quickstart clean

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

# The whole suite, slow tests included (about 17 minutes on 2 cores); it lists the 25 slowest
# tests, so that a CI log shows where the time goes.
test: build
	$(PY) -m pytest tests -q --durations=25

# Everything but the tests marked slow.
test-fast: build
	$(PY) -m pytest tests -q -m "not slow"

# The benchmark's own packages (OpenVINO, Hugging Face transformers for the "vs HF" column), kept
# out of requirements.txt; installed once, again only when the file changes.
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): requirements-bench.txt requirements.txt | $(DEPS_STAMP)
	$(PY) -m pip install --quiet -r requirements-bench.txt
	touch $@

# The op against its reference, batch-invariant against padded inference, the deploy formats
# end to end (minutes on 2 cores: torch.compile and AOTInductor compile the whole model), and the
# int8 package's AP on the built-in data (from the quickstart's checkpoint, trained first if none).
bench: build $(BENCH_STAMP)
	$(PY) tools/benchmark_ms_deform_attn.py
	$(PY) tools/benchmark_batch_invariance.py
	$(PY) tools/benchmark_deploy.py
	test -f $(QUICKSTART_DIR)/model_final.pth || $(MAKE) quickstart
	$(PY) tools/benchmark_int8.py --weights $(QUICKSTART_DIR)/model_final.pth

# The main job on the built-in data: trains configs/quickstart.yaml on the CPU, evaluates with
# COCOEvaluator, draws the first val images' predictions (at 3x: the images are 160x128, and at
# their own size the labels cover the objects), prints AP and the loss curve and tiles the
# pictures into one, $(QUICKSTART_DIR)/grid.jpg.
QUICKSTART_DIR := output/quickstart
QUICKSTART_VAL := datasets/ddetr_shapes/ddetr_shapes_val/images
quickstart: build
	$(PY) train_net.py --config-file configs/quickstart.yaml OUTPUT_DIR $(QUICKSTART_DIR)
	$(PY) demo.py --config-file configs/quickstart.yaml --input "$(QUICKSTART_VAL)/0000*.jpg" \
		--output $(QUICKSTART_DIR)/pictures --confidence-threshold 0.3 --scale 3 \
		--opts MODEL.WEIGHTS $(QUICKSTART_DIR)/model_final.pth
	$(PY) tools/quickstart_summary.py $(QUICKSTART_DIR)

# The formatters and the linter, with the project's settings: ruff (ruff.toml) for Python,
# clang-format (.clang-format) for csrc/. `make lint` checks (CI runs it); `make format` rewrites.
LINT_STAMP := $(VENV)/.lint-installed
CXX_SOURCES = $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu')

$(LINT_STAMP): requirements-lint.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements-lint.txt
	touch $@

lint: $(LINT_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/clang-format --dry-run --Werror $(CXX_SOURCES)

format: $(LINT_STAMP)
	$(VENV)/bin/ruff check --fix --select I .
	$(VENV)/bin/ruff format .
	$(VENV)/bin/clang-format -i $(CXX_SOURCES)

clean:
	rm -rf build projects/DeformableDETR/deformable_detr/_C*.so output
