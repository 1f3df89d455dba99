"""The brokers: the in-process one (with its optional SQLite store) and the Redis one."""
