# The two commands of the README: `make demo` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The package accepts torch>=2.4; the pin only keeps pip from pulling a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: install demo test lint proto clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_PIN)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# `make demo APP=seg3d_monai` (or seg3d_bundle) trains a MONAI example instead of the digits.
APP ?= digits_fedavg

demo: install
	$(BIN)/python examples/demo.py --app $(APP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/python scripts/check_unsafe.py
	$(BIN)/mypy flcore flapp provision flserverd flclientd fladmin fltui fldev examples bench tests
	$(BIN)/lint-imports --no-cache

test: lint
	$(BIN)/pytest -n 2 --dist loadgroup

proto: install
	$(BIN)/python scripts/genproto.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
