"""The start-up tuning of the cyclic collector (relayd.daemon.service.tune_gc)."""

from __future__ import annotations

import gc

import pytest

from relayd.daemon.service import GC_THRESHOLDS, tune_gc


@pytest.fixture
def restored_gc():
    """Put the collector back as it was once the test is over."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_start_up_objects_are_frozen_and_young_collections_are_rarer(restored_gc):
    gc.unfreeze()
    tune_gc()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == GC_THRESHOLDS
    assert GC_THRESHOLDS[0] > 700
