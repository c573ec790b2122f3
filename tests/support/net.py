"""Network helpers for tests that start real servers on 127.0.0.1."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from .poll import wait_until
from .procs import tail


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now, below the kernel's ephemeral range: a port
    that bind(0) hands out is one the kernel also gives to outgoing connections, and the client
    sockets of an attack took a server's port between this call and the server's bind."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.SystemRandom()
    for _ in range(100):
        port = rng.randrange(max(1024, low - 16384), low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
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
    log: os.PathLike | str | None = None,
) -> None:
    """Poll `url` until it answers `status`: RuntimeError at once if `proc` exits meanwhile,
    TimeoutError after `timeout`; both end with the tail of `log` (the process's log) if given."""
    last: list[object] = [None]

    def answered() -> bool:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"process exited with {proc.returncode} before {url} was up{_tail(log)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                last[0] = resp.status
        except urllib.error.HTTPError as exc:
            last[0] = exc.code
        except (OSError, urllib.error.URLError) as exc:
            last[0] = exc
        return last[0] == status

    wait_until(
        answered, timeout, f"{url} answering {status}", interval,
        lambda: f"last answer: {last[0]!r}{_tail(log)}", error=TimeoutError,
    )  # fmt: skip


def _tail(log: os.PathLike | str | None) -> str:
    return f"\n{tail(log)}" if log is not None else ""
