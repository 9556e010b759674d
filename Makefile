# EduRanker: `make run` starts the whole loop locally, `make test` runs the suite.
# Both install what is missing into .venv first (torch's CPU wheel before anything else).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install run monitor test test-fast lint bench loadtest eval online notebook image up down clean

# The first time takes minutes (torch alone is several hundred MB): each step says what it installs
# and pip shows its progress. Later runs skip this until pyproject.toml or requirements.lock change.
$(STAMP): pyproject.toml requirements.lock
	@echo "==> First install into $(VENV): 1 to 5 minutes on 2 CPU cores, depending on how fast the"
	@echo "    wheels come (later runs skip it). In order:"
	@echo "    pip, torch 2.13.0 (CPU), then EduRanker with its dev tools, pinned by requirements.lock."
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade "pip>=24"
	@echo "==> torch 2.13.0 (CPU build, the largest download)"
	$(BIN)/python -m pip install --progress-bar on "torch==2.13.0"
	@echo "==> EduRanker (editable) and its dependencies, pinned by requirements.lock"
	$(BIN)/python -m pip install --progress-bar on -c requirements.lock -e ".[dev]"
	touch $(STAMP)
	@echo "==> Installed into $(VENV)."

install: $(STAMP)

run: install
	$(BIN)/python -m tools.cli run

# `make run` plus Prometheus on http://127.0.0.1:$(PROMETHEUS_PORT), with deploy/prometheus's jobs
# and alerts (docs/monitoring.md). Prometheus is not installed for you: apt-get install prometheus.
PROMETHEUS      ?= prometheus
PROMETHEUS_PORT ?= 9090
monitor: install
	$(BIN)/python -m tools.cli run --monitor --prometheus $(PROMETHEUS) --prometheus-port $(PROMETHEUS_PORT)

test: install
	$(BIN)/python -m pytest -q

# Each script writes bench/results/<name>.json; numbers are only comparable on a quiet machine.
bench: install
	$(BIN)/python -m bench.rerank
	$(BIN)/python -m bench.train
	$(BIN)/python -m bench.feedback
	$(BIN)/python -m bench.loadtest
	$(BIN)/python -m bench.embedding
	$(BIN)/python -m bench.scale

# Concurrent searches and feedback for 60 s (LOADTEST_ARGS="--duration 20") against a stack it starts
# like `make run`, or a running one (--reranker URL --collector URL). Fails on any error.
loadtest: install
	$(BIN)/python -m bench.loadtest $(LOADTEST_ARGS)

# Does it learn? Simulated users on a BEIR collection through the real services (tens of minutes).
# make eval DATASET=path/to/collection EVAL_ARGS="--seeds 1 2 3 --flipped-seeds 1"
DATASET ?= ../shared/datasets/cranfield
eval: install
	$(BIN)/python -m bench.quality --dataset $(DATASET) $(EVAL_ARGS)

# Do users decide right? Simulated people on the collection through the real services: the
# sensitivity of interleaving against A/B, safety (flipped labels, a degraded champion), and what
# users see while the loop learns online (bench/results/online.json; about 20 minutes a seed here).
# make online ONLINE_ARGS="--seeds 1 --searches 3000"
online: install
	$(BIN)/python -m bench.online --dataset $(DATASET) $(ONLINE_ARGS)

# The unit tests: no process, socket or store started (tests/integration has those).
test-fast: install
	$(BIN)/python -m pytest -q tests/unit

# The code is wrapped by hand at 110 columns; `ruff check` is the lint, not `ruff format`.
lint: install
	$(BIN)/ruff check .

# Jupyter on 127.0.0.1 only, started in notebooks/; installed on first use (optional group `notebook`).
# More options: make notebook NOTEBOOK_ARGS="--no-browser --port=8888"
notebook: install
	@test -x $(BIN)/jupyter-notebook || { echo "==> Jupyter into $(VENV) (first use only, about a minute)"; \
		$(BIN)/python -m pip install --progress-bar on -c requirements.lock -e ".[dev,notebook]"; }
	cd notebooks && $(abspath $(BIN))/jupyter notebook --ip=127.0.0.1 $(NOTEBOOK_ARGS) fine_tune_cross_encoder.ipynb

# The image of deploy/docker/Dockerfile, built with buildah (no Docker daemon, no registry: the base is
# made with debootstrap when PYTHON_IMAGE cannot be pulled), then each service started in it until
# ready. About 18 minutes the first time, 16 once the base is made (2 cores); as root, with Debian's
# buildah, podman and debootstrap. Not part of `make test` (docs/deployment.md#the-image-built-here).
IMAGE        ?= eduranker:latest
PYTHON_IMAGE ?= python:3.11-slim-trixie
image:
	IMAGE=$(IMAGE) PYTHON_IMAGE=$(PYTHON_IMAGE) deploy/docker/build-image.sh

up:
	docker compose up -d --build

down:
	docker compose down

clean:
	rm -rf var .pytest_cache
