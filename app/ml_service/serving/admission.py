"""Admission control: a concurrency limit that follows measured latency, so overload is refused
early and cheaply instead of queued until every client gives up.

Past its capacity a server that admits everything only grows its queue: every request waits
longer, clients time out, and the work done for them is wasted (goodput collapses while the CPU
stays busy). The limit here bounds the requests in flight (headers read, answer not yet sent)
and adapts it to what the server can do right now, the way Envoy's adaptive concurrency filter
and Netflix's gradient limiter do:

- every ADMISSION_WINDOW answered requests form a window; its mean latency (headers complete to
  answer written) is compared with the *baseline*, the latency without queueing;
- at most ADMISSION_TOLERANCE times the baseline, the limit grows by its square root (only when
  the window used at least half of it: an idle server does not inflate it); above it, the limit
  shrinks in proportion (the gradient `tolerance x baseline / latency`, at most halving it), and
  the new limit is blended with the old one (smoothing) so one noisy window cannot swing it;
- the baseline follows any lower window at once, and rises slowly only from quiet windows
  (nothing refused, at most QUIET_IN_FLIGHT requests in flight at once, or a sixteenth of the
  limit): latency measured with a queue must not teach it, or the limit, and the queue, would
  grow without end under sustained overload; a model that got slower is learned once the load
  eases (meanwhile the limit stays at its floor);
- a client that went away before its answer counts as a window sample at its full wait (it was
  the queue's victim).

Requests are counted by their cost, not one each: 1 plus one per COST_BYTES of declared body (a
body of unknown length, chunked, costs as much as the largest allowed). At the limit a cheap
request fits into room a large one left, but a large one needs room for all of its cost: one-row
requests are not starved by a flood of 1,000-row ones (with one count each, whoever retried first
took every freed place, and the large ones did), and a server at capacity serves more answers.
A request always fits into an empty server, whatever its cost.

ADMISSION_MIN_CONCURRENCY and ADMISSION_MAX_CONCURRENCY are the outer bounds: the limit never
leaves them, whatever the measurements say. The logic is plain arithmetic on numbers it is given
(no clock, no I/O), so it is tested deterministically; server.py feeds it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# How fast the baseline rises from a window that refused nothing (a share of the difference per
# window); it falls to a lower window's latency at once.
BASELINE_RISE = 0.05
# A window whose peak in flight stayed at most this (or a sixteenth of the limit) had no queue
# to speak of: its latency may raise the baseline.
QUIET_IN_FLIGHT = 2
# A request costs 1 plus one per this many bytes of body: 1,000 rows of 30 features (~700 KB)
# cost 3, 100 of them (~80 KB) still 1, so ADMISSION_MIN_CONCURRENCY clients of those are never
# refused (at 64 KiB, 50 clients of 100 rows were: 87,350 503s in the benchmark).
COST_BYTES = 256 * 1024
# Weight of a new limit against the current one.
SMOOTHING = 0.2
# The most a single window can shrink the limit by (a factor).
MIN_GRADIENT = 0.5


@dataclass
class AdaptiveLimit:
    """A gradient concurrency limit. `try_acquire` admits or refuses one request of a cost
    (`cost`); every admitted request must be released once, with its cost and its latency (a
    client that left: its whole wait)."""

    initial: int
    min_limit: int
    max_limit: int
    tolerance: float
    window: int
    largest_body: int = 1_048_576  # the cost of a body of unknown length
    limit: float = field(init=False)
    in_flight: int = field(init=False, default=0)
    baseline: float | None = field(init=False, default=None)
    last_latency: float = field(init=False, default=0.0)  # the last window's mean (seconds)
    _sum: float = field(init=False, default=0.0)
    _count: int = field(init=False, default=0)
    _peak: int = field(init=False, default=0)  # most in flight during the window
    _refused: bool = field(init=False, default=False)  # something was refused in the window

    def __post_init__(self) -> None:
        if not 1 <= self.min_limit <= self.max_limit:
            raise ValueError("need 1 <= min_limit <= max_limit")
        self.limit = float(min(max(self.initial, self.min_limit), self.max_limit))

    @property
    def current(self) -> int:
        return int(self.limit)

    @property
    def queue_delay(self) -> float:
        """The last window's mean latency above the baseline (seconds)."""
        return max(0.0, self.last_latency - (self.baseline or 0.0))

    def cost(self, body_length: int | None) -> int:
        """The cost of a request whose body is `body_length` bytes (None: unknown)."""
        return 1 + (self.largest_body if body_length is None else body_length) // COST_BYTES

    def try_acquire(self, cost: int = 1) -> bool:
        if self.in_flight and self.in_flight + cost > int(self.limit):
            self._refused = True
            return False
        self.in_flight += cost
        self._peak = max(self._peak, self.in_flight)
        return True

    def release(self, latency: float, cost: int = 1) -> None:
        """One admitted request of `cost` is answered (or its client left) after `latency`
        seconds."""
        self.in_flight = max(0, self.in_flight - cost)
        self._sum += max(latency, 0.0)
        self._count += 1
        if self._count >= self.window:
            self._update(self._sum / self._count)

    def _update(self, latency: float) -> None:
        refused, peak = self._refused, self._peak
        self._sum, self._count, self._refused, self._peak = 0.0, 0, False, self.in_flight
        self.last_latency = latency
        if self.baseline is None or latency < self.baseline:
            self.baseline = latency
        elif not refused and peak <= max(QUIET_IN_FLIGHT, self.limit / 16):
            self.baseline += (latency - self.baseline) * BASELINE_RISE
        allowed = self.tolerance * self.baseline
        if latency <= allowed:
            if peak * 2 < self.limit:  # the window did not need the limit: leave it
                return
            new = self.limit + math.sqrt(self.limit)
        else:
            new = self.limit * max(MIN_GRADIENT, allowed / latency)
        blended = self.limit * (1 - SMOOTHING) + new * SMOOTHING
        self.limit = min(max(blended, float(self.min_limit)), float(self.max_limit))
