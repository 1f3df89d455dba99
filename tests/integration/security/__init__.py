"""Integration tests of security: refusals, fuzzing, token expiry and rate limits, TLS, redaction, start-up warnings."""
