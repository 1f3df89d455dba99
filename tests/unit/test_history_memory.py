"""
``--history-memory`` bounds the memory the history really uses (CONTRACT.md
section 14): messages with their cached encodings, their bookkeeping, the
streams and the remembered replies. Measured with tracemalloc; not timed.
"""

from __future__ import annotations

import gc
import tracemalloc

import pytest
from twisted.internet.task import Clock

from relayd.core.history import EVICT_TO, MemoryHistory, Reply, footprint
from relayd.core.ports import make_message
from relayd.transports.sse import sse_event
from relayd.transports.websocket import text_frame
from relayd.wire import SendRequest, dumps

BOUND = 1_000_000


def fill(history, messages, content_size, ids):
    """Append ``messages`` to ``ids`` ids, each delivered once over WebSocket and SSE (their encodings cached)."""
    for n in range(messages):
        client_id = f"client-{n % ids}"
        request = SendRequest(content="x" * content_size, receiver_ids=(client_id,), received=1.0)
        build = make_message(request, dumps(request.content), "2026-12-01T00:00:00.000Z")
        message = history.append(client_id, build)
        message.ws = text_frame(message.frame)
        message.sse = sse_event("message", message.frame, str(message.id))
        message.timed = True


@pytest.mark.parametrize("content_size, ids", [(20, 100_000), (300, 1000), (4000, 50)])
def test_a_full_history_uses_no_more_than_its_bound(content_size, ids):
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        history = MemoryHistory(Clock(), size=100, ttl=600, memory=BOUND)
        fill(history, 3 * BOUND // (content_size + 100), content_size, ids)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert EVICT_TO * BOUND - footprint(_any(history)) <= history.bytes_kept <= BOUND
    assert used <= 1.5 * BOUND, f"{used} bytes for a bound of {BOUND}"
    assert used >= 0.4 * BOUND  # the accounting is not wildly pessimistic either


def _any(history):
    """One kept message (for the size of one eviction step)."""
    for client_id, stream in history.streams().items():
        if stream.kept:
            return history.replay(client_id, 0, None).messages[-1]
    raise AssertionError("nothing kept")


def test_remembered_replies_are_bounded_too():
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        history = MemoryHistory(Clock(), memory=BOUND)
        for n in range(20_000):
            history.remember("billing", f"order-{n:012d}", Reply(f"{n:032x}", sent=(f"user-{n}",)))
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert history.bytes_kept <= BOUND and history.recall("billing", "order-000000000000") is None
    assert used <= 1.5 * BOUND
