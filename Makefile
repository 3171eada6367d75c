# All set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel of torch 2.13.0 (on this machine's disk); GPU users install their own build first.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test lint install install-test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

# Triton for the interpreter tests: the release torch's own CUDA wheel of the installed version pins
# (torch 2.9 -> 3.5, 2.10/2.11 -> 3.6, 2.12/2.13 -> 3.7, 2.14 -> 3.8); nothing for other releases.
TRITON_FOR_TORCH = $(BIN)/python -c "import torch; v = tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2]); print({(2, 9): '3.5.*', (2, 10): '3.6.*', (2, 11): '3.6.*', (2, 12): '3.7.*', (2, 13): '3.7.*', (2, 14): '3.8.*'}.get(v, ''))"

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[test]"
	@t=$$($(TRITON_FOR_TORCH)); if [ -n "$$t" ]; then $(BIN)/pip install -q "triton==$$t"; fi
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/selfattn demo

test: install-test
	$(BIN)/python -m pytest

lint: install-test
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/mypy

clean:
	rm -rf $(VENV) runs .pytest_cache
