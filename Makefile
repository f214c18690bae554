# Two entry points for a fresh clone (Python 3.10+ and pip only):
#   make run    # set up .venv, then run the whole pipeline on the embedded demo (on every core: CORES=all)
#   make test   # set up .venv with test extras, then run the test suite
# Extra Snakemake arguments: make run ARGS="--config dataset=mirflickr25k"
PYTHON ?= python3
VENV ?= .venv
ARGS ?=
CORES ?= all

.PHONY: run test venv clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(VENV)/bin/python pyproject.toml
	$(VENV)/bin/python -m pip install -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(VENV)/bin/python -m pip install -e '.[test,slurm]'
	touch $@

venv: $(VENV)/.installed

run: $(VENV)/.installed
	$(VENV)/bin/snakemake --cores $(CORES) all $(ARGS)

test: $(VENV)/.installed-test
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf results logs data .snakemake
