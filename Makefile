# Two entry points, each creating its own virtual environment on first use.
#   make run   - set up and start the default simulated-detector IOC (prefix 13SIM1:)
#   make test  - set up and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

$(BIN)/.ndflow-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

.PHONY: run test bench
run: $(BIN)/.ndflow-installed
	$(BIN)/ndflow run $(ARGS)

# two workers, each test file on one worker (a module's IOC is shared by its tests)
test: $(BIN)/.ndflow-installed
	$(BIN)/python -m pytest -n 2 --dist loadfile $(ARGS)

bench: $(BIN)/.ndflow-installed
	$(BIN)/python bench/image_rate.py $(ARGS)
