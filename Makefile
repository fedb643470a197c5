# Install order matters: the CPU torch wheel first, so that the project's `torch>=` bound is
# already met and pip does not pull a multi-GB CUDA build. On a GPU machine set TORCH_SPEC
# to the torch you want (e.g. TORCH_SPEC=torch) before `make`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
DEMO_OUT ?= demo-out

.PHONY: demo demo-full test install clean

$(BIN)/capfilt: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"
	@touch $@

install: $(BIN)/capfilt

# One whole round of CapFilt on the toy world served on loopback (about 17 min on 2 CPU cores).
demo: install
	$(BIN)/python -m capfilt.demo --output $(DEMO_OUT)

# The longer run: a bigger world, two rounds, longer training (about an hour on 2 cores).
demo-full: install
	$(BIN)/python -m capfilt.demo --output $(DEMO_OUT)-full --full

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO_OUT)
