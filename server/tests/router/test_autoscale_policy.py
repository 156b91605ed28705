"""The autoscaling policy (pure): moving average over a target, from zero at once, down after a delay."""

from __future__ import annotations

from kubellama_router.autoscale import Autoscaler, Policy


def test_scale_from_zero_when_a_request_waits():
    a = Autoscaler(Policy(min_replicas=0, max_replicas=4, target=4))
    a.observe(0.0, 0)
    assert a.desired(0.0, current=0, waiting=0) == 0
    a.observe(1.0, 1)
    assert a.desired(1.0, current=0, waiting=1) == 1  # held in the queue: one replica now


def test_moving_average_over_target_and_bounds():
    a = Autoscaler(Policy(min_replicas=1, max_replicas=3, target=4, window=10))
    for t in range(10):
        a.observe(float(t), 10.0)  # 10 active on average: ceil(10/4) = 3
    assert a.desired(9.0, current=1, waiting=0) == 3
    for t in range(10, 30):
        a.observe(float(t), 40.0)
    assert a.desired(29.0, current=3, waiting=0) == 3  # max
    assert a.average() == 40.0  # the window dropped the old samples


def test_scale_down_waits_for_the_delay():
    a = Autoscaler(Policy(min_replicas=0, max_replicas=3, target=4, window=5, scale_down_delay=30))
    for t in range(5):
        a.observe(float(t), 0.0)
    assert a.desired(5.0, current=2, waiting=0) == 2  # lower since t=5
    assert a.desired(20.0, current=2, waiting=0) == 2
    a.observe(21.0, 8.0)  # a burst resets the delay
    assert a.desired(21.0, current=2, waiting=0) == 2
    for t in range(22, 40):
        a.observe(float(t), 0.0)
    assert a.desired(40.0, current=2, waiting=0) == 2  # lower again since t=40
    assert a.desired(70.0, current=2, waiting=0) == 0  # held 30 s: to zero
