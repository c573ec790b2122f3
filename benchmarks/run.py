"""`make bench`: ml-service vs `mlflow models serve`, MLServer and BentoML, same model and machine.

Steps: train (or reuse) the model and download it to a plain directory; start every server one at
a time (time from process start to ready, RSS at ready); drive them with wrk, interleaved ABC ABC
per scenario (payload rows x connections) so that machine noise hits all of them alike; RSS growth
of ml-service over N requests; the in-process floor; a py-spy profile of ml-service under load.
Writes JSON, a PNG plot and the generated part of docs/benchmarks.md.

Every knob is a flag so that tests/bench can run the whole thing on a tiny load.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from payloads import body, load_rows, predicted_rows

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "benchmarks"
VENV_BIN = Path(sys.executable).parent
KINDS = ("ml-service", "mlflow", "mlserver", "bentoml")
LABELS = {
    "ml-service": "ml-service",
    "mlflow": "mlflow models serve",
    "mlserver": "MLServer",
    "bentoml": "BentoML",
}
# Telemetry off everywhere: the machine reaches package registries only.
QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "BENTOML_DO_NOT_TRACK": "true",
    "MLSERVER_DISABLE_TELEMETRY": "true",
}
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


class BenchError(RuntimeError):
    pass


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(
    method: str, url: str, data: bytes | None = None, timeout: float = 10
) -> tuple[int, bytes]:
    req = urllib.request.Request(  # noqa: S310 - 127.0.0.1 only
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def session_pids(sid: int) -> list[int]:
    """Every process of the server's session (MLServer and BentoML fork workers)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:
                pids.append(int(stat.parent.name))
    return pids


def rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class ServerSpec:
    key: str  # unique name in the report, e.g. "ml-service" or "ml-service mb=2ms"
    kind: str
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Server:
    spec: ServerSpec
    port: int
    proc: subprocess.Popen
    log_path: Path
    ready_path: str
    predict_path: str
    startup_s: float = 0.0
    rss_at_ready: dict = field(default_factory=dict)
    requests_sent: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def rss(self) -> dict:
        pids = session_pids(self.proc.pid)
        return {
            "main_mb": round(rss_mb(self.proc.pid), 1),
            "tree_mb": round(sum(rss_mb(p) for p in pids), 1),
            "processes": len(pids),
        }

    def log_tail(self, n: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-n:]
        return ""


def stop(server: Server) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.proc.pid, signal.SIGTERM)
    try:
        server.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait(timeout=10)
    # workers that outlived their parent (same session) go too
    for pid in session_pids(server.proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def command(spec: ServerSpec, model_dir: Path, port: int, work: Path, tools: Path) -> tuple:
    """argv, env, cwd, ready path, predict path for one server."""
    env = {**os.environ, **QUIET_ENV, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"}
    if spec.kind == "ml-service":
        env.pop("MICROBATCH_WAIT_MS", None)  # the app's default unless the spec sets it
        env.update(MODEL_URI=str(model_dir), HOST="127.0.0.1", PORT=str(port))
        env.update(SHUTDOWN_DRAIN_SECONDS="0", **spec.env)  # no load balancer to drain here
        argv = [sys.executable, "-m", "ml_service"]
        return argv, env, work, "/ready", "/predict"
    if spec.kind == "mlflow":
        argv = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", str(model_dir)]
        argv += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
        env.update(spec.env)
        return argv, env, work, "/ping", "/invocations"
    if spec.kind == "mlserver":
        home = Path(tempfile.mkdtemp(prefix="mlserver-", dir=work))
        settings = {"host": "127.0.0.1", "http_port": port, "grpc_port": free_port()}
        settings["metrics_port"] = free_port()
        (home / "settings.json").write_text(json.dumps(settings))
        model = {
            "name": "ml-service",
            "implementation": "mlserver_mlflow.MLflowRuntime",
            "parameters": {"uri": str(model_dir)},
        }
        (home / "model-settings.json").write_text(json.dumps(model))
        env.update(spec.env)
        argv = [str(tools / "mlserver/bin/mlserver"), "start", str(home)]
        return argv, env, home, "/v2/models/ml-service/ready", "/v2/models/ml-service/infer"
    if spec.kind == "bentoml":
        env.update(BENCH_MODEL_DIR=str(model_dir), BENTOML_HOME=str(work / "bentoml-home"))
        env.update(spec.env)
        argv = [str(tools / "bentoml/bin/bentoml"), "serve", "bentoml_service:MlService"]
        argv += ["--host", "127.0.0.1", "--port", str(port)]
        return argv, env, HERE, "/readyz", "/predict"
    raise ValueError(spec.kind)


def start(spec: ServerSpec, model_dir: Path, work: Path, tools: Path, timeout: float) -> Server:
    port = free_port()
    argv, env, cwd, ready, predict = command(spec, model_dir, port, work, tools)
    if not Path(argv[0]).exists():
        raise BenchError(f"{argv[0]} is missing: run `make bench-envs` (or `make bench`)")
    log_path = work / f"{re.sub(r'[^a-z0-9]+', '-', spec.key)}.log"
    with open(log_path, "wb") as log:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(spec, port, proc, log_path, ready, predict)
    try:
        while True:
            if proc.poll() is not None:
                raise BenchError(f"{spec.key} exited with {proc.returncode}:\n{server.log_tail()}")
            with contextlib.suppress(OSError):
                if http("GET", server.url(ready), timeout=2)[0] == 200:
                    break
            if time.monotonic() - t0 > timeout:
                raise BenchError(
                    f"{spec.key} not ready within {timeout:.0f}s:\n{server.log_tail()}"
                )
            time.sleep(0.05)
        server.startup_s = time.monotonic() - t0
        server.rss_at_ready = server.rss()
    except BaseException:
        stop(server)
        raise
    return server


# ---------------------------------------------------------------- load


def check_wrk() -> str:
    if not shutil.which("wrk"):
        raise BenchError("wrk is not installed: run `make setup` (setup-bench installs it)")
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    return (out.stdout + out.stderr).splitlines()[0].strip()


def wrk(url: str, body_file: Path, connections: int, seconds: float) -> dict:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s"]
    argv += ["-s", str(HERE / "wrk/post.lua"), url]
    env = {**os.environ, "WRK_BODY_FILE": str(body_file)}
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=seconds + 60)
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if out.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({out.returncode}): {out.stdout[-2000:]}{out.stderr[-2000:]}")
    raw = json.loads(line.removeprefix("WRK_JSON "))
    secs = raw["duration_us"] / 1e6
    return {
        "requests": raw["requests"],
        "seconds": round(secs, 3),
        "rps": round(raw["requests"] / secs, 2) if secs else 0.0,
        "latency_ms": {k: round(v / 1000, 3) for k, v in raw["latency_us"].items()},
        "errors": raw["errors"],
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def bodies(servers: list[Server], model_dir: Path, sizes: list[int], work: Path) -> dict:
    """One body file per (kind, rows); each server must answer it with `rows` predictions."""
    files = {}
    for n in sizes:
        columns, rows = load_rows(model_dir, n)
        for kind in {s.spec.kind for s in servers}:
            path = work / f"body-{kind}-{n}.json"
            path.write_text(json.dumps(body(kind, columns, rows)))
            files[kind, n] = path
        for s in servers:
            status, payload = http(
                "POST", s.url(s.predict_path), files[s.spec.kind, n].read_bytes()
            )
            if status != 200:
                raise BenchError(f"{s.spec.key} answered {status} to {n} rows: {payload[:500]!r}")
            got = predicted_rows(s.spec.kind, json.loads(payload))
            if got != n:
                raise BenchError(f"{s.spec.key} returned {got} predictions for {n} rows")
    return files


# ---------------------------------------------------------------- the model


def prepare_model(args: argparse.Namespace, work: Path) -> tuple[Path, dict]:
    if args.model_dir:
        return Path(args.model_dir).resolve(), {"source": str(args.model_dir)}
    tracking = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{work / 'mlflow.db'}"
    env = {**os.environ, **QUIET_ENV, "MLFLOW_TRACKING_URI": tracking}
    result_file = work / "train.json"
    print(f"training the default model (MLFLOW_TRACKING_URI={tracking})", flush=True)
    subprocess.run(
        [sys.executable, "-m", "ml_service.train", "--output-json", str(result_file)],
        cwd=work,
        env=env,
        check=True,
    )
    result = json.loads(result_file.read_text())
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking)
    dst = work / f"model-v{result['version']}"
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir()
    path = mlflow.artifacts.download_artifacts(
        artifact_uri=client.get_model_version_download_uri(result["name"], result["version"]),
        dst_path=str(dst),
        tracking_uri=tracking,
    )
    return Path(path), {"source": result["model_uri"], "run_id": result["run_id"]}


# ---------------------------------------------------------------- phases


def interleaved(servers, files, sizes, conns, rounds, duration, warmup) -> list[dict]:
    results = []
    for n in sizes:
        for c in conns:
            for r in range(rounds):
                for s in servers:  # A B C, A B C: noise hits every server alike
                    url = s.url(s.predict_path)
                    if warmup > 0:
                        s.requests_sent += wrk(url, files[s.spec.kind, n], c, warmup)["requests"]
                    res = wrk(url, files[s.spec.kind, n], c, duration)
                    s.requests_sent += res["requests"]
                    results.append(
                        {"server": s.spec.key, "rows": n, "connections": c, "round": r + 1, **res}
                    )
                    print(
                        f"  {s.spec.key:<22} rows={n:<4} c={c:<3} round {r + 1}: "
                        f"{res['rps']:8.1f} req/s  p95 {res['latency_ms']['p95']:8.1f} ms",
                        flush=True,
                    )
    return results


def rss_growth(server: Server, body_file: Path, total: int, max_seconds: float) -> dict:
    """RSS before and after `total` more 1-row requests at 50 connections."""
    before = server.rss()
    sent, t0 = 0, time.monotonic()
    while sent < total and time.monotonic() - t0 < max_seconds:
        sent += wrk(server.url(server.predict_path), body_file, 50, 10)["requests"]
    time.sleep(1)
    after = server.rss()
    server.requests_sent += sent
    return {
        "server": server.spec.key,
        "requests": sent,
        "target_requests": total,
        "seconds": round(time.monotonic() - t0, 1),
        "rss_before_mb": before["main_mb"],
        "rss_after_mb": after["main_mb"],
        "growth_mb": round(after["main_mb"] - before["main_mb"], 1),
    }


def floor(model_dir: Path, sizes: list[int]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, str(HERE / "floor.py"), str(model_dir), *map(str, sizes)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=300,
    )
    if out.returncode != 0:
        raise BenchError(f"floor.py failed: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def profile(server: Server, body_file: Path, seconds: float, tools: Path, work: Path) -> dict:
    """py-spy (sampling on-CPU stacks of every thread) while wrk drives 1-row requests at c=50."""
    pyspy = tools / "profile/bin/py-spy"
    if not pyspy.exists():
        return {"skipped": f"{pyspy} missing: run `make bench-envs`"}
    raw = work / "profile-ml-service.txt"
    spy = subprocess.Popen(
        [
            str(pyspy),
            "record",
            "--pid",
            str(server.proc.pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "200",
            "--format",
            "raw",
            "--nonblocking",
            "-o",
            str(raw),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    load = wrk(server.url(server.predict_path), body_file, 50, seconds + 1)
    server.requests_sent += load["requests"]
    _, err = spy.communicate(timeout=seconds + 60)
    if spy.returncode != 0 or not raw.exists():
        return {"skipped": f"py-spy failed: {err.decode(errors='replace')[-500:]}"}
    return {"rps_while_profiled": load["rps"], "file": str(raw), **summarise_profile(raw)}


# Component of a sample's innermost frame (first match wins): "where does the time go".
COMPONENTS = (
    ("model (scikit-learn, numpy)", ("sklearn/", "numpy/", "scipy/", "threadpoolctl")),
    ("ml-service code", ("ml_service/",)),
    ("metrics (prometheus)", ("prometheus",)),
    ("validation, JSON (pydantic, json)", ("pydantic", "json/")),
    ("framework (FastAPI, Starlette, anyio)", ("fastapi/", "starlette/", "anyio/")),
    ("HTTP server (uvicorn, h11)", ("uvicorn/", "h11/", "httptools")),
    ("event loop, sockets (asyncio)", ("asyncio/", "selectors.py", "socket.py")),
    ("thread hand-off (threading, futures)", ("threading.py", "concurrent/", "queue.py")),
)


def summarise_profile(raw: Path, top: int = 12) -> dict:
    """Shares of on-CPU samples per function (inclusive and self) and per component, from
    py-spy's collapsed stacks (`frame;frame;... count` per line, innermost frame last)."""
    total, incl, leaf, comp = 0, {}, {}, {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        # one entry per function: drop line numbers and the interpreter's own path prefixes
        frames = [
            re.sub(r":\d+\)$", ")", re.sub(r" \(.*(site-packages/|lib/python3\.\d+/)", " (", f))
            for f in stack.split(";")
        ]
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n
        if frames:
            leaf[frames[-1]] = leaf.get(frames[-1], 0) + n
            name = next(
                (c for c, keys in COMPONENTS if any(k in frames[-1] for k in keys)), "other"
            )
            comp[name] = comp.get(name, 0) + n

    def rank(d: dict, limit: int) -> list[dict]:
        ordered = sorted(d.items(), key=lambda kv: -kv[1])[:limit]
        return [{"frame": f, "share": round(v / total, 3)} for f, v in ordered] if total else []

    return {
        "samples": total,
        "components": rank(comp, len(COMPONENTS) + 1),
        "inclusive": rank(incl, top),
        "self": rank(leaf, top),
    }


# ---------------------------------------------------------------- report


def aggregate(results: list[dict]) -> list[dict]:
    rows = []
    # stable sort: servers keep their start order within a scenario
    keys = sorted(
        dict.fromkeys((r["server"], r["rows"], r["connections"]) for r in results),
        key=lambda k: (k[1], k[2]),
    )
    for server, n, c in keys:
        rs = [r for r in results if (r["server"], r["rows"], r["connections"]) == (server, n, c)]
        lat = {
            p: round(statistics.mean(r["latency_ms"][p] for r in rs), 2)
            for p in ("p50", "p95", "p99")
        }
        errors = sum(sum(r["errors"].values()) for r in rs)
        rows.append(
            {
                "server": server,
                "rows": n,
                "connections": c,
                "rounds": len(rs),
                "rps": round(statistics.mean(r["rps"] for r in rs), 1),
                "rps_min": min(r["rps"] for r in rs),
                "rps_max": max(r["rps"] for r in rs),
                "requests": sum(r["requests"] for r in rs),
                "errors": errors,
                **lat,
            }
        )
    return rows


def ratios(results: list[dict], ours: list[str], others: list[str]) -> list[dict]:
    """Per round, ours / theirs (adjacent in time), then the geometric mean over rounds."""
    out = []
    by = {(r["server"], r["rows"], r["connections"], r["round"]): r for r in results}
    scenarios = sorted({(r["rows"], r["connections"]) for r in results})
    for a in ours:
        for b in others:
            for n, c in scenarios:
                pairs = [
                    (by[a, n, c, k], by[b, n, c, k])
                    for (s, nn, cc, k) in by
                    if s == a and (nn, cc) == (n, c) and (b, n, c, k) in by
                ]
                if not pairs or any(y["rps"] == 0 for _, y in pairs):
                    continue
                gm = math.exp(statistics.mean(math.log(x["rps"] / y["rps"]) for x, y in pairs))
                p95 = statistics.mean(
                    y["latency_ms"]["p95"] / max(x["latency_ms"]["p95"], 1e-3) for x, y in pairs
                )
                out.append(
                    {
                        "ours": a,
                        "theirs": b,
                        "rows": n,
                        "connections": c,
                        "throughput_ratio": round(gm, 2),
                        "p95_ratio_theirs_over_ours": round(p95, 2),
                        "rounds": len(pairs),
                    }
                )
    return out


def goals(report: dict) -> list[dict]:
    primary = report["primary"]
    agg = {(a["server"], a["rows"], a["connections"]): a for a in report["aggregate"]}
    rat = {
        (r["theirs"], r["rows"], r["connections"]): r["throughput_ratio"]
        for r in report["ratios"]
        if r["ours"] == primary
    }
    c_hi = max(report["params"]["connections"])
    out = []

    def goal(name, value, target, ok, unit=""):
        if value is None:
            out.append({"goal": name, "target": target, "value": None, "status": "not measured"})
        else:
            out.append(
                {
                    "goal": name,
                    "target": target,
                    "value": f"{value}{unit}",
                    "status": "met" if ok(value) else "MISSED",
                }
            )

    goal(
        f"1 row, c={c_hi}: throughput vs mlflow models serve",
        rat.get(("mlflow", 1, c_hi)),
        ">= 5x",
        lambda v: v >= 5,
        "x",
    )
    goal(
        f"1 row, c={c_hi}: throughput vs MLServer",
        rat.get(("mlserver", 1, c_hi)),
        ">= 2x",
        lambda v: v >= 2,
        "x",
    )
    p95 = agg.get((primary, 1, c_hi), {}).get("p95")
    goal(f"1 row, c={c_hi}: ml-service p95", p95, "< 150 ms", lambda v: v < 150, " ms")
    for c in report["params"]["connections"]:
        goal(
            f"100 rows, c={c}: throughput vs mlflow models serve",
            rat.get(("mlflow", 100, c)),
            ">= 3x",
            lambda v: v >= 3,
            "x",
        )
    rss = report.get("rss_growth") or {}
    label = f"RSS growth over {rss.get('requests', 0):,} requests"
    goal(label, rss.get("growth_mb"), "< 5 MB", lambda v: v < 5, " MB")
    start = next((s["startup_s"] for s in report["servers"] if s["key"] == primary), None)
    goal("start to /ready, model on local disk", start, "< 3 s", lambda v: v < 3, " s")
    return out


def versions(tools: Path, wrk_version: str) -> dict:
    def pkgs(python: Path, names: list[str]) -> dict:
        code = (
            "import importlib.metadata as m, json, sys\n"
            "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))"
        )
        if not python.exists():
            return {}
        out = subprocess.run(
            [str(python), "-c", code, *names], capture_output=True, text=True, check=False
        )
        return json.loads(out.stdout) if out.returncode == 0 else {"error": out.stderr[-300:]}

    common = ["mlflow-skinny", "scikit-learn", "numpy", "pandas", "uvicorn"]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "app"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "python": platform.python_version(),
        "git_commit": commit + ("+dirty" if dirty else ""),
        "wrk": wrk_version,
        "ml-service / mlflow serve env": pkgs(
            Path(sys.executable), ["ml-service", "mlflow", "fastapi", *common]
        ),
        "mlserver env": pkgs(
            tools / "mlserver/bin/python",
            ["mlserver", "mlserver-mlflow", "mlflow", "fastapi", *common],
        ),
        "bentoml env": pkgs(tools / "bentoml/bin/python", ["bentoml", *common]),
    }


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem = next(
        (
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal:")
        ),
        0,
    )
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gb": round(mem / 1024**2, 1),
        "kernel": platform.release(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = report["aggregate"]
    servers = [s["key"] for s in report["servers"]]
    scen = sorted({(a["rows"], a["connections"]) for a in agg})
    fig, axes = plt.subplots(2, 1, figsize=(10, 7.5), constrained_layout=True)
    width = 0.8 / max(1, len(servers))
    for i, s in enumerate(servers):
        vals = {(a["rows"], a["connections"]): a for a in agg if a["server"] == s}
        xs = [j + i * width for j in range(len(scen))]
        axes[0].bar(
            xs, [vals.get(k, {}).get("rps", 0) for k in scen], width, label=LABELS.get(s, s)
        )
        axes[1].bar(
            xs, [vals.get(k, {}).get("p95", 0) for k in scen], width, label=LABELS.get(s, s)
        )
    ticks = [j + width * (len(servers) - 1) / 2 for j in range(len(scen))]
    for ax, title in zip(
        axes,
        ("throughput (req/s, higher is better)", "p95 latency (ms, log scale, lower is better)"),
        strict=True,
    ):
        ax.set_xticks(ticks, [f"{n} row{'s' * (n > 1)}, c={c}" for n, c in scen])
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8, ncols=min(3, len(servers)))
    m = report["machine"]
    fig.suptitle(
        f"{m['nproc']} cores ({m['cpu_model']}), {report['params']['duration_s']} s per "
        f"run, {report['params']['rounds']} interleaved rounds, {report['date']}",
        fontsize=9,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def markdown(report: dict, png_name: str) -> str:
    p, m = report["params"], report["machine"]
    out = [
        f"_Generated by `make bench` on {report['date']} (`benchmarks/run.py "
        f"{' '.join(report['argv'])}`)._",
        "",
        f"Machine: {m['nproc']} cores, {m['cpu_model']}, {m['memory_gb']} GB, Linux {m['kernel']}; "
        f"load average at start {m['loadavg_at_start']}, at end {report['loadavg_at_end']}.",
        f"Load: wrk, 1 thread, closed loop; {p['duration_s']} s per run after {p['warmup_s']} s "
        f"warm-up, {p['rounds']} rounds interleaved across servers.",
        "",
        f"![throughput and p95 per server and payload]({png_name})",
        "",
        "### Goals",
        "",
        table(
            ["goal", "target", "measured", "status"],
            [[g["goal"], g["target"], g["value"] or "-", g["status"]] for g in report["goals"]],
        ),
        "",
        "### Throughput and latency (mean over rounds)",
        "",
        table(
            [
                "server",
                "rows",
                "conns",
                "req/s",
                "req/s min-max",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "errors",
            ],
            [
                [
                    LABELS.get(a["server"], a["server"]),
                    a["rows"],
                    a["connections"],
                    a["rps"],
                    f"{a['rps_min']:.0f}-{a['rps_max']:.0f}",
                    a["p50"],
                    a["p95"],
                    a["p99"],
                    a["errors"],
                ]
                for a in report["aggregate"]
            ],
        ),
        "",
        "### Ratios from the same run (geometric mean over rounds of adjacent runs)",
        "",
        table(
            ["ml-service", "vs", "rows", "conns", "throughput x", "their p95 / ours"],
            [
                [
                    r["ours"],
                    LABELS.get(r["theirs"], r["theirs"]),
                    r["rows"],
                    r["connections"],
                    r["throughput_ratio"],
                    r["p95_ratio_theirs_over_ours"],
                ]
                for r in report["ratios"]
            ],
        ),
        "",
        "### Start-up and memory",
        "",
        table(
            [
                "server",
                "start to ready (s)",
                "RSS at ready (MB, main / all processes)",
                "RSS at end (MB, main / all)",
                "requests served",
            ],
            [
                [
                    LABELS.get(s["key"], s["key"]),
                    s["startup_s"],
                    f"{s['rss_at_ready']['main_mb']} / {s['rss_at_ready']['tree_mb']}",
                    f"{s['rss_at_end']['main_mb']} / {s['rss_at_end']['tree_mb']}",
                    f"{s['requests_served']:,}",
                ]
                for s in report["servers"]
            ],
        ),
        "",
    ]
    rss = report.get("rss_growth")
    if rss:
        out += [
            f"RSS growth of `{rss['server']}`: {rss['rss_before_mb']} MB warm, "
            f"{rss['rss_after_mb']} MB after {rss['requests']:,} more 1-row requests "
            f"({rss['seconds']} s): **{rss['growth_mb']:+} MB**.",
            "",
        ]
    fl = report["floor"]
    out += [
        "### In-process floor (no HTTP; one thread, median / p95 per call)",
        "",
        table(
            [
                "rows",
                "sklearn predict_proba (ml-service's path)",
                "mlflow pyfunc predict (the competitors' path)",
            ],
            [
                [
                    n,
                    f"{v['sklearn_predict_proba']['median_ms']:.2f} / "
                    f"{v['sklearn_predict_proba']['p95_ms']:.2f} ms",
                    f"{v['pyfunc_predict']['median_ms']:.2f} / "
                    f"{v['pyfunc_predict']['p95_ms']:.2f} ms",
                ]
                for n, v in fl.items()
            ],
        ),
        "",
    ]
    mb = report.get("microbatch")
    if mb:
        out += [
            f"### Micro-batching (1-row requests; `{report['primary']}` runs the default "
            f"MICROBATCH_WAIT_MS={report['params']['ml_service_default_microbatch_wait_ms']:g})",
            "",
            table(
                ["variant", "rows", "conns", "req/s", "p95 ms", "req/s vs default"],
                [
                    [v["server"], v["rows"], v["connections"], v["rps"], v["p95"], v["rps_vs_off"]]
                    for v in mb["rows"]
                ],
            ),
            "",
            f"**{mb['recommendation']}**",
            "",
        ]
    prof = report.get("profile")
    if prof and "inclusive" in prof:
        out += [
            f"### Profile of `{report['primary']}` under 1-row load at c=50 (py-spy, "
            f"{prof['samples']} samples, on-CPU samples of all threads)",
            "",
            table(
                ["share (self)", "component"],
                [[f"{x['share']:.0%}", x["frame"]] for x in prof["components"]],
            ),
            "",
            table(
                ["share (inclusive)", "function"],
                [[f"{x['share']:.0%}", f"`{x['frame']}`"] for x in prof["inclusive"]],
            ),
            "",
            table(
                ["share (self)", "function"],
                [[f"{x['share']:.0%}", f"`{x['frame']}`"] for x in prof["self"]],
            ),
            "",
        ]
    out += ["### Versions", "", "```json", json.dumps(report["versions"], indent=2), "```"]
    return "\n".join(out)


def write_markdown(path: Path, generated: str) -> None:
    block = f"{BEGIN}\n{generated}\n{END}"
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = f"# Benchmarks\n\n{block}\n"
    path.write_text(text)


def microbatch_summary(
    agg: list[dict], off: str, variants: list[str], default: float | None
) -> dict | None:
    if not variants:
        return None
    by = {(a["server"], a["rows"], a["connections"]): a for a in agg}
    rows, verdicts = [], []
    conns = sorted({a["connections"] for a in agg})
    for key in [off, *variants]:
        for c in conns:
            a, base = by.get((key, 1, c)), by.get((off, 1, c))
            if a and base:
                rows.append(
                    {
                        "server": key,
                        "rows": 1,
                        "connections": c,
                        "rps": a["rps"],
                        "p95": a["p95"],
                        "rps_vs_off": f"{a['rps'] / base['rps']:.2f}x",
                    }
                )
    lo, hi = conns[0], conns[-1]
    if (off, 1, lo) not in by or (off, 1, hi) not in by:
        return None
    for v in variants:
        gain = by[v, 1, hi]["rps"] / by[off, 1, hi]["rps"]
        p95_lo = by[v, 1, lo]["p95"] / max(by[off, 1, lo]["p95"], 1e-3)
        # keep only if clearly faster under load and not clearly slower for a lone client
        verdicts.append((v, gain, p95_lo, gain >= 1.05 and p95_lo <= 1.10))
    winners = [v for v in verdicts if v[3]]
    if winners:
        v = max(winners, key=lambda x: x[1])
        rec = (
            f"{v[0]} wins: {v[1]:.2f}x throughput at c={hi}, p95 at c={lo} x{v[2]:.2f}; "
            f"recommend it as the default."
        )
    else:
        detail = "; ".join(
            f"{v}: {g:.2f}x req/s at c={hi}, p95 at c={lo} x{p:.2f}" for v, g, p, _ in verdicts
        )
        rec = (
            f"The default (MICROBATCH_WAIT_MS={default:g}) wins or ties ({detail}); "
            "keep the default."
        )
    return {"rows": rows, "recommendation": rec}


# ---------------------------------------------------------------- main


def default_microbatch() -> float:
    from ml_service.settings import Settings

    return float(Settings.model_fields["microbatch_wait_ms"].default)


def csv(kind):
    return lambda s: [kind(x) for x in s.split(",") if x.strip()]


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--servers",
        type=csv(str),
        default=list(KINDS),
        help="comma list of ml-service,mlflow,mlserver,bentoml",
    )
    p.add_argument(
        "--microbatch-ms",
        type=csv(float),
        # the default is micro-batching on (2 ms): the extra variant measures it off
        default=[0.0],
        help="extra ml-service variants with MICROBATCH_WAIT_MS set ('' for none)",
    )
    p.add_argument(
        "--competitor-omp-threads",
        type=int,
        default=1,
        help="OMP_NUM_THREADS for the competitors, as ml-service's NUMERIC_THREADS=1 (0 = unset)",
    )
    p.add_argument("--rows", type=csv(int), default=[1, 100])
    p.add_argument("--connections", type=csv(int), default=[1, 50])
    p.add_argument("--duration", type=float, default=20.0, help="seconds per measured run")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up before each run")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--rss-requests", type=int, default=100_000)
    p.add_argument("--rss-max-seconds", type=float, default=480.0)
    p.add_argument("--profile-seconds", type=float, default=15.0, help="0 = no py-spy profile")
    p.add_argument("--startup-timeout", type=float, default=300.0)
    p.add_argument("--model-dir", help="reuse this local MLflow model dir instead of training")
    p.add_argument("--work-dir", type=Path, default=ROOT / ".local/bench")
    p.add_argument("--tools-dir", type=Path, default=ROOT / ".tools/bench")
    p.add_argument("--out-json", type=Path, default=HERE / "results/latest.json")
    p.add_argument("--out-md", type=Path, default=ROOT / "docs/benchmarks.md")
    p.add_argument("--out-png", type=Path, default=ROOT / "docs/benchmarks.png")
    args = p.parse_args(argv)
    unknown = set(args.servers) - set(KINDS)
    if unknown or "ml-service" not in args.servers:
        p.error(f"--servers must include ml-service and only {', '.join(KINDS)}")
    return args


@contextlib.contextmanager
def running(specs, model_dir, work, tools, timeout) -> Iterator[list[Server]]:
    servers: list[Server] = []
    try:
        for spec in specs:  # one at a time, so start-up times are not contended by each other
            print(f"starting {spec.key} ...", flush=True)
            servers.append(start(spec, model_dir, work, tools, timeout))
            print(
                f"  ready in {servers[-1].startup_s:.2f} s, RSS {servers[-1].rss_at_ready}",
                flush=True,
            )
        yield servers
    finally:
        for s in servers:
            stop(s)


def main(argv: list[str]) -> int:
    args = parse(argv)
    wrk_version = check_wrk()
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.UTC)
    model_dir, model_info = prepare_model(args, work)

    specs = [ServerSpec("ml-service", "ml-service")]
    specs += [
        ServerSpec(f"ml-service mb={ms:g}ms", "ml-service", {"MICROBATCH_WAIT_MS": f"{ms:g}"})
        for ms in args.microbatch_ms
    ]
    # Same numeric threads for all: unset, HistGradientBoosting's OpenMP teams (one per tree) stall
    # the competitors on a busy 2-core machine and the comparison measures the machine's load.
    omp = (
        {"OMP_NUM_THREADS": str(args.competitor_omp_threads)} if args.competitor_omp_threads else {}
    )
    specs += [ServerSpec(k, k, dict(omp)) for k in KINDS[1:] if k in args.servers]
    primary, variants = specs[0].key, [s.key for s in specs if s.kind == "ml-service"][1:]
    report: dict = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "argv": argv,
        "primary": primary,
        "model": {"dir": str(model_dir), **model_info},
        "machine": machine(),
        "params": {
            "rows": args.rows,
            "connections": args.connections,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "servers": [s.key for s in specs],
            "ml_service_default_microbatch_wait_ms": default_microbatch(),
        },
    }
    with running(specs, model_dir, work, args.tools_dir, args.startup_timeout) as servers:
        files = bodies(servers, model_dir, sorted(set([1, *args.rows])), work)
        results = interleaved(
            servers, files, args.rows, args.connections, args.rounds, args.duration, args.warmup
        )
        ml = servers[0]
        if args.rss_requests > 0:
            print(f"RSS: {args.rss_requests:,} requests to {ml.spec.key} ...", flush=True)
            report["rss_growth"] = rss_growth(
                ml, files["ml-service", 1], args.rss_requests, args.rss_max_seconds
            )
        if args.profile_seconds > 0:
            print("profiling ml-service under load ...", flush=True)
            report["profile"] = profile(
                ml, files["ml-service", 1], args.profile_seconds, args.tools_dir, work
            )
        report["servers"] = [
            {
                "key": s.spec.key,
                "kind": s.spec.kind,
                "env": s.spec.env,
                "startup_s": round(s.startup_s, 2),
                "rss_at_ready": s.rss_at_ready,
                "rss_at_end": s.rss(),
                "requests_served": s.requests_sent,
            }
            for s in servers
        ]
    print("in-process floor ...", flush=True)
    report["floor"] = floor(model_dir, sorted(set([1, *args.rows])))
    report["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["results"] = results
    report["aggregate"] = aggregate(results)
    others = [s.key for s in specs if s.kind != "ml-service"]
    report["ratios"] = ratios(results, [primary, *variants], others)
    report["microbatch"] = microbatch_summary(
        report["aggregate"],
        primary,
        variants,
        report["params"]["ml_service_default_microbatch_wait_ms"],
    )
    report["goals"] = goals(report)
    report["versions"] = versions(args.tools_dir, wrk_version)

    for path in (args.out_json, args.out_md, args.out_png):
        path.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(report, indent=1) + "\n")
    plot(report, args.out_png)
    rel_png = os.path.relpath(args.out_png, args.out_md.parent)
    write_markdown(args.out_md, markdown(report, rel_png))
    print(f"wrote {args.out_json}, {args.out_md}, {args.out_png}")
    for g in report["goals"]:
        print(f"  {g['status']:<13} {g['goal']}: {g['value']} (target {g['target']})")
    return 0


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # runs the `finally` that stops every server


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    try:
        sys.exit(main(sys.argv[1:]))
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        sys.exit(2)
