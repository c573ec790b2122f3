"""Ground truth: prediction IDs on the way out, labels on the way back (`POST /feedback`).

On only with PREDICTION_SIGNING_SECRET set (`Service.feedback` is None otherwise, and no answer
changes). A batch of `{prediction_id, label}` is checked as a whole before anything is counted:
one bad item (a token that is malformed, forged, another deployment's or model's, expired; a
label that is not one of the model's classes) refuses the batch with 422, naming the items by
index and never echoing what was sent. Accepted labels become the live confusion matrix, score
histogram and label delay per model version (metrics.FeedbackMetrics).

Duplicates: a prediction ID this replica already counted within FEEDBACK_DEDUPE_SECONDS is
answered as a duplicate and not counted again. The memory is per replica and bounded
(FEEDBACK_DEDUPE_MAX_IDS): the same label sent to two replicas, after a restart, or after more
than half that many other IDs counts again. docs/api.md states these limits.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from prometheus_client import CollectorRegistry

from .errors import ApiError, InputError, error
from .metrics import FeedbackMetrics
from .model import LoadedModel
from .prediction_ids import Refusal, Signer, TokenError
from .schemas import msgspec_error
from .settings import Settings

log = logging.getLogger("ml_service")

UNKNOWN_LABEL = "unknown_label"
# `X-Prediction-IDs` on /invocations stays under the smallest response-header buffer of common
# proxies (ingress-nginx: 4 KiB); larger batches get prediction IDs from /predict.
MAX_ID_HEADER_BYTES = 3072
_MESSAGES = {
    Refusal.MALFORMED: "Not a prediction ID",
    Refusal.INVALID_SIGNATURE: "Not a prediction ID issued by this service",
    Refusal.EXPIRED: "Prediction ID expired (PREDICTION_ID_TTL_SECONDS)",
    Refusal.NOT_YET_VALID: "Prediction ID issued in the future",
}


class Item(msgspec.Struct, forbid_unknown_fields=True):
    prediction_id: str
    label: str


class Body(msgspec.Struct, forbid_unknown_fields=True):
    feedback: Annotated[list[Item], msgspec.Meta(min_length=1)]


_DECODER = msgspec.json.Decoder(Body)


class RecentIds:
    """Prediction IDs counted recently, in two generations of at most `max_ids / 2` each: the
    current one takes new IDs until it is `window` seconds old or full, then becomes the
    previous one (the older previous one is forgotten). An ID is remembered for at least
    `window` seconds unless `max_ids / 2` others arrive sooner; memory never exceeds `max_ids`."""

    def __init__(self, window: float, max_ids: int) -> None:
        self.window = window
        self.half = max(1, max_ids // 2)
        self.current: set[int] = set()
        self.previous: set[int] = set()
        self.started = time.monotonic()

    def add(self, nonce: int, now: float) -> bool:
        """True when `nonce` is new (and now remembered), False for a duplicate."""
        age = now - self.started
        if age >= self.window:
            # Every ID of the current generation arrived in its first window (any later call
            # would have rotated it): after two windows of silence none needs keeping.
            self.previous = self.current if age < 2 * self.window else set()
            self.current, self.started = set(), now
        if nonce in self.current or nonce in self.previous:
            return False
        if len(self.current) >= self.half:
            self.previous, self.current, self.started = self.current, set(), now
        self.current.add(nonce)
        return True


@dataclass
class Accepted:
    """An accepted label, as the payload log records it."""

    prediction_id: str
    label: str


class Feedback:
    def __init__(self, settings: Settings, registry: CollectorRegistry) -> None:
        assert settings.prediction_signing_secret is not None
        self.settings = settings
        self.metrics = FeedbackMetrics(registry, [*(r.value for r in Refusal), UNKNOWN_LABEL])
        self.recent = RecentIds(settings.feedback_dedupe_seconds, settings.feedback_dedupe_max_ids)
        self.signer: Signer | None = None
        self._tails: dict[str, bytes] | None = None

    def on_model_loaded(self, model: LoadedModel) -> None:
        s = self.settings
        assert s.prediction_signing_secret is not None
        previous = s.prediction_signing_secret_previous
        self.signer = Signer(
            s.prediction_signing_secret.get_secret_value().encode(),
            model.name,
            s.prediction_id_ttl_seconds,
            previous.get_secret_value().encode() if previous else None,
        )
        self._tails = self.signer.tail(model.version, model.classes)
        if self._tails is None:
            log.warning(
                "model version or a class name is longer than a prediction ID can carry: "
                "answers carry no prediction IDs"
            )
        self.metrics.prepare(model.version, model.classes)

    def issue(self, labels: list[str], proba: list[list[float]]) -> list[str] | None:
        """A prediction ID per row (None when the model's names do not fit in one)."""
        if self.signer is None or self._tails is None:
            return None
        return self.signer.issue(self._tails, labels, proba, time.time())

    def receive(self, body: bytes, classes: tuple[str, ...]) -> tuple[dict[str, int], list]:
        """Check a `/feedback` body and count it: (answer, accepted labels to log)."""
        signer = self.signer
        assert signer is not None  # the model is loaded before /feedback gets here
        try:
            items = _DECODER.decode(body).feedback
        except msgspec.MsgspecError as exc:
            raise InputError([msgspec_error(exc)]) from None
        limit = self.settings.feedback_max_items
        if len(items) > limit:
            raise ApiError(413, f"at most {limit} labels per request (FEEDBACK_MAX_ITEMS)")
        now = time.time()
        known = frozenset(classes)
        checked: list[Any] = []
        problems: list[dict[str, Any]] = []
        for i, item in enumerate(items):
            try:
                claims = signer.verify(item.prediction_id, now)
            except TokenError as exc:
                self.metrics.refused.labels(exc.reason.value).inc()
                problems.append(
                    error(("feedback", i, "prediction_id"), _MESSAGES[exc.reason], exc.reason.value)
                )
                continue
            if item.label not in known:
                self.metrics.refused.labels(UNKNOWN_LABEL).inc()
                problems.append(
                    error(
                        ("feedback", i, "label"),
                        "Input should be one of the model's classes: " + ", ".join(classes[:20]),
                        UNKNOWN_LABEL,
                    )
                )
                continue
            checked.append((item, claims))
        if problems:
            raise InputError(problems)
        accepted: list[Accepted] = []
        for item, claims in checked:
            if not self.recent.add(claims.nonce, now):
                self.metrics.duplicates.inc()
                continue
            delay = max(0.0, now - claims.issued_at)
            self.metrics.record(
                claims.model_version, claims.predicted, item.label, claims.score, delay
            )
            accepted.append(Accepted(item.prediction_id, item.label))
        answer = {"accepted": len(accepted), "duplicates": len(checked) - len(accepted)}
        return answer, accepted


def invocation_headers(request_id: str, ids: list[str] | None) -> dict[str, str]:
    """What `/invocations` adds to MLflow's answer (whose body stays MLflow's): the request ID,
    and the prediction IDs in row order when they fit in MAX_ID_HEADER_BYTES."""
    headers = {"X-Request-ID": request_id}
    if ids:
        joined = ",".join(ids)
        if len(joined) <= MAX_ID_HEADER_BYTES:
            headers["X-Prediction-IDs"] = joined
    return headers
