# tfopt: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Resolved before .venv/bin joins PATH: the interpreter that bootstraps uv is the machine's.
BOOT_PYTHON := $(shell command -v python3)
ifeq ($(origin UV), undefined)
UV := $(shell command -v uv 2>/dev/null || echo "$(BOOT_PYTHON) -m uv")
endif
export UV_COMPILE_BYTECODE := 1
export PATH := $(CURDIR)/.venv/bin:$(PATH)
STACK := .venv/bin/python infra/local/stack.py
STACK_ENV := $(or $(TFOPT_STACK_DIR),$(CURDIR)/.stack)/stack.env

.PHONY: help install demo test test-slow test-faults test-cluster up cluster down status lint format bench bench-series bench-cluster

help:  ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install:  ## install everything from uv.lock into .venv (installs uv itself if missing)
	@$(UV) --version >/dev/null 2>&1 || $(BOOT_PYTHON) -m pip install --user --quiet uv
	@$(UV) sync --frozen --compile-bytecode --quiet

demo: install  ## start the local stack, train the demo model, optimise it, print where to look
	@bash infra/local/demo.sh

test: install  ## lint, then the test suite but its slow tiers, against a real local stack (started and stopped by the tests)
	@.venv/bin/ruff check .
	@.venv/bin/ruff format --check .
	@.venv/bin/pytest tests --ignore=tests/faults --ignore=tests/cluster -m "not slow"

test-slow: install  ## the tests marked slow (full-size training, the UI in Chromium, many models; minutes each) on a real local stack
	@bash infra/local/install-browser.sh
	@.venv/bin/pytest tests --ignore=tests/faults --ignore=tests/cluster -m slow

test-faults: install  ## inject faults into a real local stack (S3/MLflow stops, 500s, kills, races)
	@.venv/bin/pytest tests/faults

test-cluster: install  ## the distributed tier: starts the cluster on its own ports, runs optimize_model through it, stops it
	@.venv/bin/pytest tests/cluster -m cluster

up: install  ## start S3 + MLflow + the Airflow UI on localhost:8080 and print the login
	@$(STACK) up
	@source $(STACK_ENV) && .venv/bin/tfopt demo-data --if-missing
	@$(STACK) up --airflow

cluster: install  ## start the distributed stack: PostgreSQL, Redis, Airflow components, CPU + GPU queue Celery workers
	@$(STACK) up --cluster
	@source $(STACK_ENV) && .venv/bin/tfopt demo-data --if-missing

down:  ## stop everything `make up` / `make demo` / `make cluster` started; check that nothing is left
	@if test -x .venv/bin/python; then $(STACK) down; fi

status:  ## what runs where
	@$(STACK) status

lint: install  ## ruff check + format check
	@.venv/bin/ruff check .
	@.venv/bin/ruff format --check .

format: install  ## apply ruff's formatting and safe fixes
	@.venv/bin/ruff check --fix .
	@.venv/bin/ruff format .

bench: install  ## measure the demo and real-size networks (MobileNetV2, ResNet50) beside peers -> bench/out/
	@$(STACK) up
	@source "$(STACK_ENV)" && .venv/bin/python -m bench.run $(BENCH_ARGS)

bench-series: install  ## three consecutive `make bench` runs on this commit, their targets side by side -> bench/out/series/
	@$(STACK) up
	@source "$(STACK_ENV)" && .venv/bin/python -m bench.series $(BENCH_ARGS)

bench-cluster: install  ## on a running `make cluster`: optimize_model on MobileNetV2 via the REST API, its orchestration overhead -> bench/out/cluster.json
	@source "$(STACK_ENV)" && .venv/bin/python -m bench.cluster $(BENCH_ARGS)
