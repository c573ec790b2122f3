"""The adaptive concurrency limit (admission.py): fed latencies directly, no clock, no timing."""

from __future__ import annotations

import pytest
from ml_service.serving.admission import AdaptiveLimit
from ml_service.serving.metrics import new_registry
from ml_service.serving.service import Service
from ml_service.serving.settings import Settings
from pydantic import ValidationError


def limiter(**kw: float) -> AdaptiveLimit:
    args = {"initial": 16, "min_limit": 4, "max_limit": 64, "tolerance": 2.0, "window": 10}
    return AdaptiveLimit(**{**args, **kw})  # type: ignore[arg-type]


def run(
    lim: AdaptiveLimit, latency: float, *, offered: int | None = None, rounds: int = 10
) -> None:
    """`rounds` times: `offered` requests arrive at once (one more than the limit by default:
    a full limit and one refusal), then every admitted one is answered after `latency` s."""
    for _ in range(rounds):
        n = lim.current + 1 if offered is None else offered
        admitted = sum(lim.try_acquire() for _ in range(n))
        for _ in range(admitted):
            lim.release(latency)


def test_admits_up_to_the_limit_and_refuses_beyond_it() -> None:
    lim = limiter(initial=3, min_limit=1)
    assert [lim.try_acquire() for _ in range(4)] == [True, True, True, False]
    assert lim.in_flight == 3
    lim.release(0.001)
    assert lim.try_acquire()
    assert not lim.try_acquire()


def test_a_request_costs_one_plus_one_per_256_kib_of_body_and_chunked_as_the_largest() -> None:
    lim = limiter(largest_body=1_048_576)
    unit = 256 * 1024
    assert [lim.cost(n) for n in (0, 81_615, unit - 1, unit, 1_048_576)] == [1, 1, 1, 2, 5]
    assert lim.cost(None) == lim.cost(1_048_576)


def test_at_the_limit_a_cheap_request_fits_where_a_costly_one_does_not() -> None:
    """A 1,000-row request's freed room is not all taken by the next large one: small ones fit
    into what is left (with one count each, a flood of large requests starved small ones)."""
    lim = limiter(initial=16)
    assert lim.try_acquire(10)
    assert not lim.try_acquire(10)
    assert [lim.try_acquire(1) for _ in range(7)] == [True] * 6 + [False]
    lim.release(0.001, 10)
    assert lim.in_flight == 6
    assert lim.try_acquire(10)


def test_a_request_costlier_than_the_limit_is_admitted_alone() -> None:
    lim = limiter(initial=4, min_limit=4)
    assert lim.try_acquire(17)
    assert not lim.try_acquire(1)
    lim.release(0.001, 17)
    assert lim.in_flight == 0


def test_latency_far_above_the_baseline_shrinks_the_limit_to_its_floor_and_no_further() -> None:
    lim = limiter(initial=32)
    run(lim, 0.001, offered=1)  # the baseline: 1 ms
    run(lim, 0.010, rounds=300)  # ten times the baseline: a queue
    assert lim.current == 4
    assert lim.baseline == pytest.approx(0.001)  # a window with a queue does not teach it


def test_latency_at_the_baseline_with_the_limit_in_use_grows_it_to_its_ceiling() -> None:
    lim = limiter(initial=4)
    run(lim, 0.001, rounds=500)
    assert lim.current == 64


def test_an_idle_server_does_not_inflate_its_limit() -> None:
    lim = limiter(initial=16)
    run(lim, 0.001, offered=2, rounds=500)  # never near the limit
    assert lim.current == 16


def test_latency_within_the_tolerance_never_shrinks_the_limit() -> None:
    lim = limiter(initial=16)
    run(lim, 0.001, offered=1)
    before = lim.current
    run(lim, 0.0019, rounds=100)  # below 2 x 1 ms
    assert lim.current >= before


def test_the_baseline_rises_only_from_windows_that_refused_nothing() -> None:
    lim = limiter(initial=16)
    run(lim, 0.001, offered=1)
    run(lim, 0.004, offered=1, rounds=1000)  # slower, and no queue: the model got slower
    assert lim.baseline is not None and lim.baseline > 0.003
    lowered = limiter(initial=16)
    run(lowered, 0.004, offered=1)
    run(lowered, 0.001, offered=1)
    assert lowered.baseline == pytest.approx(0.001)  # a faster window lowers it at once


def test_the_limit_settles_where_latency_is_near_the_tolerance() -> None:
    """A server whose latency grows with what is in flight (a fixed throughput: Little's law):
    the limit converges near tolerance x the concurrency it needs, not at a bound."""
    lim = limiter(initial=64, min_limit=1, max_limit=1000, tolerance=2.0)
    throughput, base = 1000.0, 0.002  # 1,000 answers/s, 2 ms without queueing: 2 in flight

    run(lim, base, offered=1)  # the baseline, before the overload
    for _ in range(500):
        run(lim, max(base, lim.current / throughput), rounds=1)
    assert 3 <= lim.current <= 8, lim.current


def test_admission_settings_keep_their_bounds_in_order() -> None:
    with pytest.raises(ValidationError, match="ADMISSION_MIN_CONCURRENCY"):
        Settings(admission_min_concurrency=100, admission_max_concurrency=50)
    Settings(admission_min_concurrency=100, admission_max_concurrency=0)  # off


def test_zero_turns_admission_control_off() -> None:
    off = Service(Settings(admission_max_concurrency=0), new_registry())
    on = Service(Settings(), new_registry())
    try:
        assert off.admission is None
        assert on.admission is not None and on.admission.current == 64
    finally:
        off.bodies.shutdown()
        on.bodies.shutdown()
