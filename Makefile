# x402bench: every target installs what it needs first (idempotent), so a fresh clone needs only make.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin

.PHONY: setup demo test contracts bench clean

setup: $(VENV)/.installed node_modules/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# --ignore-scripts: the Anvil package ships its native binary; nothing is downloaded at install or run time.
node_modules/.installed: package.json package-lock.json
	npm ci --ignore-scripts --no-audit --no-fund
	touch $@

demo: setup
	$(BIN)/x402bench demo scenarios/smoke.yaml

test: setup
	$(BIN)/pytest -q

contracts: setup
	$(PY) -m services.contracts.build

bench: setup
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) node_modules results .pytest_cache
