"""Start test subprocesses in their own process group and always stop the whole group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time


def spawn(cmd: list[str], *, log_path: os.PathLike | str, **kwargs) -> subprocess.Popen:
    """Popen in a new session (= own process group); output goes to `log_path`, not a pipe
    that could fill up and block the child."""
    log = open(log_path, "ab")  # noqa: SIM115 - closed by the child's exit / GC
    return subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
    )


def stop_group(proc: subprocess.Popen, timeout: float = 15.0, children_grace: float = 5.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left (MLflow workers outlive the parent):
    the leader gets `timeout` seconds to exit, then its children `children_grace` more."""
    pgid = proc.pid  # start_new_session makes the child the group leader
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)
    # Children may still be alive even when the leader has exited.
    deadline = time.monotonic() + children_grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def tail(path: os.PathLike | str, chars: int = 4000) -> str:
    """The end of a log file, for assertion messages."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - chars))
            return fh.read().decode(errors="replace")
    except OSError as exc:
        return f"<no log: {exc}>"
