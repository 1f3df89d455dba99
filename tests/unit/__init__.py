"""In-memory unit tests: no global reactor, no sockets."""
