"""The shared test helpers every tier relies on: ports, polling, HTTP waits, process groups."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from support.net import free_port, wait_http
from support.poll import wait_until
from support.procs import spawn, stop_group, tail


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_stop_group_ends_children_that_outlive_the_leader(tmp_path) -> None:
    # the leader ignores SIGTERM and its child runs on: both must be gone afterwards
    log = tmp_path / "log"
    proc = spawn(["bash", "-c", "trap '' TERM; sleep 300 & echo child=$!; wait"], log_path=log)
    wait_until(lambda: "child=" in tail(log), 30, "the test script started", 0.05)
    child = int(tail(log).split("child=")[1].split()[0])
    assert os.getpgid(proc.pid) == proc.pid == os.getpgid(child) != os.getpgid(0)
    stop_group(proc, timeout=1, children_grace=0.5)
    assert proc.returncode == -signal.SIGKILL  # SIGTERM was ignored, so it took the SIGKILL
    # the orphaned child is reaped by init asynchronously once killed
    wait_until(lambda: not group_alive(proc.pid), 10, "the process group gone", 0.05)
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


def test_free_port_is_bindable_and_never_one_clients_are_given() -> None:
    import socket

    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    for _ in range(20):
        port = free_port()
        assert not low <= port <= high, "an ephemeral port: outgoing connections may take it"
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_wait_http_waits_for_the_status_and_notices_dead_processes(tmp_path) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/ok" else 503)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        wait_http(f"{base}/ok", timeout=5)
        wait_http(f"{base}/busy", timeout=5, status=503)
        with pytest.raises(TimeoutError, match="answering 200: not reached"):
            wait_http(f"{base}/busy", timeout=0.5)
    finally:
        server.shutdown()
    dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    dead.wait()
    with pytest.raises(RuntimeError, match="exited with 3"):
        wait_http(f"http://127.0.0.1:{free_port()}/", timeout=5, proc=dead)


def test_wait_until_returns_the_value_retries_what_it_is_told_and_says_why_it_gave_up() -> None:
    answers = iter([None, KeyError("not yet"), 0, "done"])

    def next_answer():  # type: ignore[no-untyped-def]
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert wait_until(next_answer, 5, "an answer", 0.01, retry=(KeyError,)) == "done"
    with pytest.raises(ValueError, match="never: not reached within 0s"):
        wait_until(lambda: False, 0, "never", 0.01, lambda: "the log", error=ValueError)
    with pytest.raises(ZeroDivisionError):  # not retried: it propagates at once
        wait_until(lambda: 1 / 0, 5, "a bug", 0.01)
