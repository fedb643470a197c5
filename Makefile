# Install order matters: the CPU torch wheel first, so that the project's `torch>=` bound is
# already met and pip does not pull a multi-GB CUDA build. On a GPU machine set TORCH_SPEC
# to the torch you want (e.g. TORCH_SPEC=torch) before `make`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
DEMO_OUT ?= demo-out
# OpenCLIP's own WebDataset loader, run by one test over capfilt's tars, in a venv of its own:
# it needs torchvision, and PyPI's torchvision (a CUDA build; 0.28 is the one made for torch
# 2.13.0) must not sit beside the project's CPU torch, where it breaks transformers' imports.
OPENCLIP_VENV ?= .venv-openclip

.PHONY: demo demo-full test test-fast install clean bench

$(BIN)/capfilt: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"
	@touch $@

install: $(BIN)/capfilt

$(OPENCLIP_VENV)/bin/python: Makefile
	$(PYTHON) -m venv $(OPENCLIP_VENV)
	$(OPENCLIP_VENV)/bin/pip install --quiet "$(TORCH_SPEC)"
	$(OPENCLIP_VENV)/bin/pip install --quiet "open-clip-torch>=3.3" "torchvision<0.29" "webdataset>=0.2.111" pandas braceexpand
	@touch $@

# One whole round of CapFilt on the toy world served on loopback (about 30-40 min on 2 CPU cores:
# README, "make demo").
demo: install
	$(BIN)/python -m capfilt.demo --output $(DEMO_OUT)

# The longer run: a bigger world, two rounds, longer training (about an hour on 2 cores).
demo-full: install
	$(BIN)/python -m capfilt.demo --output $(DEMO_OUT)-full --full

# lint-imports first: the layer contract in .importlinter (capfilt/ -> pipelines/ -> model/, model/
# knows no Ray) fails the run before any test does.
test: install $(OPENCLIP_VENV)/bin/python
	$(BIN)/lint-imports --no-cache
	CAPFILT_OPENCLIP_PYTHON=$(OPENCLIP_VENV)/bin/python $(BIN)/python -m pytest -q --durations=25

# The fast tier, for a developer between edits: the layer contract and every test not marked
# `slow` (a slow test takes over ~20 s on 2 cores: a Ray job end to end, or training).
test-fast: install
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q -m "not slow"

# Speed at BLIP-base shapes (random weights made on the spot): the model levers one by one, bf16
# parity, then `capfilt bootstrap` against the plain transformers loop at 32 and 256 images; JSON
# and one Markdown summary (bench_summary.md) in benchmarks/results/. The plain loop's 256 images
# are most of the time (~10 min on a 2-core Xeon with AMX, 21 min in float32 on an AVX2-only
# EPYC): it runs once, and its time to image 32 stands for the 32-image run (--plain-prefix),
# while capfilt's 32-image run is repeated 3 times.
# BENCH_ARGS passes options to the comparison.
BENCH_ARGS ?= --images 32 256 --repeats 3 --repeats-large 1 --plain-prefix
bench: install
	$(BIN)/python -m benchmarks.model_levers --images 2 --repeats 3
	$(BIN)/python -m benchmarks.precision_parity --images 4
	$(BIN)/python -m benchmarks.bootstrap_vs_transformers $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.summary

clean:
	rm -rf $(VENV) $(OPENCLIP_VENV) $(DEMO_OUT)
