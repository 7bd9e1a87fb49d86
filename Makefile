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

.PHONY: test install venv bench demo cmake info clean

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

clean:
	rm -rf build cmake-build cdism_fast/*.so *.egg-info
