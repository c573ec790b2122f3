"""Metric labels take values from a bounded set: a label that took whatever a client sends grows
without end (10,000 made-up methods: 10,001 `method` values, a 19.7 MB /metrics, 5 s scrapes)."""

from __future__ import annotations

import random
import socket
import string
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from support.app_server import app_server

ATTACKS = 3000


def _series(text: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        counts[family.name] = len(family.samples)
    return counts


# Methods the HTTP parser itself accepts beyond the standard ones (WebDAV, caches...): they reach
# the app, and must all count as one `OTHER`. Invented tokens are refused by the parser (400).
PARSER_KNOWN = ["PROPFIND", "MKCOL", "PURGE", "SEARCH", "LOCK", "UNLOCK", "REPORT", "LINK"]


def _ask(port: int, method: str, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        return sock.makefile("rb").readline()


def test_invented_methods_and_paths_do_not_create_series(tiny_model: Path, tmp_path: Path) -> None:
    rng = random.Random(1)
    with app_server(model_uri=str(tiny_model), wait_ready=True, log_dir=tmp_path) as app:
        before = _series(httpx.get(app.url("/metrics")).text)
        for i in range(ATTACKS):
            path = f"/{''.join(rng.choices(string.ascii_lowercase, k=12))}/{i}"
            if i % 3 == 0:
                method = "GET"  # known method, unknown path
            elif i % 3 == 1:
                method, path = rng.choice(PARSER_KNOWN), "/predict"  # unusual method, known path
            else:
                method = "".join(rng.choices(string.ascii_uppercase, k=8))  # invented method
            status = _ask(app.port, method, path)
            assert status.startswith(b"HTTP/1.1 4"), (method, path, status)
        text = httpx.get(app.url("/metrics")).text
        after = _series(text)
    grown = {k: after[k] - before.get(k, 0) for k in after if after[k] > before.get(k, 0)}
    assert len(text) < 64 * 1024, len(text)
    for name, count in after.items():
        if name.startswith("http_"):
            assert count < 200, (name, count, grown)
    methods = {
        s.labels["method"]
        for f in text_string_to_metric_families(text)
        if f.name == "http_requests"
        for s in f.samples
    }
    assert methods <= {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "OTHER"}
    assert "OTHER" in methods
