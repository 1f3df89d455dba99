"""Integration tests of operations: packaging, twistd, proxies, socket activation, sd_notify, JSON logs, file limits."""
