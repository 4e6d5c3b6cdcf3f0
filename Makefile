# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml requirements-offline.txt | cksum | cut -d' ' -f1)

.PHONY: setup demo test check lint clean browser catalog

$(STAMP): pyproject.toml requirements-offline.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[all,test]'
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-offline.txt
	rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)

demo: setup
	$(BIN)/transferlab demo

lint: setup
	$(BIN)/ruff check src tests bench

# After a torchvision or timm upgrade: write static/models.json and static/timm_models.json again (minutes).
catalog: setup
	$(BIN)/python -m transferlab.models.catalog

# Headless Chromium + its driver for the browser test (tests/inference/test_serve.py), from Debian's packages.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then exit 0; fi; \
	SUDO=; [ "$$(id -u)" = 0 ] || SUDO="sudo -n"; \
	echo "installing chromium and chromium-driver with apt-get"; \
	( $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver ) \
	|| echo "WARNING: could not install chromium + chromium-driver: the browser test will be SKIPPED (run as root: apt-get install chromium chromium-driver)" >&2

# The whole suite, every tier (what CI runs): about 4.5 minutes of pytest on 2 quiet CPU cores.
test: lint browser
	$(BIN)/python -m pytest -ra

# The fast tier for the edit loop: lint + every test not marked slow (about a minute on 2 cores; no browser).
# `slow` marks real photos, real processes (torchrun, signals, a Jupyter kernel, fresh interpreters) and builds.
check: lint
	$(BIN)/python -m pytest -ra -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
