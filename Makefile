# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create .venv when it is missing; the install step is skipped once done.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU wheel of this pin lies on the project's machines; a GPU user can run
# `make TORCH_SPEC='torch>=2.4' setup` (pyproject keeps the range open).
TORCH_SPEC ?= torch==2.13.0
HOME_DIR ?= .candleray
WEB := serve/web

.PHONY: setup browser database demo test lint bench serve mlflow-ui clean

setup: $(STAMP)

$(STAMP): pyproject.toml .ci/constraints.txt $(WEB)/package-lock.json
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	# the S3 stack pinned to versions that resolve at once (.ci/constraints.txt says why)
	$(BIN)/pip install -q -c .ci/constraints.txt -e '.[dev]'
	# the dashboard's chart library and the /docs page's Swagger UI, from npm with the lockfile
	# (served by the app: no CDN); no install scripts: swagger-ui-dist's @scarf/scarf one only
	# reports the install to its vendor
	npm ci --prefix $(WEB) --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $(STAMP)

# Debian's chromium for the dashboard test (Playwright drives it; no browser is downloaded)
browser:
	@command -v chromium >/dev/null || { \
		[ "$$(id -u)" = 0 ] || { echo "chromium is missing: run 'sudo apt-get install -y chromium'"; exit 1; }; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# Debian's PostgreSQL server binaries for the journal/annotation/MLflow-store tests (the tests
# start their own server in a temp folder). Debian's package would also create and start a
# 'main' cluster on port 5432 (a system service nobody asked for, on a port others may use):
# postgresql-common's createcluster.conf says not to, written before the install, kept by it
PG_NO_CLUSTER = mkdir -p /etc/postgresql-common && \
	echo 'create_main_cluster = false' >> /etc/postgresql-common/createcluster.conf
database:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		[ "$$(id -u)" = 0 ] || { echo "PostgreSQL is missing: run 'sudo sh -c \"$(PG_NO_CLUSTER)\"' then 'sudo apt-get install -y -o Dpkg::Options::=--force-confold postgresql'"; exit 1; }; \
		$(PG_NO_CLUSTER) && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dpkg::Options::=--force-confold postgresql >/dev/null; }

demo: $(STAMP)
	$(BIN)/candleray demo

test: $(STAMP) browser database lint
	$(BIN)/python -m pytest -q --durations=15

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/train_distributed.py
	$(BIN)/python bench/backtest_speed.py
	$(BIN)/python bench/backtest_model_speed.py
	$(BIN)/python bench/backtest_scale.py
	$(BIN)/python bench/live_latency.py --actor-threads 1
	$(BIN)/python bench/serve_latency.py
	$(BIN)/python bench/serve_latency.py --knob throughput-optimized --rounds 3

serve: $(STAMP)
	$(BIN)/candleray serve

# first the links that open each experiment's runs in the model-training view: MLflow 3's UI
# shows a new user GenAI views whatever an experiment's kind tag says
mlflow-ui: $(STAMP)
	mkdir -p $(HOME_DIR)
	@$(BIN)/python -c 'import sys; from pipelines.tracking.experiments import link_lines; print(*link_lines(sys.argv[1]), sep="\n")' \
		sqlite:///$(abspath $(HOME_DIR))/mlflow.db
	$(BIN)/mlflow ui --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///$(abspath $(HOME_DIR))/mlflow.db

clean:
	rm -rf $(HOME_DIR) .pytest_cache .ruff_cache
