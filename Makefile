# kiln developer tasks. Works from a clean clone, non-interactively (CI=true).
#   make deps      Debian packages (apt, as root or via sudo) + cargo check
#   make venv      .venv with pinned onnx/onnxruntime/numpy (requirements-dev.txt)
#   make models    example ONNX models + reference data -> examples/models/gen
#   make build     cargo build --release --bin kiln
#   make demo      deps venv models build, then kiln inspect / kiln run on gpt2_fused
#   make test      deps venv models, then cargo test --workspace --release
#   make clean-models

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
# Prerequisites are ordered steps (deps before venv before models); keep -j from reordering them.
.NOTPARALLEL:
# Multi-line recipes run as one bash script (with -e -u -o pipefail).
.ONESHELL:

# Debian 12 packages needed to build and test kiln. Append to this list
# (e.g. LLVM 22 / MLIR 22 packages); `make deps` installs whatever is missing.
APT_PACKAGES := build-essential pkg-config ca-certificates git libomp-22-dev \
	llvm-22-dev libmlir-22-dev mlir-22-tools libclang-22-dev clang-22 libpolly-22-dev libzstd-dev

PYTHON     ?= python3
CARGO      ?= cargo
VENV       := .venv
VENV_PY    := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.requirements.stamp
MAKE_MODELS := examples/models/make_models.py
MODELS_DIR  := examples/models/gen
MODELS_STAMP := $(MODELS_DIR)/.stamp
# Extra flags for make_models.py, e.g. MODEL_FLAGS="--layers 12 --d-model 768 --heads 12"
# (run `make clean-models` after changing them).
MODEL_FLAGS ?=
DEMO_MODEL := $(MODELS_DIR)/gpt2_fused

export PATH := $(or $(CARGO_HOME),$(HOME)/.cargo)/bin:$(PATH)
export DEBIAN_FRONTEND := noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PIP_NO_INPUT := 1

.PHONY: help deps venv models build demo test clean-models

help:
	@sed -n 's/^#   //p' $(firstword $(MAKEFILE_LIST))

deps:
	@need=""
	if command -v dpkg-query >/dev/null 2>&1; then
	  for p in $(APT_PACKAGES); do
	    dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q "ok installed" || need="$$need $$p"
	  done
	  # Debian's python3 needs python3-venv for `python3 -m venv` (pyenv/other pythons don't).
	  if ! command -v $(PYTHON) >/dev/null 2>&1; then
	    need="$$need python3 python3-venv"
	  elif ! $(PYTHON) -c 'import venv, ensurepip' >/dev/null 2>&1; then
	    need="$$need python3-venv"
	  fi
	else
	  echo "deps: no dpkg (not Debian?); skipping system packages: $(APT_PACKAGES)" >&2
	fi
	if [ -n "$$need" ]; then
	  sudo=""
	  if [ "$$(id -u)" -ne 0 ]; then
	    command -v sudo >/dev/null 2>&1 || { echo "deps: error: need root to install:$$need" >&2; exit 1; }
	    sudo="sudo -n"
	  fi
	  echo "deps: installing:$$need"
	  $$sudo apt-get update -qq
	  $$sudo apt-get install -y -qq --no-install-recommends $$need
	else
	  echo "deps: system packages present"
	fi
	if ! command -v $(CARGO) >/dev/null 2>&1; then
	  echo "deps: error: '$(CARGO)' not found. Install Rust (>= 1.85) with rustup:" >&2
	  echo "  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y" >&2
	  echo "and make sure \$$HOME/.cargo/bin is on PATH." >&2
	  exit 1
	fi
	echo "deps: $$($(CARGO) --version)"

venv: $(VENV_STAMP)

$(VENV_STAMP): requirements-dev.txt
	@if [ ! -x $(VENV_PY) ]; then
	  echo "venv: creating $(VENV) with $$(command -v $(PYTHON))"
	  $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); echo "venv: error: '$(PYTHON) -m venv' failed (run 'make deps')" >&2; exit 1; }
	fi
	echo "venv: pip install -r requirements-dev.txt"
	$(VENV_PY) -m pip install -q -r requirements-dev.txt
	touch $@

models: $(MODELS_STAMP)

$(MODELS_STAMP): $(MAKE_MODELS) $(VENV_STAMP)
	rm -rf $(MODELS_DIR)
	$(VENV_PY) $(MAKE_MODELS) --out $(MODELS_DIR) $(MODEL_FLAGS)
	touch $@

build:
	$(CARGO) build --release --bin kiln

demo: deps venv models build
	./target/release/kiln inspect $(DEMO_MODEL)/model.onnx
	./target/release/kiln run $(DEMO_MODEL)/model.onnx --inputs $(DEMO_MODEL)/test_data_set_0 --out target/demo-out
	./target/release/kiln optimize $(DEMO_MODEL)/model.onnx -O2 -o target/demo-model.O2.onnx
	./target/release/kiln run target/demo-model.O2.onnx --backend cpu --inputs $(DEMO_MODEL)/test_data_set_0

test: deps venv models
	export KILN_PYTHON="$(CURDIR)/$(VENV_PY)"
	$(CARGO) test --workspace --release

clean-models:
	rm -rf $(MODELS_DIR)
