# Everything a fresh machine needs is created here. The virtual environments
# live outside the clone (they are large and survive fresh clones):
#   $(VENV)       CPU build of torch: tests, benchmarks, the demo
#   $(VENV_CUDA)  CUDA build of torch: compile checks of the CUDA extension
#   $(VENV_GPU)   the oldest supported GPU stack (Python 3.12, torch 2.11 + CUDA 13.0,
#                 Triton 3.6), for everything benchmarks/gpu_check.sh does but run it on a GPU
PYTHON      ?= python3
CACHE       ?= $(HOME)/.cache/cdism-fast
VENV        ?= $(CACHE)/venv
VENV_CUDA   ?= $(CACHE)/venv-cuda
TORCH       ?= torch==2.13.0
TORCH_CUDA  ?= torch==2.14.1
PY          := $(VENV)/bin/python
EXTRAS      := test,demo,export,triton
# Reinstall the dependencies when their declaration changes.
DEPS_STAMP  := $(VENV)/.deps-$(shell cat pyproject.toml | sha1sum | cut -c1-12)-$(subst =,,$(TORCH))
PYTEST_ARGS ?=
# Test processes (pytest-xdist); each runs torch on one thread (tests/conftest.py), so two use both
# cores without OpenMP threads of one waiting for the other's. Module-scoped fixtures (a reference
# training run) stay in one process: --dist loadscope.
TEST_WORKERS ?= 2
# CUDA extension build check: architectures, out-of-tree build folder, toolkit.
CUDA_ARCHS  ?= 8.6;9.0
CUDA_SMS     = $(subst .,,$(subst ;, ,$(CUDA_ARCHS)))
CUDA_BUILD  ?= $(CACHE)/cuda-build-check
# Where nvcc is a wrapper script outside its toolkit, torch would guess CUDA_HOME wrong.
CUDA_HOME   ?= $(firstword $(wildcard /usr/local/cuda) $(patsubst %/bin/nvcc,%,$(shell command -v nvcc)))

# The oldest supported GPU stack.
VENV_GPU    ?= $(CACHE)/venv-gpu-stack
GPU_STACK   ?= torch==2.11.0 triton==3.6.0
GPU_TREE    ?= $(CACHE)/gpu-stack-tree
# Their Python is 3.12; the first interpreter of these that runs (a pyenv shim may not).
GPU_PYTHON  ?= $(firstword $(foreach p,$(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) python3.12 $(PYTHON),\
                 $(shell $(p) -c 'import sys; print(sys.executable)' 2>/dev/null)))
GPU_STAMP   := $(VENV_GPU)/.stack-$(subst =,,$(subst $() ,_,$(GPU_STACK)))

.PHONY: test build-checks install venv bench demo cmake info clean cuda-build-check gpu-stack-check spandrel-check

$(DEPS_STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel ninja "$(TORCH)"
	$(PY) -m pip install -q --no-build-isolation -e ".[$(EXTRAS)]"
	touch $@

venv: $(DEPS_STAMP)

# Builds cdism_fast._C in place against the venv's torch (editable install).
install: venv
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest tests -q -m "not build_check" -n $(TEST_WORKERS) --dist loadscope $(PYTEST_ARGS)

# The CUDA extension built against the two CUDA builds of torch (about 8 GB of venvs the first time,
# then only when csrc/ changes): kept out of `make test` so that it stays short; .ci/run runs both.
build-checks: install spandrel-check
	$(PY) -m pytest tests/test_gpu_build.py -q -m build_check $(PYTEST_ARGS)

bench: install
	$(PY) -m benchmarks

info: install
	$(VENV)/bin/cdism-fast info

demo: install
	$(VENV)/bin/cdism-fast run --preset demo --out runs/demo --overwrite

# Builds the same C++ sources against libtorch, outside pip.
cmake: venv
	cmake -S . -B cmake-build -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')" \
	      -DPython_EXECUTABLE=$(PY)
	cmake --build cmake-build -j2

CUDA_DEPS := $(VENV_CUDA)/.deps-$(subst =,,$(TORCH_CUDA))-pytest
$(CUDA_DEPS):
	test -x $(VENV_CUDA)/bin/python || $(PYTHON) -m venv $(VENV_CUDA)
	$(VENV_CUDA)/bin/python -m pip install -q --upgrade pip setuptools wheel ninja
	$(VENV_CUDA)/bin/python -m pip install -q numpy pillow tqdm pytest expecttest "$(TORCH_CUDA)"
	touch $@

# spandrel (the optional [spandrel] extra) imports torchvision, whose wheels do not import beside the CPU
# torch of $(VENV); in $(VENV_CUDA) torch 2.14.1 and torchvision 0.29.1 import together. The tests that need
# spandrel are the files tests/test_spandrel_*.py (in `make test` they skip, naming the reason); here they run on
# the tree (PYTHONPATH=.) with the ops' reference backends (CDISM_JIT=0: no first-use build for this torch).
SPANDREL_DEPS  ?= torchvision==0.29.1 spandrel==0.4.2
SPANDREL_STAMP := $(VENV_CUDA)/.spandrel-$(subst =,,$(subst $() ,_,$(TORCH_CUDA) $(SPANDREL_DEPS)))
$(SPANDREL_STAMP): $(CUDA_DEPS)
	$(VENV_CUDA)/bin/python -m pip install -q "$(TORCH_CUDA)" $(SPANDREL_DEPS) safetensors
	touch $@

spandrel-check: $(SPANDREL_STAMP)
	PYTHONPATH=. CDISM_JIT=0 $(VENV_CUDA)/bin/python -m pytest -q -p no:cacheprovider tests/test_spandrel_*.py \
	  tests/test_external_models.py $(PYTEST_ARGS)

# Compiles and links cdism_fast._C and _C_cuda against the CUDA build of torch for
# TORCH_CUDA_ARCH_LIST=$(CUDA_ARCHS), out of the tree (no GPU needed), then loads both;
# then the Triton interpreter suite and compiles on the Triton that torch pins (3.8).
# The build is keyed by the sources' content (a fresh clone's new file times would
# otherwise rebuild everything): unchanged sources only rerun the load check.
CUDA_STAMP   = $(CUDA_BUILD)/built-$(shell cat setup.py $$(find csrc -type f | sort) | sha1sum | cut -c1-16)-$(subst =,,$(TORCH_CUDA))-$(subst ;,_,$(CUDA_ARCHS))
cuda-build-check: $(CUDA_DEPS)
	test -f $(CUDA_STAMP) || { rm -f $(CUDA_BUILD)/built-* && \
	  CUDA_HOME="$(CUDA_HOME)" CDISM_CUDA=1 TORCH_CUDA_ARCH_LIST="$(CUDA_ARCHS)" MAX_JOBS=$${MAX_JOBS:-2} \
	  $(VENV_CUDA)/bin/python setup.py -q build_ext --build-lib $(CUDA_BUILD)/lib --build-temp $(CUDA_BUILD)/tmp && \
	  touch $(CUDA_STAMP); }
	CUDA_HOME="$(CUDA_HOME)" $(VENV_CUDA)/bin/python csrc/cuda/check_build.py $(CUDA_BUILD)/lib $(CUDA_SMS)
	CDISM_JIT=0 $(VENV_CUDA)/bin/python -m pytest -q -p no:cacheprovider tests/test_triton_interpret.py tests/test_triton_compile.py

# numpy<2.4: Triton 3.6's interpreter calls int() on 1-element arrays, which NumPy 2.4 refuses.
$(GPU_STAMP):
	test -x $(VENV_GPU)/bin/python || $(GPU_PYTHON) -m venv $(VENV_GPU)
	$(VENV_GPU)/bin/python -m pip install -q --upgrade pip setuptools wheel ninja
	$(VENV_GPU)/bin/python -m pip install -q $(GPU_STACK) "numpy<2.4" pillow tqdm pytest expecttest
	touch $@

# gpu_check.sh's build step and the op-level tests on the oldest supported GPU stack, on a copy of
# the tree (its in-place build must not replace the one `make install` made for $(VENV)):
# builds _C and _C_cuda for sm_86/sm_90 and loads them, then runs every test of the ops,
# the optimizer and the models, the Triton interpreter suite and the sm_86/sm_90 Triton
# compiles, the benchmark cases' construction, all with torch 2.11 and Triton 3.6.
GPU_STACK_TESTS = tests/test_dispatch.py tests/test_charbonnier.py tests/test_gaussian.py tests/test_laplacian.py \
  tests/test_distillation.py tests/test_nn_losses.py tests/test_obproxsg.py tests/test_optim.py \
  tests/test_window_attention.py tests/test_family_contract.py tests/test_edsr.py tests/test_swinir.py \
  tests/test_triton_interpret.py tests/test_triton_compile.py tests/test_gpu_check_script.py
gpu-stack-check: $(GPU_STAMP)
	mkdir -p $(GPU_TREE) && find $(GPU_TREE) -mindepth 1 -maxdepth 1 ! -name build -exec rm -rf {} +
	tar -cf - --exclude=./build --exclude='./cdism_fast/*.so' --exclude=./.git --exclude=./runs --exclude=./cmake-build . \
	  | tar -xf - -C $(GPU_TREE)
	cd $(GPU_TREE) && CUDA_HOME="$(CUDA_HOME)" CDISM_CUDA=1 TORCH_CUDA_ARCH_LIST="$(CUDA_ARCHS)" MAX_JOBS=$${MAX_JOBS:-2} \
	  $(VENV_GPU)/bin/python setup.py -q build_ext --inplace
	cd $(GPU_TREE) && CUDA_HOME="$(CUDA_HOME)" $(VENV_GPU)/bin/python csrc/cuda/check_build.py . $(CUDA_SMS)
	cd $(GPU_TREE) && CDISM_JIT=0 $(VENV_GPU)/bin/python -m pytest -q -p no:cacheprovider $(GPU_STACK_TESTS)
	@$(VENV_GPU)/bin/python -c "import sys, torch, triton; print('gpu stack check: Python', sys.version.split()[0], \
	  'torch', torch.__version__, 'triton', triton.__version__)"

clean:
	rm -rf build cmake-build cdism_fast/*.so *.egg-info
