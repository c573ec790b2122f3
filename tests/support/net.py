"""Network helpers for tests that start real servers on 127.0.0.1."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(
    url: str,
    timeout: float = 60.0,
    *,
    proc: subprocess.Popen | None = None,
    status: int = 200,
    interval: float = 0.2,
) -> None:
    """Poll `url` until it answers `status`; fail early if `proc` exits meanwhile."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was up")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == status:
                    return
                last = resp.status
        except urllib.error.HTTPError as exc:
            if exc.code == status:
                return
            last = exc.code
        except (OSError, urllib.error.URLError) as exc:
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"{url} did not answer {status} within {timeout:.0f}s (last: {last!r})")
