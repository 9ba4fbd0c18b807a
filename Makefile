# Two entry points (README quick start): `make run` and `make test`. Both set up .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DVC_NO_ANALYTICS := 1

.PHONY: setup run test dag report-html clean

$(BIN)/smoothcert: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps mlxtend foolbox
	touch $@

setup: $(BIN)/smoothcert

run: setup  ## the default pipeline on the embedded digits data, then the HTML report
	PATH=$(CURDIR)/$(BIN):$$PATH snakemake --profile workflow/profiles/local
	PATH=$(CURDIR)/$(BIN):$$PATH snakemake --profile workflow/profiles/local --report report.html

test: setup  ## unit tests plus a small end-to-end workflow run
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest -q

dag: setup
	PATH=$(CURDIR)/$(BIN):$$PATH snakemake --dag | dot -Tpng > dag.png

clean:
	rm -rf data/prepared models results report metrics report.html logs .smoothcert .snakemake
