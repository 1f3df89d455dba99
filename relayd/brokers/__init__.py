"""Brokers: where sequence numbers, history and routing live (in memory, or in Redis)."""
