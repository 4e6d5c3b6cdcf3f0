# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml requirements-offline.txt | cksum | cut -d' ' -f1)

.PHONY: setup demo test lint clean

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

test: lint
	$(BIN)/python -m pytest -ra

clean:
	rm -rf $(VENV) runs .pytest_cache
