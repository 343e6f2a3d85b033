# Every target installs what it needs into .venv by itself.
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp
UV_VERSION := 0.13.9

# All tool state stays inside the repo; all telemetry is off.
export CAMEO_DATA            ?= $(CURDIR)/data
export DAGSTER_HOME          := $(CURDIR)/.dagster
export DVC_SITE_CACHE_DIR    := $(CURDIR)/.dvc/tmp/site-cache
export MPLCONFIGDIR          := $(CURDIR)/.cache/matplotlib
export DAGSTER_DISABLE_TELEMETRY := 1
export MLFLOW_DISABLE_TELEMETRY  := true
export DVC_NO_ANALYTICS      := 1
export GX_ANALYTICS_ENABLED  := false
export DO_NOT_TRACK          := 1
export GRADIO_ANALYTICS_ENABLED := False
# MLflow: the repo's SQLite store (artifacts in mlruns/), unless the caller points elsewhere.
export MLFLOW_TRACKING_URI   ?= sqlite:///$(CURDIR)/mlruns.db
export PATH                  := $(CURDIR)/$(VENV)/bin:$(PATH)
# Python writes its byte-code caches (gitignored and dvcignored). Where the environment turns
# them off, every process compiled diffusers, transformers, Dagster and MLflow from source
# again: 13 of the 23 s a training process spent importing, 16 of the 27 s of test collection.
unexport PYTHONDONTWRITEBYTECODE

# pytest-xdist workers of the parallel part of `make test`.
TEST_WORKERS ?= 2

.PHONY: venv demo test lint ui mlflow-ui bench serve serve-check studio docs k8s-params clean gpu-window gpu-wheels

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# torch through pip, which finds the CPU wheel on this machine's disk (uv would fetch the
	# CUDA build); then uv installs the rest of the lock, in parallel and without compiling
	# bytecode up front (3.6 min with pip alone, 1.6 here).
	$(PY) -m pip install --quiet --no-deps uv==$(UV_VERSION) $$(grep '^torch==' requirements.lock)
	$(VENV)/bin/uv pip install --quiet --python $(PY) --no-deps -r requirements.lock
	$(VENV)/bin/uv pip install --quiet --python $(PY) --no-deps --no-build-isolation -e .
	# `source .venv/bin/activate` points dagster at the repo's instance (.dagster/).
	grep -q DAGSTER_HOME $(VENV)/bin/activate || \
		echo 'export DAGSTER_HOME="$(CURDIR)/.dagster"' >> $(VENV)/bin/activate
	touch $(STAMP)

# The sample inputs are written bit-identically on every machine, so `dvc add` finds them
# equal to the committed data/movies.dvc and data/singles.dvc (and caches them for the push).
# The second `cameo train` is a run to compare with in the MLflow UI (docs/training.md, Comparing runs):
# the same data, seed and steps at a third of the learning rate, not registered.
demo: $(STAMP)
	cameo sample-movie
	dvc add data/movies data/singles
	dvc repro
	dvc push
	cameo dataset summary
	cameo model promote latest
	cameo train --learning-rate 1e-3 --run-name lr-1e-3 --output-dir checkpoints/lr-1e-3 \
		--no-register --no-progress
	cameo serve-check
	cameo lineage models:/cameo-inpaint@champion

# The suite on two workers (a file, or the serving folder, per worker: tests/conftest.py), then
# the `serial` tests, which time servers against short limits, alone. The workers take the
# groups in the order tests/conftest.py gives them (slow ones first), not xdist's default of
# the groups with most tests first, which left the long two-test files for the end.
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -m "not serial" -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder
	$(PY) -m pytest -m serial

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# Dagster's `dg dev` (what `dagster dev` now points to), for the dg project [tool.dg] declares.
ui: $(STAMP)
	VIRTUAL_ENV=$(CURDIR)/$(VENV) dg dev --host 127.0.0.1 --port 3000

# MLflow 3.17's UI opens in GenAI mode unless the link asks for model training: open this one.
mlflow-ui: $(STAMP)
	@$(PY) -c 'import mlflow; from training.tracking import EXPERIMENT, configure_tracking, \
		experiment_url; configure_tracking(); \
		print(experiment_url(mlflow.get_experiment_by_name(EXPERIMENT).experiment_id))'
	mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --host 127.0.0.1 --port 5000

# The champion of `cameo-inpaint` behind the scoring server (`serving.app`; timeout and workers from
# params.yaml's `serving` section); PORT=5000 by default.
PORT ?= 5000
serve: $(STAMP)
	cameo serve --port $(PORT)

# The studio page (http://127.0.0.1:7860): paint characters into a panel through `make serve`'s
# endpoint, which must be running.
studio: $(STAMP)
	cameo studio --endpoint http://127.0.0.1:$(PORT)

# Serve the champion on a free port, one real HTTP request, the 5-panel grid, server stopped.
serve-check: $(STAMP)
	cameo serve-check

# The documentation (docs/, MkDocs) into site/; a broken link or anchor fails the build.
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --quiet

bench: $(STAMP)
	$(PY) bench/run.py

# The params ConfigMap's source lives inside k8s/base, so `kubectl apply -k` reads it without
# --load-restrictor; it is a copy of params.yaml (a test fails when the two differ).
# A short window on a bare GPU machine (bench/gpu_window.py): its own Python and CUDA torch, no
# venv, no network. OUT gets every figure as it is measured; SMOKE=1 rehearses on CPU;
# PART=dataset measures the dataset stages' networks instead of the model, PART=synthetic
# ConsiStory's drawing of a synthetic character's batch.
OUT      ?= gpu-window-out
BUDGET_S ?= 540
PART     ?= model
gpu-window:
	python3 -m bench.gpu_window --out $(OUT) --budget-s $(BUDGET_S) --part $(PART) \
		$(if $(SMOKE),--smoke)

# Beforehand, on a networked machine: the wheels gpu-window installs where the target lacks them,
# for the target's Python (PY=3.12 by default), into gpu-wheels/ (git-ignored).
PY ?= 3.12
gpu-wheels:
	python3 -m pip download --quiet --only-binary=:all: --no-deps --python-version $(PY) \
		--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux_2_28_x86_64 -d gpu-wheels -r requirements-gpu-window.txt

k8s-params:
	cp params.yaml k8s/base/params.yaml

clean:
	rm -rf $(VENV) .dagster/storage .dagster/history .dagster/schedules .dagster/logs
