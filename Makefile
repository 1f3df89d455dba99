# The whole test suite, on a fresh machine: `make test`.
PYTHON ?= python3

.PHONY: test install services run

install:
	$(PYTHON) -m pip install --quiet '.[test]'
	$(PYTHON) -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"

services:
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || \
		redis-server --daemonize yes --port 6379 --save "" --appendonly no
	@command -v chromium >/dev/null 2>&1 || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

test: install services
	$(PYTHON) -m pytest -ra
	@if ls tests/js/*.test.mjs >/dev/null 2>&1; then node --test tests/js/; fi

run: install
	twistd -n relay
