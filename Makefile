# diffusion-lab: every target is a thin wrapper over `python -m diffusion_lab ...` or pytest,
# so a student without make runs the same things (see README).
PYTHON ?= python3
VENV ?= .venv
# CPU build by default (a local wheel on the course machines); GPU users: make setup TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0
# where torch comes from (empty: pip's own index). On your own Linux computer PyPI's torch is the CUDA build:
#   make setup TORCH_SPEC=torch TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup demo test lab clean help

help:
	@echo "make demo   set up .venv and run the headless demo (prints where results are)"
	@echo "make test   set up .venv and run the whole test suite"
	@echo "make lab    set up .venv and open JupyterLab on labs/"

# Set-up is idempotent: it reruns only when pyproject.toml changed or the venv is missing.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --disable-pip-version-check -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(BIN)/pip install --disable-pip-version-check -q -e ".[dev,lab]"
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/python -m diffusion_lab demo

test: setup
	DIFFUSION_LAB_NO_PROGRESS=1 DIFFUSION_LAB_QUICK=1 TRANSFORMERS_VERBOSITY=error $(BIN)/python -m pytest $(PYTEST_ARGS)

lab: setup
	$(BIN)/python -m diffusion_lab lab

clean:
	rm -rf $(VENV) outputs .pytest_cache
