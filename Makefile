# Two commands do everything on a fresh machine (Python >= 3.10 with venv):
#   make study      set up .venv, then run the whole study on the embedded default (offline; 42 min on 2 cores)
#   make test       set up .venv, then run the tests
#   make lab        set up .venv, then open the notebooks in JupyterLab (each runs top to bottom with its defaults)
# and more:
#   make seeds      the study, then its seeded notebooks for 4 more seeds (mean ± std in the tables); a seed's
#                   notebooks already executed into results/ by this code with these settings are kept (its
#                   executed.json says so) and a stopped run goes on from the notebook it stopped in
#   make rehearse   the paper profile's code end to end on a CPU with random weights and tiny counts (measures nothing)
#   make dry-run PROFILE=paper    every run and download of a profile, checked and listed, nothing run
#   make gpu-check  on a CUDA machine: the costly steps measured, and the rehearsal at larger counts
#   make gpu-rehearsal  on a CUDA machine: the rehearsal at larger counts alone, all of the budget for the notebooks
#   make cpu-check  notebook 04 timed on a quiet machine and beside a busy process (results/embedded/cpu-check.json)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= embedded

.PHONY: study seeds test lab rehearse dry-run gpu-check gpu-rehearsal cpu-check clean-runs

$(VENV)/installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[test]' -c constraints.txt
	touch $@

study: $(VENV)/installed
	$(PY) -m partwhole.workflow.runner --profile $(PROFILE)

seeds: $(VENV)/installed
	$(PY) -m partwhole.workflow.runner --profile $(PROFILE) --seeds 5 --resume

test: $(VENV)/installed
	$(PY) -m pytest -q

lab: $(VENV)/installed  # one thread per kernel, as the runner's: its runs go side by side and compute as in batch
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(VENV)/bin/jupyter lab notebooks/

rehearse: $(VENV)/installed
	$(PY) -m partwhole.workflow.runner --profile rehearsal

dry-run: $(VENV)/installed
	$(PY) -m partwhole.workflow.runner --profile $(PROFILE) --dry-run

gpu-check:  # the clock starts before the set-up: the budget is the whole command's
	started=$$(date +%s) && $(MAKE) $(VENV)/installed && $(PY) -m partwhole.scale.benchmark --rehearse --out results/gpu --started-at $$started

gpu-rehearsal:
	started=$$(date +%s) && $(MAKE) $(VENV)/installed && $(PY) -m partwhole.scale.benchmark --rehearse-only --out results/gpu --started-at $$started

cpu-check: $(VENV)/installed
	$(PY) -m partwhole.scale.busy_machine --profile $(PROFILE)

clean-runs:  # generated data, targets and checkpoints (results/ stays)
	rm -rf data runs
