"""wait_until on a fake clock."""

from twisted.internet.task import Clock

from relayd.core.waiting import wait_until
from tests.unit.helpers import result_of


def test_fires_true_as_soon_as_the_condition_holds():
    clock = Clock()
    state = {"done": False}
    d = wait_until(clock, lambda: state["done"], timeout=5)
    clock.advance(1)
    state["done"] = True
    clock.advance(0.05)
    assert result_of(d) is True and clock.seconds() < 1.1


def test_fires_false_after_the_timeout():
    clock = Clock()
    d = wait_until(clock, lambda: False, timeout=2)
    clock.pump([0.05] * 39)
    assert not d.called
    clock.pump([0.05] * 2)
    assert result_of(d) is False
