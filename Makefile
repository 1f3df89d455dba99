# relayd's two set-up commands, on a fresh Debian/Ubuntu machine or anywhere:
#
#   make run     create (or reuse) a virtual environment, install relayd, and
#                run it in the foreground on its in-memory default
#   make test    the same environment with the test extras; start Redis and
#                install Chromium, nginx and Caddy when missing; run the lint
#                gates (`make lint`: ruff, mypy --strict), then every test
#
# Inside an activated virtual environment ($VIRTUAL_ENV) that one is used;
# otherwise .venv/ here, created with $(PYTHON) (the system Python is fine:
# nothing is installed into it, so PEP 668 never gets in the way).
# `make test-floors` runs the Python suite again in .venv-floors/, on exactly
# the lowest versions pyproject.toml allows.

PYTHON ?= python3
ifdef VIRTUAL_ENV
VENV ?= $(VIRTUAL_ENV)
else
VENV ?= $(CURDIR)/.venv
endif
FLOORS_VENV ?= $(CURDIR)/.venv-floors
# `make test` fails when the suite covers less of relayd/ than this (percent;
# the twistd processes the integration tests start count, see pyproject.toml).
COVERAGE_FLOOR ?= 93
# The client's type check: TypeScript from npm, pinned, into build/npm/.
TYPESCRIPT ?= typescript@5.9.3
NPM_PREFIX = $(CURDIR)/build/npm
CLIENT_PACKAGE = relayd/web/static
# Packages a test needs from the machine, as Debian names them (command:package).
SYSTEM_PACKAGES = redis-server:redis-server chromium:chromium nginx:nginx caddy:caddy node:nodejs npm:npm

export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: run test lint test-floors install install-run venv services system-packages redis typecheck

# Options go in RELAY_ARGS or RELAY_* variables: make run RELAY_ARGS="--listen tcp:9000"
run: install-run
	$(VENV)/bin/relayd $(RELAY_ARGS)

test: install services
	$(MAKE) --no-print-directory lint
	$(VENV)/bin/python -m pytest -ra --cov=relayd --cov-report=term:skip-covered --cov-fail-under=$(COVERAGE_FLOOR)
	node --test tests/js/
	$(MAKE) --no-print-directory typecheck

# ruff (pyflakes, pycodestyle, isort, bugbear, pyupgrade) on all the Python,
# and mypy --strict on the files pyproject.toml's [tool.mypy] names.
lint:
	$(VENV)/bin/python -m ruff check relayd tests twisted
	$(VENV)/bin/python -m mypy

test-floors: services
	@$(MAKE) --no-print-directory VENV=$(FLOORS_VENV) venv
	$(FLOORS_VENV)/bin/python .ci/floors.py pyproject.toml > $(FLOORS_VENV)/floors.txt
	@echo "floors:"; sed 's/^/  /' $(FLOORS_VENV)/floors.txt
	$(FLOORS_VENV)/bin/python -m pip install --quiet --constraint $(FLOORS_VENV)/floors.txt \
		".[$$($(FLOORS_VENV)/bin/python .ci/floors.py --extras pyproject.toml)]"
	$(FLOORS_VENV)/bin/python .ci/floors.py --check pyproject.toml
	$(FLOORS_VENV)/bin/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	$(FLOORS_VENV)/bin/python -m pytest -ra

# A virtual environment with a working pip at $(VENV) (an active one is only
# checked, never re-created). Debian's python3 needs python3-venv for that
# (ensurepip); it is installed here as root, or through sudo.
venv:
	@if ! $(VENV)/bin/python -m pip --version >/dev/null 2>&1; then \
		if [ "$(VENV)" = "$${VIRTUAL_ENV:-}" ]; then \
			echo "make: the active virtual environment $(VENV) has no pip: $(VENV)/bin/python -m ensurepip"; \
			exit 1; \
		fi; \
		if ! $(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1; then \
			echo "make: $(PYTHON) cannot create a virtual environment (no ensurepip): it needs python3-venv"; \
			command -v apt-get >/dev/null 2>&1 || exit 1; \
			.ci/apt-install python3-venv || exit 1; \
		fi; \
		echo "make: creating $(VENV) with $$(command -v $(PYTHON))"; \
		rm -rf $(VENV) && $(PYTHON) -m venv $(VENV) || exit 1; \
	fi

# twistd rescans its plugins at every start unless the cache is written once.
install-run: venv
	$(VENV)/bin/python -m pip install --quiet .
	$(VENV)/bin/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"

# Every extra of pyproject.toml (test, and any other a test needs).
install: venv
	$(VENV)/bin/python -m pip install --quiet ".[$$($(VENV)/bin/python .ci/floors.py --extras pyproject.toml)]"
	$(VENV)/bin/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"

services: system-packages redis

# Install with apt whatever the tests need and the machine lacks.
system-packages:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do \
		command -v $${pair%%:*} >/dev/null 2>&1 || [ -x /usr/sbin/$${pair%%:*} ] || missing="$$missing $${pair#*:}"; \
	done; \
	.ci/apt-install $$missing

# A Redis for tests/redis on 127.0.0.1:6379, started only when none answers.
redis:
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || \
		redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no

# tsc --strict on a small consumer of the client package (tests/js/consumer/),
# which finds the package through a node_modules link, as an installed one.
typecheck:
	@[ -x $(NPM_PREFIX)/node_modules/.bin/tsc ] && \
		[ "$$($(NPM_PREFIX)/node_modules/.bin/tsc --version)" = "Version $(TYPESCRIPT:typescript@%=%)" ] || \
		npm install --silent --no-audit --no-fund --prefix $(NPM_PREFIX) $(TYPESCRIPT)
	@mkdir -p tests/js/consumer/node_modules && ln -sfn $(CURDIR)/$(CLIENT_PACKAGE) tests/js/consumer/node_modules/relayd-client
	$(NPM_PREFIX)/node_modules/.bin/tsc --strict --noEmit -p tests/js/consumer
	@echo "tsc --strict: the client's declarations type-check a consumer"
