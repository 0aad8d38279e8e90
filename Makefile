# The study as a pipeline of file targets. `make help` lists the targets.
# PROFILE (default paper) and SET ("dotted.key=value ...") are passed to every notebook.
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
# The executed notebooks are the stamps: keep them even though pattern rules made them.
.SECONDARY:
SHELL := bash

PROFILE ?= paper
SET ?=
SWEEP ?= smoke-seeds
RUN ?= $(PROFILE)
TARGET ?= hyperkvasir
BENCH ?=
MODEL ?= resnet50
IMAGES ?=
NAME ?=
PYTHON ?= python3
# The environment the study runs in: `make setup` makes .venv; a conda environment is given as
# VENV=$CONDA_PREFIX (docs/reproducing.md). Sweep members take their Ray worker's.
VENV ?= .venv
PY := $(VENV)/bin/python
SETUP_STAMP := $(VENV)/.installed
# A value as one shell word, whatever it holds (a folder named "patient's images"): in single quotes,
# each single quote in it written as '"'"'
q = '$(subst ','"'"',$(1))'
ARGS = --profile $(call q,$(PROFILE)) $(foreach s,$(SET),--set $(call q,$(s))) --go-on $(call q,$(GO_ON))$(if $(FAILURE_FILE), --failure-file $(call q,$(FAILURE_FILE)))
KV := $(PY) -m kvasir_utils
# The pipeline's sub-make takes the environment as its caller made it (--old-file on the stamp): the
# target that calls it already depends on the stamp, and GNU make does not pass a caller's -o on.
SUBMAKE := $(MAKE) --no-print-directory --old-file=$(SETUP_STAMP) PROFILE=$(call q,$(PROFILE)) SET=$(call q,$(SET))
FAILURE_FILE ?=
# What the user ran, for the line that tells how to go on after an interrupt or an error (passed to
# the study as --go-on; exported so the sub-makes pass the same). A sweep member's runner names a
# FAILURE_FILE for the failing step to describe itself in.
ifeq ($(MAKELEVEL),0)
given = $(if $(filter command line,$(origin $(1))),$(1)=$(if $(word 2,$($(1))),"$($(1))",$($(1))))
export GO_ON := $(strip make $(MAKECMDGOALS) $(foreach v,PROFILE MODEL IMAGES NAME SWEEP RUN TARGET VENV,$(call given,$(v))))$(if $(SET), SET="$(SET)")
endif

.PHONY: help setup lock data splits evaluate smoke reproduce report sweep cross-evaluate predict export test test-fast docs chromium \
	screenshots lint lab bench gpu-check clean test-long

help: ## list the targets (the default)
	@echo "usage: make TARGET [PROFILE=paper|smoke|path/to.yaml] [SET=\"key=value ...\"] [SWEEP=name|path.yaml]"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## (.*)/  \1\t\2/' | expand -t 14

setup: $(SETUP_STAMP) ## create .venv with the exact versions of requirements.lock and the study (editable)

$(SETUP_STAMP): pyproject.toml requirements.lock
	@$(if $(wildcard $(PY)),$(PY),$(PYTHON)) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "error: requirements.lock is made for Python 3.11, this is " + sys.version.split()[0] + "; run make setup PYTHON=python3.11")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock 2>&1 | { grep -v "is ignored: it is neither" || true; }; exit $${PIPESTATUS[0]}
	PYTHONWARNINGS=ignore $(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e . 2>&1 | { grep -v "is ignored: it is neither" || true; }; exit $${PIPESTATUS[0]}
	$(PY) -c "import kvasir_utils, torch, torchvision, papermill, ray" && touch $@

lock: $(SETUP_STAMP) ## regenerate requirements.lock (exact versions, Linux x86-64, Python 3.11) after a dependency change
	$(VENV)/bin/pip-compile --quiet --extra dev --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links \
		--no-emit-trusted-host -c constraints.txt --output-file requirements.lock pyproject.toml

data: $(SETUP_STAMP) ## notebook 01: download, check, split and cache the dataset of PROFILE
	@$(SUBMAKE) pipeline-data

splits: $(SETUP_STAMP) ## the dataset of PROFILE's random and near-duplicate-grouped split files, with a README: reports/<profile>/splits/
	$(KV) splits $(ARGS)

reproduce: $(SETUP_STAMP) ## notebooks 01-05 and the audit (07) for every model of PROFILE, then the HTML report
	@$(SUBMAKE) pipeline-all

evaluate: $(SETUP_STAMP) ## notebooks 01-04 for every model of PROFILE and the HTML report, without 05 (a sweep's runs)
	@$(SUBMAKE) pipeline-evaluated

smoke: $(SETUP_STAMP) ## the whole study on generated data, offline, in minutes (PROFILE=smoke by default; or smoke-hyperkvasir)
	@$(MAKE) --no-print-directory --old-file=$(SETUP_STAMP) reproduce PROFILE=$(call q,$(if $(filter command line,$(origin PROFILE)),$(PROFILE),smoke)) SET=$(call q,$(SET))

report: $(SETUP_STAMP) ## re-render the HTML reports of PROFILE from the executed notebooks
	$(KV) report $(ARGS)

sweep: $(SETUP_STAMP) ## many runs on Ray (SWEEP=a name in configs/sweeps, e.g. smoke-seeds, or path.yaml; SET applies to each), then notebook 06
	$(KV) sweep $(call q,$(SWEEP)) $(foreach s,$(SET),--set $(call q,$(s)))

cross-evaluate: $(SETUP_STAMP) ## score RUN's trained models (default PROFILE) on TARGET's dataset (default hyperkvasir) via configs/mappings/
	$(KV) cross-evaluate --profile $(call q,$(RUN)) --target $(call q,$(TARGET)) $(foreach s,$(SET),--set $(call q,$(s)))

predict: $(SETUP_STAMP) ## predict IMAGES=folder/ with a trained MODEL of PROFILE [NAME=...]: CSV + HTML gallery (make says Error 3 when files were skipped)
	$(KV) predict $(ARGS) --model $(call q,$(MODEL)) --images $(call q,$(IMAGES)) $(if $(NAME),--name $(call q,$(NAME)))

export: $(SETUP_STAMP) ## write MODEL of PROFILE as ONNX with preprocessing.json, after a parity check against PyTorch
	$(KV) export $(ARGS) --model $(call q,$(MODEL))

test: $(SETUP_STAMP) chromium ## all tests but the long studies: notebook runs, a Ray cluster, a browser (no network)
	$(PY) -m pytest -m "not long"

test-long: $(SETUP_STAMP) ## the long studies: make smoke PROFILE=smoke-backbones and make sweep SWEEP=smoke-leakage (about 1.5x make test)
	$(PY) -m pytest -m long

test-fast: $(SETUP_STAMP) ## the tests without the end-to-end runs (notebooks, bench, gpu-check, a compile, repeated trainings): about 2 minutes
	$(PY) -m pytest -m "not slow and not long"

docs: $(SETUP_STAMP) ## remake the tables in docs/ that come from the code (the paper's readings)
	$(KV) docs

chromium: ## install Debian's chromium and chromium-driver for the browser tests, when missing (needs apt)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
		  { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; } || \
		  echo "warning: could not install chromium (needs root and apt); the browser tests will be skipped"; }

screenshots: $(SETUP_STAMP) chromium ## PNGs of reports/PROFILE's index, one page of each kind and JupyterLab running notebook 04, into docs/images/
	$(PY) -m tools.chromium reports/$(PROFILE) docs/images
	$(PY) -m tools.jupyterlab docs/images --profile $(call q,$(PROFILE)) $(foreach s,$(SET),--set $(call q,$(s)))

lint: $(SETUP_STAMP) ## ruff on code and notebooks; notebooks must be stored without outputs
	$(PY) -m ruff check kvasir_utils tests tools notebooks
	$(VENV)/bin/nbstripout --verify notebooks/*.ipynb

lab: $(SETUP_STAMP) ## open the notebooks in JupyterLab on PROFILE: Run all works on that profile's run (make lab PROFILE=smoke)
	$(KV) lab $(ARGS)

bench: $(SETUP_STAMP) ## measure the stages and project the paper protocol here (BENCH=--baseline: before/after; BENCH="--scale small": a quick try); writes reports/bench/bench.json
	$(KV) bench $(BENCH)

gpu-check: $(SETUP_STAMP) ## on a GPU machine: paper-scale epoch, whole protocol, concurrent runs, the leakage sweep's GPU-hours (BENCH="--scale small --cpu": a try on a CPU); writes reports/bench/gpu_check.json
	$(KV) gpu-check $(BENCH)

clean: ## delete the runs and reports of PROFILE (keeps data/ and .venv)
	@$(SUBMAKE) pipeline-clean

# ---- the pipeline: evaluated in a sub-make, once the environment exists -------------------------
ifneq ($(filter pipeline-%,$(MAKECMDGOALS)),)
# One file per make process: concurrent runs (sweep members) with other settings must not share it.
VARS_FILE := $(shell mktemp "$${TMPDIR:-/tmp}/kvasir-makevars.XXXXXX")
_ := $(shell $(KV) makevars $(ARGS)$(if $(filter pipeline-clean,$(MAKECMDGOALS)), --no-weights-check) > $(VARS_FILE) || : > $(VARS_FILE))
-include $(VARS_FILE)
_ := $(shell rm -f $(VARS_FILE))
ifndef RUN_DIR
$(error stopped: see the message above (PROFILE, SET, or a run folder in use))
endif
NB := $(RUN_DIR)/notebooks
RUN_NB = $(KV) run-notebook $(1) $(ARGS)

.PHONY: pipeline-data pipeline-all pipeline-evaluated pipeline-clean
pipeline-data: $(NB)/01_download_and_split.ipynb
pipeline-all: $(REPORT_DIR)/index.html
EVALUATED := $(foreach m,$(MODELS),$(NB)/04_evaluate-$(m).ipynb)
pipeline-evaluated: $(EVALUATED)
	$(KV) report $(ARGS)
pipeline-clean:
	rm -rf $(call q,$(RUN_DIR)) $(call q,$(REPORT_DIR))

# SETTINGS and SOURCE are rewritten only when the settings, or a local archive or folder read, change
$(NB)/01_download_and_split.ipynb: notebooks/01_download_and_split.ipynb $(SETTINGS) $(SOURCE) | $(SETUP_STAMP)
	$(call RUN_NB,01_download_and_split)

$(NB)/02_train-%.ipynb: notebooks/02_train.ipynb $(NB)/01_download_and_split.ipynb
	$(call RUN_NB,02_train) --model $*

$(NB)/03_finetune-%.ipynb: notebooks/03_finetune.ipynb $(NB)/02_train-%.ipynb
	$(call RUN_NB,03_finetune) --model $*

$(NB)/04_evaluate-%.ipynb: notebooks/04_evaluate.ipynb $(NB)/03_finetune-%.ipynb
	$(call RUN_NB,04_evaluate) --model $*

$(NB)/05_compare.ipynb: notebooks/05_compare.ipynb $(EVALUATED)
	$(call RUN_NB,05_compare)

# 07 reruns when the profile's masked profile (paper-masked) has been evaluated since
$(NB)/07_audit.ipynb: notebooks/07_audit.ipynb $(NB)/05_compare.ipynb $(wildcard $(AUDIT_INPUTS))
	$(call RUN_NB,07_audit)

$(REPORT_DIR)/index.html: $(NB)/07_audit.ipynb
	$(KV) report $(ARGS)
endif
