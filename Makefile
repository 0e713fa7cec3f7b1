# The two commands of the README: `make demo` (set up, then run a coordinator with a local miner and demo
# jobs) and `make test` (set up, then run the whole test suite). Both create .venv from pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup node-setup demo test test-python test-node lint proto serve bench bench-smoke

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/aitbc-coordinator demo

serve: setup
	$(BIN)/aitbc-coordinator serve

tools/buf/node_modules/.installed: tools/buf/package-lock.json
	cd tools/buf && npm ci --no-audit --no-fund --loglevel=error
	touch $@

clients/node/node_modules/.installed: clients/node/package-lock.json
	cd clients/node && npm ci --no-audit --no-fund --loglevel=error
	touch $@

node-setup: tools/buf/node_modules/.installed clients/node/node_modules/.installed

# The README's test command: the contract (buf lint + breaking), the Python suite, the Node client's suite.
test: setup node-setup
	./scripts/buf_check.sh
	$(BIN)/python -m pytest -q -p no:cacheprovider
	cd clients/node && AITBC_VENV_BIN=$(CURDIR)/$(BIN) npm test

test-python: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

proto: setup
	$(BIN)/python scripts/gen_proto.py

# The performance suite (bench/README.md): a real coordinator, miners and clients over loopback. Takes a few
# minutes and the whole machine; `bench-smoke` is the same code scaled down to seconds (CI runs it as a test).
bench: setup
	$(BIN)/python -m bench --json bench-results.json

bench-smoke: setup
	$(BIN)/python -m bench --smoke
