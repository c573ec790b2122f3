"""The attacks of `tests/adversarial` at full size, with figures: what each does to the probes,
the memory and the other clients of one `python -m ml_service` (docs/benchmarks.md "Attacks").

    .venv/bin/python benchmarks/attacks.py --model-dir DIR [--attacks pipeline,slow-read,...]
    # the same attacks against another checkout of the app (e.g. an older commit):
    .venv/bin/python benchmarks/attacks.py --model-dir DIR --pythonpath /path/to/checkout/app

Probes go to the probe listener (PROBE_PORT) when the server has one, else to the main port.
Each attack gets a fresh server; figures are printed as one JSON object per attack.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository and tests/ (for `support`)
    sys.path[:0] = [str(Path(__file__).resolve().parents[1] / d) for d in ("", "tests")]

from support.app_server import AppServer, app_server
from support.attacks import (
    ProbeWatch,
    RssWatch,
    flood,
    http_request,
    open_sockets,
    pipeline_flood,
    trickle,
)

from benchmarks import ROOT
from benchmarks.harness import prepare_model
from benchmarks.payloads import load_rows


def probe_base(app: AppServer) -> str:
    """The probe listener when the server has one, else the main port (an older app)."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", app.probe_port), 1):
        return app.probe_base_url
    return app.base_url


def predict_body(model_dir: Path, rows: int) -> bytes:
    columns, data = load_rows(model_dir, rows)
    return json.dumps({"instances": [dict(zip(columns, r, strict=True)) for r in data]}).encode()


def post(path: str, body: bytes, content_type: str = "application/json") -> bytes:
    return http_request("POST", path, body, {"Content-Type": content_type})


@contextlib.contextmanager
def watched(app: AppServer) -> Iterator[tuple[ProbeWatch, RssWatch]]:
    probes = ProbeWatch(probe_base(app), paths=("/health", "/ready", "/metrics"))
    with RssWatch(app.process.pid).running() as rss, probes.running():
        yield probes, rss


def figures(probes: ProbeWatch, rss: RssWatch, **extra: object) -> dict:
    # the server may still work off a backlog the clients left behind: give it time
    return {**extra, "probes": probes.summary(), "rss": rss.summary(rss.settled_kib(60))}


# ---------------------------------------------------------------- attacks


def attack_pipeline(app: AppServer, args: argparse.Namespace) -> dict:
    with watched(app) as (probes, rss):
        sent = pipeline_flood(app.port, args.seconds)
    return figures(probes, rss, pipelined_requests_sent=sent)


def attack_slow_read(app: AppServer, args: argparse.Namespace) -> dict:
    request = http_request("GET", "/openapi.json") * 4
    clients = ProbeWatch(app.base_url, paths=("/health",), timeout=3.0)
    with (
        watched(app) as (probes, rss),
        clients.running(),
        open_sockets(app.port, 600, rcvbuf=4096) as socks,
    ):
        for s in socks:
            with contextlib.suppress(OSError):
                s.sendall(request)
        time.sleep(args.seconds)
    return figures(probes, rss, main_port_health=clients.summary())


def attack_slow_body(app: AppServer, args: argparse.Namespace) -> dict:
    head = post("/predict", b"")[:-4] + b"\r\nContent-Length: 1000\r\n\r\n"
    with watched(app) as (probes, rss), open_sockets(app.port, 540) as socks:
        for s in socks:
            with contextlib.suppress(OSError):
                s.sendall(head)
        with trickle(socks, b"{" + b" " * 999, interval=2.0):
            time.sleep(args.seconds)
    return figures(probes, rss)


def attack_slowloris(app: AppServer, args: argparse.Namespace) -> dict:
    header = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 500
    with (
        watched(app) as (probes, rss),
        open_sockets(app.port, 540) as socks,
        trickle(socks, header, interval=1.0),
    ):
        time.sleep(args.seconds)
    return figures(probes, rss)


def attack_predict_flood(app: AppServer, args: argparse.Namespace) -> dict:
    request = post("/predict", predict_body(args.model_dir, 1))
    with watched(app) as (probes, rss):
        result = flood(app.port, {"one-row": (args.connections, request)}, args.seconds)
    return figures(probes, rss, clients=result.summary("one-row"), statuses=dict(result.statuses))


def attack_mixed_flood(app: AppServer, args: argparse.Namespace) -> dict:
    big = post("/predict", predict_body(args.model_dir, 1000))
    small = post("/predict", predict_body(args.model_dir, 1))
    clients = {"1000-row": (500, big), "1-row": (5, small)}
    with watched(app) as (probes, rss):
        result = flood(app.port, clients, args.seconds)
    return figures(
        probes,
        rss,
        one_row=result.summary("1-row"),
        thousand_rows=result.summary("1000-row"),
        statuses=dict(result.statuses),
    )


def attack_metrics_scrapers(app: AppServer, args: argparse.Namespace) -> dict:
    """8 scrapers of the main port's /metrics while 4 clients send one-row predictions."""
    small = post("/predict", predict_body(args.model_dir, 1))
    quiet = flood(app.port, {"1-row": (4, small)}, args.seconds / 2)
    scrape = http_request("GET", "/metrics")
    with watched(app) as (probes, rss):
        loud = flood(app.port, {"1-row": (4, small), "scrape": (8, scrape)}, args.seconds)
    return figures(
        probes,
        rss,
        one_row_alone=quiet.summary("1-row"),
        one_row_with_scrapers=loud.summary("1-row"),
        scrapes=loud.summary("scrape"),
    )


def attack_wide_csv_row(app: AppServer, args: argparse.Namespace) -> dict:
    columns, _ = load_rows(args.model_dir, 1)
    out = {}
    with watched(app) as (probes, rss):
        for fields in (10_000, 100_000):
            body = (",".join(columns) + "\n" + ",".join(["1.0"] * fields) + "\n").encode()
            started = time.monotonic()
            with socket.create_connection(("127.0.0.1", app.port), timeout=60) as sock:
                sock.sendall(post("/invocations", body, "text/csv"))
                try:
                    status = sock.recv(64)[:12].decode()
                except TimeoutError:
                    status = "no answer in 60 s"
            out[f"{fields}_fields"] = {"status": status, "s": round(time.monotonic() - started, 2)}
    return figures(probes, rss, **out)


def attack_mlflow_log_flood(app: AppServer, args: argparse.Namespace) -> dict:
    """Credential-shaped extra column names and `params` keys on /invocations, ~1 MB a request:
    both are what MLflow's own schema enforcement names in its log lines."""
    columns, rows = load_rows(args.model_dir, 1)
    secret = "http://user{}:sentinel-password@host.example/" + "x" * 7000
    extra = [secret.format(i) for i in range(60)]
    split = {"columns": columns + extra, "data": [rows[0] + [1.0] * len(extra)]}
    params = {secret.format(i): 1 for i in range(60, 140)}
    body = json.dumps({"dataframe_split": split, "params": params}).encode()
    before = app.log_path.stat().st_size
    with watched(app) as (probes, rss):
        result = flood(app.port, {"params": (4, post("/invocations", body))}, args.seconds)
    time.sleep(1)
    log = app.log_path.read_bytes()[before:]
    return figures(
        probes,
        rss,
        requests=result.summary("params"),
        statuses=dict(result.statuses),
        log_bytes=len(log),
        secret_in_log=b"sentinel-password" in log,
    )


def attack_fd_exhaustion(app: AppServer, args: argparse.Namespace) -> dict:
    """1,100 connections the moment /ready turns 200 under a 1,024 open-file limit; then a CSV
    request (MLflow's own parsing path)."""
    columns, rows = load_rows(args.model_dir, 1)
    csv = (",".join(columns) + "\n" + ",".join(map(str, rows[0])) + "\n").encode()
    with open_sockets(app.port, 1100, timeout=2):
        time.sleep(args.seconds)
    answers = []
    for _ in range(3):
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", app.port), timeout=30) as sock,
        ):
            sock.sendall(post("/invocations", csv, "text/csv"))
            answers.append(sock.recv(64)[:12].decode())
        time.sleep(1)
    log = app.log_tail(2_000_000)
    return {
        "csv_answers": answers,
        "tracebacks_in_log": log.count("Traceback"),
        "emfile_in_log": log.count("Too many open files"),
    }


ATTACKS: dict[str, tuple[Callable[[AppServer, argparse.Namespace], dict], dict]] = {
    "pipeline": (attack_pipeline, {}),
    "slow-read": (attack_slow_read, {}),
    "slow-body": (attack_slow_body, {}),
    "slowloris": (attack_slowloris, {}),
    "predict-flood": (attack_predict_flood, {}),
    "mixed-flood": (attack_mixed_flood, {}),
    "metrics-scrapers": (attack_metrics_scrapers, {}),
    "wide-csv-row": (attack_wide_csv_row, {}),
    "mlflow-log-flood": (attack_mlflow_log_flood, {}),
    # at ready time, before MLflow's machinery has loaded: that is the attack
    "fd-exhaustion": (attack_fd_exhaustion, {"max_open_files": 1024, "warm": False}),
}


@contextlib.contextmanager
def server(
    args: argparse.Namespace, work: Path, warm: bool = True, **kwargs: object
) -> Iterator[AppServer]:
    env = {"PYTHONPATH": args.pythonpath} if args.pythonpath else {}
    with app_server(
        model_uri=str(args.model_dir),
        wait_ready=True,
        log_dir=work,
        env_extra=env,
        **kwargs,  # type: ignore[arg-type]
    ) as app:
        if warm:  # MLflow's machinery loads after /ready (~30 MB): idle RSS is measured after it
            columns, rows = load_rows(args.model_dir, 1)
            csv = ",".join(columns) + "\n" + ",".join(map(str, rows[0])) + "\n"
            with socket.create_connection(("127.0.0.1", app.port), timeout=60) as sock:
                sock.sendall(post("/invocations", csv.encode(), "text/csv"))
                sock.recv(64)
            time.sleep(1)
        yield app


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model-dir", type=Path, help="MLflow model directory (default: train one)")
    p.add_argument("--pythonpath", help="serve the app found here instead (an older checkout)")
    p.add_argument("--attacks", default=",".join(ATTACKS), help="of: " + ",".join(ATTACKS))
    p.add_argument("--seconds", type=float, default=20.0, help="length of each attack")
    p.add_argument("--connections", type=int, default=512, help="clients of the prediction flood")
    p.add_argument("--work", type=Path, default=ROOT / ".local" / "attacks")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.model_dir is None:
        args.model_dir = prepare_model(None, args.work)[0]
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    print(json.dumps({"load_average": os.getloadavg(), "pythonpath": args.pythonpath}), flush=True)
    for name in args.attacks.split(","):
        fn, settings = ATTACKS[name]
        with server(args, args.work, **settings) as app:
            try:
                result = fn(app, args)
            except Exception as exc:  # a broken attack must not hide the others' figures
                result = {"error": f"{type(exc).__name__}: {exc}"}
            result["alive"] = app.process.poll() is None
        print(json.dumps({"attack": name, **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
