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
import sys
import threading
import time
from collections import OrderedDict

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


# Longest log line written: a library that logs what a client sent (MLflow names every column
# and parameter it ignores) cannot make one record cost more than this.
MAX_LINE_CHARS = 16 * 1024
_LAST_TOKEN = re.compile(r"\S*\Z")


def truncate(text: str, limit: int = MAX_LINE_CHARS) -> str:
    """`text` cut to `limit` characters, without the token the cut falls in: half a URL or
    half a secret would no longer match what `redact` looks for."""
    if len(text) <= limit:
        return text
    head = _LAST_TOKEN.sub("", text[:limit])
    return f"{head}... [{len(text) - len(head)} more characters]"


class RedactingFormatter(logging.Formatter):
    """A formatter whose output never carries a URL credential or a credential env value, and
    never exceeds MAX_LINE_CHARS."""

    def __init__(self, fmt: str | None = None) -> None:
        super().__init__(fmt)
        # The environment is read once: secrets are set before the process starts.
        self._secrets = _env_secrets()

    def format(self, record: logging.LogRecord) -> str:
        return redact(truncate(super().format(record)), self._secrets)


class RateLimit(logging.Filter):
    """Two limits, so that no client can fill the log, whatever it makes the process log:
    - at most `burst` records with the same logger, level and text per `period` seconds (a
      message repeated by a flood), the next one let through says how many were dropped;
    - at most `bytes_per_second` of log text overall, `burst_bytes` at once (a flood of lines
      that all differ: paths, column names); the next record let through says how many lines
      were dropped.
    Identical lines are recognised by their text, not their template: uvicorn's access log
    has a single template for every request."""

    def __init__(
        self,
        burst: int = 10,
        period: float = 60.0,
        bytes_per_second: int = 256 * 1024,
        burst_bytes: int = 1024 * 1024,
        max_keys: int = 1000,
    ) -> None:
        super().__init__()
        self.burst, self.period, self.max_keys = burst, period, max_keys
        self.rate, self.burst_bytes = bytes_per_second, burst_bytes
        self._windows: OrderedDict[tuple, list] = OrderedDict()  # key: [start, count, dropped]
        self._tokens, self._refilled = float(burst_bytes), time.monotonic()
        self._dropped_lines = 0
        self._lock = threading.Lock()  # filters run outside the handler's lock

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        key = (record.name, record.levelno, message[:512])
        cost = min(len(message), MAX_LINE_CHARS) + 100  # + the line's prefix
        now = time.monotonic()
        with self._lock:
            self._tokens = min(self.burst_bytes, self._tokens + (now - self._refilled) * self.rate)
            self._refilled = now
            window = self._windows.get(key)
            if window is not None and now - window[0] < self.period:
                if window[1] >= self.burst:
                    window[2] += 1
                    return False
                window[1] += 1
                notes = []
            else:
                dropped = window[2] if window else 0
                self._windows[key] = [now, 1, 0]
                self._windows.move_to_end(key)
                if len(self._windows) > self.max_keys:
                    self._windows.popitem(last=False)
                notes = [f"{dropped} similar messages suppressed"] if dropped else []
            if self._tokens < cost:
                self._dropped_lines += 1
                return False
            self._tokens -= cost
            if self._dropped_lines:
                notes.append(f"{self._dropped_lines} log lines dropped over the rate limit")
                self._dropped_lines = 0
        if notes:
            record.msg, record.args = f"{message} ({'; '.join(notes)})", None
        return True


def _uncaught(logger: logging.Logger, exc_info: tuple, origin: str) -> None:
    if exc_info[0] is not None and not issubclass(exc_info[0], SystemExit):
        logger.error("uncaught %s in %s", exc_info[0].__name__, origin, exc_info=exc_info)


def _log_uncaught(logger: logging.Logger) -> None:
    """Exceptions that escape a thread, the main program or a finalizer are logged (redacted,
    rate-limited) instead of printed."""

    def in_thread(args) -> None:  # type: ignore[no-untyped-def]
        origin = f"thread {args.thread.name}" if args.thread is not None else "a thread"
        _uncaught(logger, (args.exc_type, args.exc_value, args.exc_traceback), origin)

    threading.excepthook = in_thread
    sys.unraisablehook = lambda args: _uncaught(
        logger, (args.exc_type, args.exc_value, args.exc_traceback), "a finalizer"
    )
    sys.excepthook = lambda *exc_info: _uncaught(logger, exc_info, "the main thread")


def configure_logging(level: str) -> None:
    """Every log line of the process through one redacting, rate-limited handler on stderr:
    ours, uvicorn's, MLflow's (`python -m ml_service` keeps MLflow from installing its own
    handler), warnings, and exceptions that escape a thread."""
    handler = logging.StreamHandler()
    handler.addFilter(RateLimit())
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if level != "trace" else "DEBUG")
    # Loggers that brought a handler of their own (uvicorn's, a library's) log through root.
    for logger in logging.Logger.manager.loggerDict.values():
        if isinstance(logger, logging.Logger):
            logger.handlers[:] = []
            logger.propagate = True
    logging.captureWarnings(True)
    _log_uncaught(logging.getLogger("ml_service"))
