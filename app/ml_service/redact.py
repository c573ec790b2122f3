"""Keep credentials out of every log line and response.

Two kinds of secret reach text here: the userinfo or signed query of a URL (MLFLOW_TRACKING_URI
may be `http://user:pass@host`, an artifact URL may be presigned), and the values of credential
environment variables that MLflow, boto and friends read. `redact()` removes both; the log
formatter applies it to every formatted record, tracebacks included.
"""

from __future__ import annotations

import logging
import os
import re
import time

# user:pass@ or token@ right after a scheme: the authority ends at the first / ? or #, and its
# userinfo at the last @ before that (a password may hold an unescaped @).
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^/?#\s'\"]+@")
# query parameters that carry a credential (presigned URLs, tokens in query strings)
_QUERY_SECRET = re.compile(
    r"(?P<key>[?&](?:[A-Za-z0-9_\-]*(?:signature|token|credential|secret|password|key)"
    r"[A-Za-z0-9_\-]*))=[^&\s'\"]+",
    re.IGNORECASE,
)
_SECRET_NAME = re.compile(
    r"(PASSWORD|TOKEN|SECRET|CREDENTIAL|ACCESS_KEY|PRIVATE_KEY|API_KEY|AUTH)", re.IGNORECASE
)
# Short values (e.g. "1", "true") would mask ordinary text; real secrets are longer.
_MIN_SECRET_CHARS = 6
MASK = "***"


def _env_secrets() -> list[str]:
    """Values of credential-like environment variables, longest first."""
    values = set()
    for name, value in os.environ.items():
        if value and len(value) >= _MIN_SECRET_CHARS and _SECRET_NAME.search(name):
            values.add(value)
        # MLFLOW_TRACKING_USERNAME is not secret by name, but it is half of a credential
        if name.endswith("_USERNAME") and value and len(value) >= _MIN_SECRET_CHARS:
            values.add(value)
    return sorted(values, key=len, reverse=True)


def without_userinfo(url: str) -> str:
    """`url` with its `user:password@` part removed: a URL to show or link to."""
    return _USERINFO.sub(r"\g<scheme>", url)


def redact(text: str, secrets: list[str] | None = None) -> str:
    text = _USERINFO.sub(rf"\g<scheme>{MASK}@", text)
    text = _QUERY_SECRET.sub(rf"\g<key>={MASK}", text)
    for value in _env_secrets() if secrets is None else secrets:
        text = text.replace(value, MASK)
    return text


class RedactingFormatter(logging.Formatter):
    """A formatter whose output never carries a URL credential or a credential env value."""

    def __init__(self, fmt: str | None = None) -> None:
        super().__init__(fmt)
        # The environment is read once: secrets are set before the process starts.
        self._secrets = _env_secrets()

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), self._secrets)


class RateLimit(logging.Filter):
    """At most `burst` records per logger and message template per `period` seconds; the next
    one let through says how many were dropped. Clients that trigger a warning on purpose
    (malformed requests, connection floods) cannot fill the log."""

    def __init__(self, burst: int = 10, period: float = 60.0) -> None:
        super().__init__()
        self.burst, self.period = burst, period
        self._windows: dict[tuple[str, str], list[float | int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = time.monotonic()
        window = self._windows.get(key)
        if window is None or now - window[0] >= self.period:
            if len(self._windows) > 1000:  # bounded: templates, not values, are the keys
                self._windows.clear()
            dropped = int(window[2]) if window else 0
            self._windows[key] = [now, 1, 0]
            if dropped:
                record.msg = f"{record.msg} ({dropped} similar messages suppressed)"
            return True
        if window[1] < self.burst:
            window[1] += 1
            return True
        window[2] += 1
        return False


def configure_logging(level: str) -> None:
    """Root logging (uvicorn's, MLflow's and ours) through one redacting, rate-limited handler
    on stderr."""
    handler = logging.StreamHandler()
    handler.addFilter(RateLimit())
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if level != "trace" else "DEBUG")
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
