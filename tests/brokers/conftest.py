"""The broker contract suite borrows the Redis fixtures (``shared_redis``)."""

from tests.redis.conftest import shared_redis  # noqa: F401
