# recsys — `make help` lists the targets. Every target sets up .venv on a fresh machine first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS ?= serve,wandb,bench,dev,postgres,torchserve
export OMP_NUM_THREADS ?= 1
export WANDB_MODE ?= offline
export RAY_USAGE_STATS_ENABLED ?= 0

# $(call apt_install,<command or pg_ctl>,<Debian package>): install the package as root when
# the command is missing (pg_ctl lives outside PATH, under /usr/lib/postgresql/*/bin).
define apt_install
	{ command -v $(1) >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/$(1) >/dev/null 2>&1; } \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && { apt-get install -y -q $(2) >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 \
	  && apt-get install -y -q $(2) >/dev/null 2>&1; }; }; } \
	  || echo "note: $(2) could not be installed; the tests that need it will be skipped"
endef

.PHONY: help install demo test test-all lint fmt typecheck bench

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: otherwise a resolver may pick a multi-GB CUDA build.
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	$(BIN)/python -c "import torch; v = torch.__version__; assert v.startswith('2.13.0'), v"
	# Real Redis and PostgreSQL servers for the cache and store tests, HAProxy for Ray Serve's
	# HAProxy ingress, promtool for the alert rules' tests, Chromium for the web app's
	# browser tests (Playwright drives it; no browser download) and Java for TorchServe (the
	# export's tests). Skipped with a reason when they cannot be installed.
	$(call apt_install,redis-server,redis-server)
	$(call apt_install,pg_ctl,postgresql)
	$(call apt_install,haproxy,haproxy)
	$(call apt_install,promtool,prometheus)
	$(call apt_install,chromium,chromium)
	$(call apt_install,java,openjdk-17-jre-headless)
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install recsys with all extras (pinned)

demo: $(STAMP)  ## the main job end to end on offline synthetic data, then the model lifecycle
	$(BIN)/recsys demo
	$(BIN)/recsys demo lifecycle

lint: $(STAMP)  ## ruff lint + format check
	$(BIN)/ruff check src tests benchmarks training index scripts
	$(BIN)/ruff format --check src tests benchmarks training index scripts

fmt: $(STAMP)  ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix src tests benchmarks training index scripts
	$(BIN)/ruff format src tests benchmarks training index scripts

typecheck: $(STAMP)  ## mypy on src/recsys
	$(BIN)/mypy

test: lint typecheck  ## lint, typecheck and the test suite (slow tests excluded)
	$(BIN)/pytest -m "not slow" -q --durations=15

test-all: lint typecheck  ## everything, slow tests included
	$(BIN)/pytest -q

bench: $(STAMP)  ## benchmarks on the real data (../shared/data)
	$(BIN)/python benchmarks/baselines.py
