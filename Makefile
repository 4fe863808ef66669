# Two commands for a new machine: `make run` and `make test`. Every target installs what it needs.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test docker-test docker-deps test-fast check check-deploy share-cost fmt bench bench-smoke e2e-deps clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,e2e,bench]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m collector serve

# The whole suite: first what the end-to-end and load-balancer tests need (Chromium, nginx, wrk and
# the node modules, `make e2e-deps`: installed only when missing), then every test. Where they cannot
# be installed those tests skip with a message, except under CI=true where a skip is a failure.
# The 25 slowest tests are listed at the end, so that a CI run that got slower says where.
test: $(STAMP) e2e-deps
	$(BIN)/python -m pytest --durations=25

# The image and deploy/compose.yaml in real containers (tests/docker): Debian's docker.io, a running
# dockerd and the stand-in base images first (`make docker-deps`, installed/started only when missing).
docker-test: $(STAMP) docker-deps
	$(BIN)/python -m pytest -m docker tests/docker

docker-deps:
	bash tests/docker/engine.sh

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not e2e and not lb and not slow and not docker"

check: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

# Dockerfile (hadolint), compose.yaml (compose-spec schema), nginx.conf (nginx -t).
check-deploy: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" tests/lb/check_deploy.sh

# What sharing one store costs: events/s with 1, 2 and 3 processes (not part of the tests).
share-cost: $(STAMP)
	$(BIN)/python tests/lb/share_cost.py

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

e2e-deps:
	bash .ci/deps.sh

# The full benchmark, with a second collector on a store prefilled to PREFILL events (about 1.2 KB a
# row on disk: 8 million take some 10 GB and a few minutes to build); PREFILL=0 leaves it out.
PREFILL ?= 8000000
bench: $(STAMP)
	$(BIN)/python -m tests.bench --prefill $(PREFILL)

bench-smoke: $(STAMP)
	$(BIN)/python -m tests.bench --smoke

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
