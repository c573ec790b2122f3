"""The servers under test: what each one is, how it starts, how it stops, what it weighs.

A server spec names a kind and optionally a label, extra environment variables and another command
line, so variants of ml-service (or of the HTTP floor) run side by side in the same interleaved run:

    ml-service                          the app at its defaults
    ml-service[MICROBATCH_WAIT_MS=0]    one setting changed (the label is the spec's text)
    nomb=ml-service[MICROBATCH_WAIT_MS=0,NUMERIC_THREADS=1]          a short label
    granian=ml-service -- {bin}/granian --interface asgi --host {host} --port {port}
        --factory ml_service.serving.app:create_app    another launcher, same env (MODEL_URI...)

Placeholders in a command: {python} {bin} (the virtualenv's bin) {host} {port} {model_dir} {root}.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from support.mlflow import QUIET_MLFLOW_ENV
from support.net import free_port, wait_http
from support.procs import spawn, stop_group, tail

from . import HERE, ROOT, BenchError

VENV_BIN = Path(sys.executable).parent
KINDS = ("ml-service", "mlflow", "mlserver", "bentoml", "http-floor")
COMPETITORS = ("mlflow", "mlserver", "bentoml")
LABELS = {
    "ml-service": "ml-service",
    "mlflow": "mlflow models serve",
    "mlserver": "MLServer",
    "bentoml": "BentoML",
    "http-floor": "HTTP floor (hello world, h11)",
    "floor-httptools": "HTTP floor (hello world, httptools)",
}
# Telemetry off everywhere: the machine reaches package registries only.
QUIET_ENV = {
    **QUIET_MLFLOW_ENV,
    "BENTOML_DO_NOT_TRACK": "true",
    "MLSERVER_DISABLE_TELEMETRY": "true",
}
HOST = "127.0.0.1"
_SPEC = re.compile(
    r"^(?:(?P<label>[^=\[\]\s]+)=)?(?P<kind>[a-z-]+)(?:\[(?P<env>[^\]]*)\])?"
    r"(?:\s+--\s+(?P<cmd>.+))?$",
    re.S,
)
_ENV_KEY = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def label(key: str) -> str:
    """How a server is named in the report: the kinds by their product names, variants as given."""
    return LABELS.get(key, key)


@dataclass(frozen=True)
class ServerSpec:
    key: str  # unique name in the report, e.g. "ml-service" or "ml-service mb=0ms"
    kind: str
    env: dict[str, str] = field(default_factory=dict)
    argv: tuple[str, ...] = ()  # another command line (placeholders allowed); () = the kind's


def parse_spec(text: str) -> ServerSpec:
    """`[LABEL=]KIND[ENV=VALUE,...][ -- COMMAND]` -> ServerSpec (ValueError names the problem)."""
    m = _SPEC.match(text.strip())
    if not m:
        raise ValueError(f"server spec {text!r}: expected [LABEL=]KIND[ENV=VALUE,...][ -- COMMAND]")
    kind = m["kind"]
    if kind not in KINDS:
        raise ValueError(f"server spec {text!r}: unknown kind {kind!r} (one of {', '.join(KINDS)})")
    env = {}
    for item in filter(None, (x.strip() for x in (m["env"] or "").split(","))):
        name, sep, value = item.partition("=")
        if not sep or not _ENV_KEY.match(name):
            raise ValueError(f"server spec {text!r}: {item!r} is not NAME=VALUE")
        env[name] = value
    argv = tuple(shlex.split(m["cmd"])) if m["cmd"] else ()
    key = m["label"] or text.strip().split(" -- ", 1)[0].strip()
    return ServerSpec(key, kind, env, argv)


def split_specs(text: str) -> list[str]:
    """A comma list of specs; commas inside [...] belong to the spec."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [p.strip() for p in [*parts, cur] if p.strip()]


# ---------------------------------------------------------------- processes


def proc_table() -> dict[int, tuple[int, int, int]]:
    """Every process: pid -> (parent pid, session id, CPU ticks used), from one pass over /proc."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            f = stat.read_text().rsplit(")", 1)[1].split()
            table[int(stat.parent.name)] = (int(f[1]), int(f[3]), int(f[11]) + int(f[12]))
    return table


def server_pids(root: int, table: dict[int, tuple[int, int, int]] | None = None) -> list[int]:
    """Every process of a server: its session (the server leads one) and every descendant,
    which matters for BentoML: its workers start sessions of their own."""
    table = proc_table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    todo = [pid for pid, (_, sid, _) in table.items() if sid == root or pid == root]
    found: set[int] = set()
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return sorted(found)


def rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


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
        return f"http://{HOST}:{self.port}{path}"

    def rss(self) -> dict:
        pids = server_pids(self.proc.pid)
        return {
            "main_mb": round(rss_mb(self.proc.pid), 1),
            "tree_mb": round(sum(rss_mb(p) for p in pids), 1),
            "processes": len(pids),
        }

    def log_tail(self, n: int = 4000) -> str:
        return tail(self.log_path, n)


# Servers started and not yet stopped (the harness counts their CPU as the benchmark's own).
RUNNING: list[Server] = []
# The CPUs every server under test runs on (`taskset -c`), e.g. "0": a pod with a 1-CPU limit,
# the load generator on another node; "" = wherever the kernel puts it.
CPUS = {"server": ""}


def cpu_time_s(server: Server) -> float:
    """CPU seconds used so far by every process of a server."""
    table = proc_table()
    return sum(table[p][2] for p in server_pids(server.proc.pid, table)) / os.sysconf("SC_CLK_TCK")


def stop(server: Server) -> None:
    """SIGTERM the group, SIGKILL what is left, then any process of the server that left it."""
    with contextlib.suppress(ValueError):
        RUNNING.remove(server)
    stop_group(server.proc, timeout=15)
    for pid in server_pids(server.proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    ready_path: str
    predict_path: str


def command(spec: ServerSpec, model_dir: Path, port: int, work: Path, tools: Path) -> Launch:
    """argv, env, cwd, ready path and predict path for one server."""
    env = {**os.environ, **QUIET_ENV, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"}
    if spec.kind == "ml-service":
        env.pop("MICROBATCH_WAIT_MS", None)  # the app's default unless the spec sets it
        env.update(MODEL_URI=str(model_dir), HOST=HOST, PORT=str(port))
        env.update(PROBE_PORT=str(free_port()))  # several ml-service servers run side by side
        env.update(SHUTDOWN_DRAIN_SECONDS="0")  # no load balancer to drain here
        # What the image installs (make bench-envs); the dev virtualenv for a quick run without it.
        runtime = tools / "runtime" / "bin" / "python"
        python = str(runtime) if runtime.exists() else sys.executable
        env["PYTHONPATH"] = str(ROOT / "app")
        launch = Launch([python, "-m", "ml_service"], env, work, "/ready", "/predict")
    elif spec.kind == "http-floor":
        env.update(HOST=HOST, PORT=str(port))
        launch = Launch([sys.executable, str(HERE / "hello.py")], env, HERE, "/ready", "/predict")
    elif spec.kind == "mlflow":
        argv = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", str(model_dir)]
        argv += ["--env-manager", "local", "-h", HOST, "-p", str(port)]
        launch = Launch(argv, env, work, "/ping", "/invocations")
    elif spec.kind == "mlserver":
        home = Path(tempfile.mkdtemp(prefix="mlserver-", dir=work))
        settings = {"host": HOST, "http_port": port, "grpc_port": free_port()}
        settings["metrics_port"] = free_port()
        (home / "settings.json").write_text(json.dumps(settings))
        model = {
            "name": "ml-service",
            "implementation": "mlserver_mlflow.MLflowRuntime",
            "parameters": {"uri": str(model_dir)},
        }
        (home / "model-settings.json").write_text(json.dumps(model))
        argv = [str(tools / "mlserver/bin/mlserver"), "start", str(home)]
        v2 = "/v2/models/ml-service"
        launch = Launch(argv, env, home, f"{v2}/ready", f"{v2}/infer")
    elif spec.kind == "bentoml":
        env.update(BENCH_MODEL_DIR=str(model_dir), BENTOML_HOME=str(work / "bentoml-home"))
        argv = [str(tools / "bentoml/bin/bentoml"), "serve", "bentoml_service:MlService"]
        argv += ["--host", HOST, "--port", str(port)]
        launch = Launch(argv, env, HERE, "/readyz", "/predict")
    else:
        raise ValueError(spec.kind)
    env.update(spec.env)
    if spec.argv:
        values = {
            "python": sys.executable,
            "bin": str(VENV_BIN),
            "host": HOST,
            "port": str(port),
            "model_dir": str(model_dir),
            "root": str(ROOT),
        }
        argv = [re.sub(r"\{(\w+)\}", lambda m: values.get(m[1], m[0]), a) for a in spec.argv]
        launch = Launch(argv, env, launch.cwd, launch.ready_path, launch.predict_path)
    return launch


def start(spec: ServerSpec, model_dir: Path, work: Path, tools: Path, timeout: float) -> Server:
    port = free_port()
    launch = command(spec, model_dir, port, work, tools)
    exe = shutil.which(launch.argv[0], path=launch.env["PATH"])
    if exe is None:
        hint = (
            "run `make bench-envs` (or `make bench`)" if spec.kind in COMPETITORS else "not on PATH"
        )
        raise BenchError(f"{launch.argv[0]} is missing: {hint}")
    log_path = work / f"{re.sub(r'[^a-z0-9]+', '-', spec.key.lower()).strip('-')}.log"
    log_path.unlink(missing_ok=True)
    t0 = time.monotonic()
    pin = ["taskset", "-c", CPUS["server"]] if CPUS["server"] else []  # execs: same pid
    argv = [*pin, exe, *launch.argv[1:]]
    proc = spawn(argv, log_path=log_path, cwd=launch.cwd, env=launch.env)
    server = Server(spec, port, proc, log_path, launch.ready_path, launch.predict_path)
    RUNNING.append(server)
    try:
        try:  # a short poll interval: start-up time is one of the figures
            wait_http(server.url(launch.ready_path), timeout=timeout, proc=proc, interval=0.05)
        except RuntimeError as exc:
            raise BenchError(f"{spec.key} exited with {proc.poll()}:\n{server.log_tail()}") from exc
        except TimeoutError as exc:
            raise BenchError(
                f"{spec.key} not ready within {timeout:.0f}s:\n{server.log_tail()}"
            ) from exc
        server.startup_s = time.monotonic() - t0
        server.rss_at_ready = server.rss()
    except BaseException:
        stop(server)
        raise
    return server


@contextlib.contextmanager
def running(
    specs: list[ServerSpec], model_dir: Path, work: Path, tools: Path, timeout: float
) -> Iterator[list[Server]]:
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
