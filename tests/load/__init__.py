"""Bounded load tests: many concurrent clients against one real relay process."""
