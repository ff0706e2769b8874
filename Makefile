# fsRLM — the two commands of a fresh machine are `make run INPUT=... QUESTION="..."` and `make test`.
# Every target sets up what it needs on first use (virtualenv, packages, Docker engine, sandbox image).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
FSRLM  := $(VENV)/bin/fsrlm
STAMP  := $(VENV)/.fsrlm-installed
PYTEST_ARGS ?=

.PHONY: setup docker gvisor image run test test-fast demo bench security doctor clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# Respects DOCKER_HOST / DOCKER_CONTEXT: an engine named there is checked, never started.
docker:
	@bash scripts/ensure-docker.sh

image: setup docker
	$(FSRLM) image build

# gVisor's runsc from Debian, registered with this machine's Docker engine by a configuration reload
# (never a restart; see scripts/install-gvisor.sh). Then `executor.isolation = "auto"` runs on gVisor.
gvisor: setup docker
	@bash scripts/install-gvisor.sh
	$(FSRLM) doctor

doctor: setup
	$(FSRLM) doctor --probe

run: setup
	@test -n "$(INPUT)" || { echo 'usage: make run INPUT=path/to/file QUESTION="..."' >&2; exit 2; }
	@# The image only for a sandboxed executor; a configuration error is left to `fsrlm run` to explain.
	@executor="$$($(PY) -c 'from fsrlm.config import load_config; print(load_config().executor.type)' 2>/dev/null)"; \
	if [ "$$executor" = docker ] || [ "$$executor" = remote-docker ]; then \
		$(MAKE) --no-print-directory image; fi
	$(FSRLM) run "$(INPUT)" $(if $(QUESTION),--question "$(QUESTION)")

test: setup image
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not docker and not slow" $(PYTEST_ARGS)

demo: setup image
	$(PY) -m fsrlm.demo

bench: setup image
	$(FSRLM) bench perf

security: setup image
	$(PY) scripts/security-report.py $(PYTEST_ARGS)

clean:
	-$(FSRLM) gc
	rm -rf build dist *.egg-info .pytest_cache
