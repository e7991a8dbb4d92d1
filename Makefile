# Two entry points for a fresh machine (see README.md):
#   make run   - install, then run the whole workflow on the built-in cohort (ends in results/table1.csv)
#   make test  - install, then run the test suite (unit tests + one end-to-end Snakemake run)
# torch is installed first and pinned, so pip does not pull the CUDA wheels on a CPU machine;
# on a GPU machine use e.g. `make run TORCH="torch --index-url https://download.pytorch.org/whl/cu124"`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
CORES ?= 2
BIN := $(VENV)/bin

.PHONY: install run seed-spread test test-slurm lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

run: install
	$(BIN)/snakemake --cores $(CORES)

# The learned models retrained with 3 training seeds on the same cohort, lesions and splits (after `make run`,
# which is the first seed): results/seed_spread/table1.csv, every Table-1 metric as mean and SD over seeds.
seed-spread: install
	$(BIN)/snakemake --cores $(CORES) results/seed_spread/table1.csv

test: install
	$(BIN)/python -m pytest -q -m "not slurm"

# The whole Table-1 DAG through a real one-node SLURM (tests/test_slurm.py; needs root, ~12 min on 2 cores):
# .ci/run runs it after `make test`.
test-slurm: install
	$(BIN)/python -m pytest -q -m slurm

lint: install
	$(BIN)/ruff check .
	$(BIN)/snakemake --lint

clean:
	rm -rf results .snakemake
