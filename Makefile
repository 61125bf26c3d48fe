# meanflow: two commands set everything up on a fresh machine.
#   make demo   install what is missing, build, train on Fashion-MNIST (CPU, minutes), write grids
#   make test   the full test suite (what CI runs)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
TORCH_VERSION := 2.11.0
STAMP := $(VENV)/.installed-torch-$(TORCH_VERSION)-safetensors-scipy
DEBIAN_FMNIST := /usr/share/datasets/fashion-mnist
FMNIST_DIR ?= $(DEBIAN_FMNIST)
DEMO_CONFIG ?= configs/fashion_mnist.yaml
DEMO_RUN ?= runs/fashion_mnist-$(shell date +%Y%m%d-%H%M%S)

# libtorch is the one inside the project virtualenv's torch wheel; torch-sys finds it
# through `python` (the venv's, first on PATH).
export VIRTUAL_ENV := $(CURDIR)/$(VENV)
export PATH := $(VIRTUAL_ENV)/bin:$(PATH)
export LIBTORCH_USE_PYTORCH := 1

.PHONY: all venv data build demo test crosscheck bench-train gpu-check-build gpu-check clean

all: build

venv: $(STAMP)

$(STAMP):
	@command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check torch==$(TORCH_VERSION) numpy safetensors scipy
	touch $@

# Fashion-MNIST from Debian's dataset-fashion-mnist (gzipped IDX files).
data:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ] || [ -f $(FMNIST_DIR)/train-images-idx3-ubyte ]; then \
	  echo "Fashion-MNIST found in $(FMNIST_DIR)"; \
	elif [ "$(FMNIST_DIR)" = "$(DEBIAN_FMNIST)" ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist; }; \
	else \
	  echo "Fashion-MNIST is not in $(FMNIST_DIR) and cannot be installed here (needs apt-get as root)."; \
	  echo "Get the four IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,"; \
	  echo "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz; gzipped or not) into a folder and run"; \
	  echo "  make demo FMNIST_DIR=/path/to/that/folder"; \
	  exit 1; \
	fi

build: venv
	cargo build --release

demo: venv data build
	./target/release/meanflow train --config $(DEMO_CONFIG) --set train.run_dir=$(DEMO_RUN) --set data.root=$(FMNIST_DIR) $(DEMO_ARGS)

# Everything but the PyTorch cross-check, then the cross-check with its table shown.
# One test at a time: libtorch kernels called from two threads at once may round
# reductions differently, and several tests compare results bit for bit.
test: venv data
	cargo test --release -- --skip crosscheck --test-threads=1
	$(MAKE) --no-print-directory crosscheck

# Same weights and draws through meanflow and tests/reference/meanflow_ref.py
# (torch.func.jvp): loss, du/dt, target, gradients, one Adam step and one EMA update.
crosscheck: venv
	cargo test --release --test crosscheck -- --nocapture --test-threads=1

# One training step here and in the PyTorch reference, same model and batch: steps/s and ratio.
bench-train: venv
	cargo bench --bench train_step

# What scripts/gpu-check.sh runs: the CLI, the cross-check test and the bench, built here.
gpu-check-build: venv
	cargo build --release
	cargo test --release --no-run --test crosscheck
	cargo bench --no-run --bench train_step
	@echo "carry: target/release/meanflow and these:"; ls -t target/release/deps/crosscheck-* target/release/deps/train_step-* | grep -v '\.d$$'

# On this machine (no GPU) it falls back to the CPU, which is how it is tested.
gpu-check: gpu-check-build
	bash scripts/gpu-check.sh

clean:
	cargo clean
	rm -rf runs
