# lakeshop — `make` or `make help` lists the targets.
# Local stack (infra/): PostgreSQL 127.0.0.1:5432, S3 http://127.0.0.1:9100, Kafka API
# 127.0.0.1:9092, ClickHouse http://127.0.0.1:8123; see DESIGN.md "Local stack" and .env.example.

SHELL := /bin/bash
.DEFAULT_GOAL := help
.PHONY: help deps up down status build test fuzz-api bench bench-records bench-dedup demo fmt check

# Build cache outside the clone, shared by every clone and by CI (never relied on).
CARGO_TARGET_DIR ?= $(HOME)/.cache/lakeshop/target
export CARGO_TARGET_DIR
LAKESHOP := $(CARGO_TARGET_DIR)/debug/lakeshop
# Optimised bench builds get their own cache, so a long release build never holds the lock
# that dev builds and tests wait on.
BENCH_TARGET_DIR ?= $(CARGO_TARGET_DIR)-bench
RUN := infra/env.sh

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## .*$$' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

deps: ## Install missing Debian build and stack packages (no-op when all are there)
	@infra/deps.sh all

up: ## Start the local stack on 127.0.0.1 (installs what is missing; idempotent)
	@infra/up.sh

down: ## Stop what `make up` started (never the system PostgreSQL)
	@infra/down.sh

status: ## Show each local service: address, healthy/down
	@infra/status.sh

build: ## Build the lakeshop binary (dev profile) and the tests
	@infra/deps.sh build
	@# The same build as `make test` (one feature set, so one compile of the dependencies);
	@# it leaves the binary at $(LAKESHOP).
	cargo test --workspace --no-run

demo: up build ## Bring up the stack and run the pipeline on generated data
	$(RUN) $(LAKESHOP) validate pipelines/shop.toml
	$(RUN) $(LAKESHOP) gen --clients 10000 --products 1000 --purchases 200000 \
		--duplicate-fraction 0.01 --unknown-fraction 0.005 --bad-fraction 0.01 --seed 7 \
		--truth data/truth.json
	$(RUN) $(LAKESHOP) extract all --quiet
	$(RUN) $(LAKESHOP) migrate
	@# gen's history is the 3 days ending yesterday (UTC, the pipeline's business time zone).
	$(RUN) $(LAKESHOP) batch run --from $$(date -u -d '3 days ago' +%F) --to $$(date -u -d yesterday +%F)
	$(RUN) $(LAKESHOP) report daily --from $$(date -u -d '3 days ago' +%F) --to $$(date -u -d yesterday +%F)

test: up ## Bring up the stack and run every test against it
	@infra/deps.sh test
	$(RUN) cargo test --workspace --no-fail-fast

fuzz-api: up ## Schemathesis against a running `lakeshop serve`, 500 examples per operation
	@infra/deps.sh test
	LAKESHOP_FUZZ_EXAMPLES=$${LAKESHOP_FUZZ_EXAMPLES:-500} $(RUN) cargo test --workspace -- schemathesis_finds_no_server_error

bench: up ## Benchmarks, each next to its baseline in the same run (bench-results/)
	@infra/deps.sh bench
	CARGO_TARGET_DIR=$(BENCH_TARGET_DIR) $(RUN) cargo bench --workspace --bench produce --bench extract --bench batch --bench stream --bench records --bench history --bench dedup --bench api

bench-records: ## The loader's per-record CPU, no broker or ClickHouse (seconds; bench-results/)
	CARGO_TARGET_DIR=$(BENCH_TARGET_DIR) cargo bench --workspace --bench records

bench-dedup: ## The loader's memory with a 7-day dedup horizon at 10M/day, no broker or ClickHouse (bench-results/)
	CARGO_TARGET_DIR=$(BENCH_TARGET_DIR) cargo bench --workspace --bench dedup

fmt: ## Format the code
	cargo fmt --all

check: ## Formatting and clippy, warnings are errors
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
