# limelight: setup, tests, demo, benchmark.
#
#   make setup     system packages (root + apt only), venv, pip install -e .[dev] (instant when done)
#   make test      setup, ruff, lint-imports (the import contracts in pyproject.toml), the guide (--strict), pytest
#   make demo      setup, run the embedded demo into out/demo
#   make docs      the user guide (docs/, mkdocs.yml) built --strict into site/: any warning fails
#   make bench     explanation throughput with 1 and 2 CPU workers
#
# CONSTRAINTS pins the CPU wheel of torch (a bare `torch` pulls a 5.5 GB CUDA build). GPU users install
# their CUDA torch into the venv first, or run `make setup CONSTRAINTS=`.

VENV ?= .venv
CONSTRAINTS ?= constraints/cpu.txt
PYTHON ?= python3
PYTEST_ARGS ?=
DEMO_OUT ?= out/demo

BIN := $(VENV)/bin
STAMP := $(VENV)/.limelight-setup
SYSTEM_PACKAGES := $(shell grep -v '^\s*\#' system-packages.txt 2>/dev/null)
CONSTRAINT_FLAG := $(if $(strip $(CONSTRAINTS)),-c $(CONSTRAINTS),)

.PHONY: setup system-packages test lint docs demo bench clean

setup: $(STAMP)

# Re-runs only when the dependency declarations change; otherwise `make setup` is instant.
$(STAMP): pyproject.toml system-packages.txt $(strip $(CONSTRAINTS))
	@$(MAKE) --no-print-directory system-packages
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(CONSTRAINT_FLAG) -e '.[dev]'
	@touch $@

# apt-get only when root, apt exists and a package is missing (so a set-up machine needs no network).
system-packages:
	@if [ -z "$(SYSTEM_PACKAGES)" ]; then exit 0; fi; \
	if dpkg -s $(SYSTEM_PACKAGES) >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(SYSTEM_PACKAGES); \
	else \
		echo "note: install these system packages yourself (not root or no apt-get): $(SYSTEM_PACKAGES)"; \
	fi

lint: setup
	$(BIN)/ruff check flows tasks tests bench docs
	$(BIN)/lint-imports --no-cache --no-logo

test: setup lint docs
	$(BIN)/pytest $(PYTEST_ARGS)

# The user guide into site/, offline (no fonts or assets fetched). --strict turns every warning (a broken link or
# anchor, a page missing from the nav) into a failure. The configuration reference is generated from the config's
# pydantic models by a hook (docs/hooks/). Runs setup only when the venv has no mkdocs yet, so
# `make docs VENV=other/.venv` uses that environment as it is. NO_MKDOCS_2_WARNING silences Material's banner
# about its end of life (May 2027) and MkDocs 2.0, which the dev extra pins out (mkdocs<2).
docs: $(if $(wildcard $(BIN)/mkdocs),,setup)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --clean --site-dir site

demo: setup
	$(BIN)/limelight demo --out $(DEMO_OUT)
	@echo "PDF reports: $(DEMO_OUT)/reports/  run summary: $(DEMO_OUT)/summary.pdf  manifest: $(DEMO_OUT)/manifest.json"

bench: setup
	$(BIN)/python bench/bench_pipeline.py

clean:
	rm -rf out site .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
