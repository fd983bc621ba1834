# Two commands on a fresh machine:
#   make demo   set up .venv if missing, then run the whole pipeline on the bundled Reuters demo (CPU)
#   make test   set up .venv if missing, then run the test suite (all of it: what CI runs)
# Inner loop: make test-fast (the tests not marked slow: no servers, subprocesses or long training)
# Team mode without Docker (PostgreSQL + Prefect server on 127.0.0.1): make server / make server-stop
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The tests run in parallel pytest-xdist workers, one per core (at most 4); tests sharing an expensive
# fixture stay on one worker and slow tests start first (tests/conftest.py). PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= auto
PYTEST_PARALLEL := -n $(PYTEST_WORKERS) --maxprocesses 4 --dist loadgroup --no-loadscope-reorder

.PHONY: demo test test-fast venv data clean-artifacts server server-stop postgres

venv: $(STAMP)

# Re-install whenever the package metadata or the pins change.
# infra/venv.sh installs with uv (fast) and falls back to pip; DAPT_INSTALLER=pip forces pip.
$(STAMP): pyproject.toml constraints.txt infra/venv.sh
	PYTHON=$(PYTHON) VENV=$(VENV) infra/venv.sh
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dapt run configs/demo.yaml

# The server test needs PostgreSQL: installed from Debian when missing and possible (see the script).
test: $(STAMP) postgres
	$(PY) -m pytest $(PYTEST_PARALLEL)

# The developer's inner loop: every test not marked slow (under 2 minutes on an idle 2-core machine, see README).
test-fast: $(STAMP)
	$(PY) -m pytest $(PYTEST_PARALLEL) -m "not slow"

postgres:
	infra/ensure-postgres.sh

server: $(STAMP) postgres
	infra/server.sh start

server-stop:
	infra/server.sh stop

# Regenerate data/reuters/ from ../shared/datasets/reuters-21578 (byte-identical to what is committed).
data: $(STAMP)
	$(PY) data/reuters/prepare.py --source ../shared/datasets/reuters-21578/reuters21578.jsonl.gz

clean-artifacts:
	rm -rf artifacts
