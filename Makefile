# x402bench: every target installs what it needs first (idempotent), so a fresh clone needs only make.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin

.PHONY: setup demo test chromium contracts bench clean

setup: $(VENV)/.installed node_modules/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# --ignore-scripts: the Anvil package ships its native binary and the x402 TypeScript SDK is plain JS;
# nothing is downloaded at install or run time. package-lock.json lists Anvil's optional package for
# every platform, so `npm ci` installs this platform's and leaves the lock file untouched; `npm install`
# is the fallback for a registry mirror that lacks a package, with the same pinned versions.
node_modules/.installed: package.json package-lock.json
	npm ci --ignore-scripts --no-audit --no-fund || npm install --ignore-scripts --no-audit --no-fund
	test -x node_modules/@foundry-rs/anvil-*/bin/anvil && test -f node_modules/solc/soljson.js
	touch $@

demo: setup
	$(BIN)/x402bench demo scenarios/smoke.yaml

# The report's acceptance test opens report.html in headless Chromium (Debian's `chromium`, never a
# downloaded browser). Installed here when missing and running as root (CI on a fresh machine);
# otherwise say so: the test then fails naming what is missing, it does not skip.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get install -y chromium || { apt-get update && apt-get install -y chromium; }; \
	  else echo "chromium is missing: install it (apt-get install chromium) or tests/test_report_browser.py fails" >&2; fi; }

test: setup chromium
	$(BIN)/pytest -q

contracts: setup
	$(PY) -m services.contracts.build

bench: setup
	$(PY) bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) node_modules results .pytest_cache
