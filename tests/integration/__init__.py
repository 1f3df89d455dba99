"""Integration tests: real ``twistd relay`` processes on loopback, real clients."""
