# Two commands do everything on a fresh machine (Python >= 3.10 with venv):
#   make study   set up .venv, then run the whole study on the embedded default (offline, under 10 min on 2 cores)
#   make test    set up .venv, then run the tests
#   make seeds   the study with its training notebooks for 3 seeds (mean ± std in the tables; about 3x as long)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= embedded

.PHONY: study seeds test dry-run gpu-check clean-runs

$(VENV)/installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[test]'
	touch $@

study: $(VENV)/installed
	$(PY) -m partwhole.runner --profile $(PROFILE)

seeds: $(VENV)/installed
	$(PY) -m partwhole.runner --profile $(PROFILE) --seeds 3

test: $(VENV)/installed
	$(PY) -m pytest -q

dry-run: $(VENV)/installed
	$(PY) -m partwhole.runner --profile $(PROFILE) --dry-run

gpu-check: $(VENV)/installed  # on a CUDA machine: measures the paper profile's costly steps, writes results/gpu/<device>.json
	$(PY) -m partwhole.benchmark --out results/gpu

clean-runs:  # generated data, targets and checkpoints (results/ stays)
	rm -rf data runs
