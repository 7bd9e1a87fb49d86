# Everything a fresh machine needs is created here. The virtual environments
# live outside the clone (they are large and survive fresh clones):
#   $(VENV)       CPU build of torch: tests, benchmarks, the demo
#   $(VENV_CUDA)  CUDA build of torch: compile checks of the CUDA extension
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
# CUDA extension build check: architectures, out-of-tree build folder, toolkit.
CUDA_ARCHS  ?= 8.6;9.0
CUDA_BUILD  ?= $(CACHE)/cuda-build-check
# Where nvcc is a wrapper script outside its toolkit, torch would guess CUDA_HOME wrong.
CUDA_HOME   ?= $(firstword $(wildcard /usr/local/cuda) $(patsubst %/bin/nvcc,%,$(shell command -v nvcc)))

.PHONY: test install venv bench demo cmake info clean cuda-build-check

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
	$(PY) -m pytest tests -q $(PYTEST_ARGS)

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

$(VENV_CUDA)/bin/python:
	$(PYTHON) -m venv $(VENV_CUDA)
	$(VENV_CUDA)/bin/python -m pip install -q --upgrade pip setuptools wheel ninja numpy "$(TORCH_CUDA)"

# Compiles and links cdism_fast._C and _C_cuda against the CUDA build of torch for
# TORCH_CUDA_ARCH_LIST=$(CUDA_ARCHS), out of the tree (no GPU needed), then loads both.
# The build is keyed by the sources' content (a fresh clone's new file times would
# otherwise rebuild everything): unchanged sources only rerun the load check.
CUDA_STAMP   = $(CUDA_BUILD)/built-$(shell cat setup.py $$(find csrc -type f | sort) | sha1sum | cut -c1-16)-$(subst =,,$(TORCH_CUDA))-$(subst ;,_,$(CUDA_ARCHS))
cuda-build-check: $(VENV_CUDA)/bin/python
	test -f $(CUDA_STAMP) || { rm -f $(CUDA_BUILD)/built-* && \
	  CUDA_HOME="$(CUDA_HOME)" CDISM_CUDA=1 TORCH_CUDA_ARCH_LIST="$(CUDA_ARCHS)" MAX_JOBS=$${MAX_JOBS:-2} \
	  $(VENV_CUDA)/bin/python setup.py -q build_ext --build-lib $(CUDA_BUILD)/lib --build-temp $(CUDA_BUILD)/tmp && \
	  touch $(CUDA_STAMP); }
	CUDA_HOME="$(CUDA_HOME)" $(VENV_CUDA)/bin/python csrc/cuda/check_build.py $(CUDA_BUILD)/lib $(subst .,,$(subst ;, ,$(CUDA_ARCHS)))

clean:
	rm -rf build cmake-build cdism_fast/*.so *.egg-info
