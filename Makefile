# The habits: `make demo` runs the whole loop on this machine, `make test` runs lint and every test.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: demo stop-server loop airflow airflow-stop test chromium test-images lint fmt render bench bench-parse bench-drift bench-quality bench-serving bench-estimation bench-models-page bench-serving-layouts bench-soak bench-scale gpu-check clean constraints

# The local runtime: the steps, training (torch's and XGBoost's CPU builds) and the model server in one environment.
$(INSTALLED): requirements.txt requirements/steps.txt requirements/train.txt requirements/train-cpu.txt \
		requirements/serve.txt requirements/dev.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -r requirements.txt -r requirements/dev.txt -e .
	touch $@

demo: $(INSTALLED)  ## the main job, per model: its retrain DAG end to end, then its deploy DAG; ARGS='--conf {"epochs":5}'
	$(BIN)/python -m orchestration.embedded run --deploy $(ARGS)

stop-server: $(INSTALLED)  ## stop the local model servers that make demo's deploys started
	$(BIN)/python -m orchestration.embedded stop-server

loop: $(INSTALLED)  ## the closed loop through the real scheduler: drift in production retrains by itself
	$(BIN)/python -m orchestration.loop $(ARGS)

# AIRFLOW_HOST (default 127.0.0.1: not the whole network), AIRFLOW_PORT (8080) and MLFLOW_PORT (5000) choose where.
airflow: $(INSTALLED)  ## the real Airflow services (API server + UI, scheduler, DAG processor, triggerer) and the MLflow UI on the demo's state
	$(BIN)/python -m orchestration.services start $(if $(AIRFLOW_HOST),--host $(AIRFLOW_HOST)) \
		$(if $(AIRFLOW_PORT),--port $(AIRFLOW_PORT)) $(if $(MLFLOW_PORT),--mlflow-port $(MLFLOW_PORT))

airflow-stop: $(INSTALLED)  ## stop everything make airflow started, the tasks they run included
	$(BIN)/python -m orchestration.services stop

# One worker per core (pytest-xdist), each taking whole test files, so a module's fixtures are set up once.
PYTEST_WORKERS ?= $(shell nproc 2>/dev/null || echo 2)
test: lint .venv-checkov .venv-images .venv-bench-evidently .venv-bench-nannyml chromium  ## lint, then every test, images and benchmark smoke runs included
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The browser test (tests/e2e/test_control_room.py) drives Debian's chromium with Playwright, no browser download. As
# root (CI) a missing chromium is installed from Debian's packages; elsewhere the test says what to install and skips.
CHROMIUM_PACKAGES := chromium fonts-liberation
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends
chromium:
	@if ! command -v chromium >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing $(CHROMIUM_PACKAGES) (apt-get) for the browser test"; \
		$(APT_INSTALL) $(CHROMIUM_PACKAGES) >/dev/null || \
			{ apt-get update -q >/dev/null && $(APT_INSTALL) $(CHROMIUM_PACKAGES) >/dev/null; }; \
	fi

test-images: $(INSTALLED) .venv-checkov .venv-images  ## only the image builds and their smoke tests (root, buildah)
	$(BIN)/python -m pytest -m images tests/images $(PYTEST_ARGS)

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: $(INSTALLED)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Example cluster values; set the real ones in the environment (docs/cluster.md).
render: export ML_RUNTIME := kubernetes
render: export ML_ARTIFACT_ROOT ?= s3://ml-artifacts/continuous-training
render: export ML_DATASET_URI ?= s3://ml-datasets/{dataset}/{dataset}.parquet
render: export MLFLOW_TRACKING_URI ?= http://mlflow.mlflow.svc.cluster.local:5000
render: $(INSTALLED)  ## every pod spec of every DAG task and every manifest as YAML in build/k8s (OUT=...)
	$(BIN)/python -m orchestration.render --out $(or $(OUT),build/k8s)

bench: $(INSTALLED)  ## the main job on 100k rows: per-task wall time, Airflow overhead, DAG parse time (ARGS=--smoke: 1 min)
	$(BIN)/python benchmarks/main_job.py $(ARGS)

bench-scale: $(INSTALLED)  ## the retrain steps at 100k/1M/10M rows, HEAD vs the working tree: seconds and peak RSS per step (ARGS='--sizes 100000,1000000 --ref none'; 10M: ~40 min)
	$(BIN)/python benchmarks/scale.py $(ARGS)

bench-parse: $(INSTALLED)  ## DAG parse time per file with 1/10/50 models vs the Airflow floor; dag-processor pickup of a new model (~7 min)
	$(BIN)/python benchmarks/dag_parse.py $(ARGS)

bench-drift: $(INSTALLED) .venv-bench-evidently  ## drift library vs Evidently 0.7 on 1M x 25 columns (+ a 10M window)
	$(BIN)/python benchmarks/drift.py $(ARGS)

bench-estimation: $(INSTALLED) .venv-bench-nannyml  ## performance estimation (CBPE) vs NannyML 0.13 per window: estimates, bands, time at 10k/1M rows
	$(BIN)/python benchmarks/performance_estimation.py $(ARGS)

bench-quality: $(INSTALLED)  ## every family's holdout metric and fit time vs scikit-learn's HistGradientBoosting, per task (~10 min)
	$(BIN)/python benchmarks/model_quality.py $(ARGS)

bench-serving: $(INSTALLED)  ## model server vs mlflow models serve: req/s, p50/p99 at batch 1/64, 1/2 workers (~5 min)
	$(BIN)/python benchmarks/serving.py $(ARGS)

bench-serving-layouts: $(INSTALLED)  ## one server process per model vs one for all, 2 and 5 models: memory, start, req/s, p99, reloads, crashes (~6 min)
	$(BIN)/python benchmarks/serving_layouts.py $(ARGS)

bench-soak: $(INSTALLED)  ## model server under 5 min of load with a reload every minute: failures, RSS, p50/p99 vs unloaded (~7 min)
	$(BIN)/python benchmarks/soak.py $(ARGS)

bench-models-page: $(INSTALLED)  ## the models page's reads vs reading the registry and every report, 100 versions, 1,000 monitor runs
	$(BIN)/python benchmarks/models_page.py $(ARGS)

# No .venv needed, nor installed: a GPU node with only Python, torch, numpy, pandas and scikit-learn runs it with
# python3 (benchmarks/gpu_check.py imports nothing else); PYTHON_GPU_CHECK=/path/to/python picks the interpreter.
PYTHON_GPU_CHECK ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
gpu-check:  ## network on CUDA (bf16) vs CPU: agreement, rows/s, GPU peak memory, DDP with 2+ GPUs; exits 0 without a GPU
	PYTHONPATH=include $(PYTHON_GPU_CHECK) benchmarks/gpu_check.py $(ARGS)

constraints: $(INSTALLED)
	$(BIN)/python -m pip freeze --all --exclude-editable | sed 's/^torch==\(.*\)+cpu/torch==\1/' > constraints.tmp
	{ sed -n '1,2p' constraints.txt; cat constraints.tmp; } > constraints.new && mv constraints.new constraints.txt && rm constraints.tmp

clean:  ## remove all local state (Airflow DB, MLflow, artifacts, datasets)
	rm -rf .local

# Evidently, the drift benchmark's anchor, brings its own stack (and needs pandas 2): its own virtualenv.
.venv-bench-evidently: requirements/bench-evidently.txt
	rm -rf $@
	$(PYTHON) -m venv $@
	$@/bin/python -m pip install --quiet -r requirements/bench-evidently.txt || { rm -rf $@; exit 1; }
	touch $@

# NannyML, the performance estimation benchmark's anchor, brings its own stack (LightGBM, FLAML): its own virtualenv.
.venv-bench-nannyml: requirements/bench-nannyml.txt
	rm -rf $@
	$(PYTHON) -m venv $@
	$@/bin/python -m pip install --quiet -r requirements/bench-nannyml.txt || { rm -rf $@; exit 1; }
	touch $@

# checkov (the Kubernetes policy scan of tests/k8s) pins old boto3/packaging releases, so it gets its own virtualenv;
# the folder is the stamp, removed again when the install fails.
.venv-checkov: requirements/checkov.txt
	rm -rf $@
	$(PYTHON) -m venv $@
	$@/bin/python -m pip install --quiet -r requirements/checkov.txt || { rm -rf $@; exit 1; }
	touch $@

# Container images (docker/): docker build where a Docker engine answers, else buildah; each image's SBOM and size
# report go to build/images. Where python:3.11-slim cannot be pulled, build a local base first (docker/README.md):
#   .venv/bin/python docker/build.py base && make images ARGS='--base-image localhost/python-base:3.11'
.PHONY: images
images: $(INSTALLED) .venv-images  ## build the steps, train, serve and airflow images, print their sizes (ARGS='--image serve')
	$(BIN)/python docker/build.py build $(ARGS)

# hadolint, cyclonedx-py and pip-audit (make images, tests/images) pin their own dependencies: their own virtualenv;
# the folder is the stamp, removed again when the install fails.
.venv-images: requirements/images.txt
	rm -rf $@
	$(PYTHON) -m venv $@
	$@/bin/python -m pip install --quiet -r requirements/images.txt || { rm -rf $@; exit 1; }
	touch $@
