"""Waiting for something to become true: the one polling loop of every tier."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    interval: float = 1.0,
    diag: Callable[[], str] | None = None,
    *,
    retry: tuple[type[Exception], ...] = (),
    error: type[Exception] = AssertionError,
) -> T:
    """Call `predicate` every `interval` seconds until it returns a truthy value, and return it.

    An exception of a `retry` type counts as "not yet"; any other one propagates at once (a
    predicate raises to give up early, e.g. when the process it waits for died). After `timeout`
    seconds, `error` names `what`, the last value or retried error, and `diag()` (a log tail...).
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            last = predicate()
            if last:
                return last
        except retry as exc:
            last = exc
        if time.monotonic() >= deadline:
            extra = f"\n{diag()}" if diag else ""
            raise error(f"{what}: not reached within {timeout:.0f}s (last: {last!r}){extra}")
        time.sleep(interval)
