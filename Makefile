# Every target creates .venv on first use and installs what it needs into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

.PHONY: run run-vit test test-fast validate bench study clean lint gpu-check

$(STAMP): requirements.txt requirements-dev.txt requirements-export.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned to the build this machine carries, so the ranges below resolve to it
	$(PY) -m pip install --quiet $(TORCH_PIN) || $(PY) -m pip install --quiet "torch>=2.4,<3" "torchvision>=0.19,<1"
	$(PY) -m pip install --quiet -r requirements-dev.txt
	# the product itself, editable: `kd-pipeline` and the scripts import this checkout's src/
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

run: $(STAMP)  ## the main job: CNN TAKD pipeline on digits (CPU), prints the summary
	$(PY) cnn_distillation/train.py

run-vit: $(STAMP)  ## the same for the ViT preset
	$(PY) vit_distillation/train.py

test: $(STAMP)  ## the whole test suite (gpu tests skip without CUDA)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

validate: $(STAMP)  ## the check to run before every commit
	$(PY) validate_project.py

bench: $(STAMP)
	$(PY) bench/overhead.py
	$(PY) bench/throughput.py
	$(PY) bench/memory.py

study: $(STAMP)  ## the KD study behind docs/RESULTS.md (kd, dkd, dist x 3 seeds on digits; ~15 min idle)
	$(PY) bench/kd_study.py

gpu-check:  ## verify a CUDA machine: no venv, no network (the system python3 with torch); runs/gpu-check/report.md
	PYTHONPATH=$(CURDIR) $(PYTHON) bench/gpu_check.py

lint: $(STAMP)
	$(PY) -m ruff check .

clean:  ## generated files only; run directories need: ./clean.sh --runs
	./clean.sh
