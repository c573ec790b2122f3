"""The measurements: load generators, the interleaved runs, and what is measured beside them.

- Closed loop: wrk with N connections (each sends its next request when the previous answer
  arrives), so a saturated server's latency is its queue. Servers interleaved per scenario, A B C
  B C A C A B, so machine noise hits every server alike and none always follows the same one.
- Open loop: vegeta at a constant request rate, whatever the answers do; a ladder of rates up to
  saturation, repeated, the servers interleaved at every step: latency against offered load.
- The model's in-process floor (floor.py), RSS growth, a py-spy profile, machine and versions.

Every measurement records the machine's load average at its start and end and the CPU that other
processes used meanwhile; above `LOAD`'s thresholds it is flagged: the machine is shared, and
figures from a busy machine are not published.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from . import HERE, ROOT, BenchError
from .payloads import body, load_rows, predicted_rows
from .servers import CPUS, RUNNING, Server, cpu_time_s, proc_table, server_pids

# An open-loop step is saturated (the server no longer keeps up) when fewer than this share of
# its requests succeed or complete at the offered rate, or p99 passes SATURATED_P99_MS.
SATURATED_SUCCESS = 0.99
SATURATED_THROUGHPUT = 0.8
SATURATED_P99_MS = 2000.0
# vegeta sent at less than this share of the offered rate: the generator itself was starved.
LAGGED_RATE = 0.9
# Past its first saturated step, a server stays on the ladder up to this many times its
# capacity in that ladder (the highest rate it kept up with): goodput under overload.
OVERLOAD_FACTOR = 4.0
# The mixed payload of the overload steps: 1-row and 100-row requests, alternating.
MIX = "mix"


# ---------------------------------------------------------------- machine load


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> float:
    """CPU seconds all processes have used since boot (user, nice, system). Interrupt time is
    left out: loopback traffic at thousands of requests a second is the benchmark's own."""
    with open("/proc/stat") as fh:
        f = [int(x) for x in fh.readline().split()[1:4]]
    return sum(f) / CLOCK_TICKS


def _our_cpu_s() -> float:
    """CPU seconds of the benchmark: this process, its exited children (wrk, vegeta, floor.py)
    and every process of every running server (its session and its descendants)."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    table = proc_table()
    ticks = sum(table[pid][2] for server in RUNNING for pid in server_pids(server.proc.pid, table))
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime + ticks / CLOCK_TICKS


@dataclass(frozen=True)
class Probe:
    t: float
    load: float
    busy_s: float
    ours_s: float


def probe() -> Probe:
    return Probe(time.monotonic(), loadavg()[0], _machine_busy_s(), _our_cpu_s())


@dataclass
class LoadLog:
    """The machine around every measurement: 1-min load average at start and end, and the cores
    used meanwhile by processes that are not the benchmark's. Above either threshold the
    measurement ran on a busy machine (a benchmark at full load runs a load average of 2-3 by
    itself on two cores, hence the default of twice the cores)."""

    threshold: float = 2.0 * (os.cpu_count() or 1)
    cpu_threshold: float = 0.25
    busy: list[dict] = field(default_factory=list)
    peak: float = 0.0
    peak_other_cpu: float = 0.0
    count: int = 0

    def measure(self, what: str, a: Probe, b: Probe) -> dict:
        other = ((b.busy_s - a.busy_s) - (b.ours_s - a.ours_s)) / max(b.t - a.t, 1e-3)
        res = {"loadavg_start": a.load, "loadavg_end": b.load, "other_cpu": round(max(0, other), 2)}
        self.count += 1
        self.peak = max(self.peak, a.load, b.load)
        self.peak_other_cpu = max(self.peak_other_cpu, res["other_cpu"])
        res["busy"] = max(a.load, b.load) > self.threshold or res["other_cpu"] > self.cpu_threshold
        if res["busy"]:
            self.busy.append({"what": what, **res})
        return res

    def summary(self) -> dict:
        return {
            "threshold": self.threshold,
            "cpu_threshold": self.cpu_threshold,
            "peak": self.peak,
            "peak_other_cpu": self.peak_other_cpu,
            "measurements": self.count,
            "busy_measurements": self.busy,
        }


LOAD = LoadLog()


def busy_note(res: dict) -> str:
    if not res["busy"]:
        return ""
    return (
        f"  [BUSY: load {res['loadavg_start']} -> {res['loadavg_end']}, "
        f"{res['other_cpu']} cores used by others]"
    )


# ---------------------------------------------------------------- HTTP and payloads


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
            if got is not None and got != n:
                raise BenchError(f"{s.spec.key} returned {got} predictions for {n} rows")
    return files


# ---------------------------------------------------------------- load generators


def check_wrk() -> str:
    if not shutil.which("wrk"):
        raise BenchError("wrk is not installed: run `make setup` (setup-bench installs it)")
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    return (out.stdout + out.stderr).splitlines()[0].strip()


def wrk(url: str, body_file: Path, connections: int, seconds: float, what: str = "wrk") -> dict:
    """Closed loop: `connections` clients, each sending as soon as its previous answer arrived."""
    argv = [*client_pin(), "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
    argv += ["--timeout", "10s"]
    argv += ["-s", str(HERE / "wrk/post.lua"), url]
    env = {**os.environ, "WRK_BODY_FILE": str(body_file)}
    before = probe()
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=seconds + 60)
    load = LOAD.measure(what, before, probe())
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
        **load,
    }


# At most this many connections per server from vegeta (0 = as many as it likes): a load
# balancer's pool of connections to one pod, below the pod's MAX_CONNECTIONS.
CLIENT = {"max_connections": 0}


def client_pin() -> list[str]:
    """The load generator runs on CPUS["client"], away from the servers' CPUS["server"]."""
    return ["taskset", "-c", CPUS["client"]] if CPUS["client"] else []


def find_vegeta() -> str:
    found = shutil.which("vegeta") or shutil.which("vegeta", path=str(ROOT / ".tools/bin"))
    if not found:
        raise BenchError("vegeta is not installed: run `make setup` (setup-bench builds it)")
    return found


def vegeta_version(exe: str) -> str:
    out = subprocess.run([exe, "-version"], capture_output=True, text=True, check=False)
    version = re.search(r"Version:\s*(\S+)", out.stdout)
    return f"vegeta {version[1] if version else '?'}"


def vegeta(
    exe: str,
    url: str,
    body_file: Path | list[Path],
    rate: int,
    seconds: float,
    work: Path,
    what: str = "",
    workers: int = 0,
) -> dict:
    """Open loop: `rate` requests per second for `seconds`, sent on schedule whatever the server
    does (vegeta adds workers and connections as needed); latencies from vegeta's own report.
    Several body files: the requests take them in turn. `workers` > 0 (rate 0): a closed loop
    of that many workers, each sending its next request once answered."""
    targets = work / "vegeta-targets.txt"
    files = body_file if isinstance(body_file, list) else [body_file]
    targets.write_text(
        "\n".join(f"POST {url}\nContent-Type: application/json\n@{f}\n" for f in files)
    )
    results = work / "vegeta-results.bin"
    argv = [
        *client_pin(),
        exe,
        "attack",
        f"-rate={rate}/1s",
        f"-duration={seconds:g}s",
        "-timeout=10s",
    ]
    if workers:
        argv += [f"-workers={workers}", f"-max-workers={workers}"]
    argv += ["-max-body=0", f"-targets={targets}", f"-output={results}"]
    if CLIENT["max_connections"]:
        argv.append(f"-max-connections={CLIENT['max_connections']}")
    before = probe()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    load = LOAD.measure(what or f"vegeta {rate}/s", before, probe())
    if out.returncode != 0:
        raise BenchError(f"vegeta attack failed ({out.returncode}): {out.stderr[-2000:]}")
    raw = json.loads(_vegeta_output(exe, "report", "-type=json", str(results)))
    lat = raw["latencies"]
    outcome = _outcome(exe, results, seconds)
    res = {
        "rate": rate,
        "seconds": round(raw["duration"] / 1e9, 3),
        "requests": raw["requests"],
        "sent_rate": round(raw["rate"], 1),
        "throughput": round(raw["throughput"], 1),
        "success": round(raw["success"], 4),
        "latency_ms": {
            k: round(lat[src] / 1e6, 3)
            for k, src in (("p50", "50th"), ("p90", "90th"), ("p95", "95th"), ("p99", "99th"))
        }
        | {"mean": round(lat["mean"] / 1e6, 3), "max": round(lat["max"] / 1e6, 3)},
        "status_codes": raw.get("status_codes") or {},
        "errors": (raw.get("errors") or [])[:5],
        **outcome,
        **load,
    }
    res["saturated"] = (
        res["success"] < SATURATED_SUCCESS
        or res["throughput"] < SATURATED_THROUGHPUT * rate
        or res["latency_ms"]["p99"] > SATURATED_P99_MS
    )
    res["lagged"] = res["sent_rate"] < LAGGED_RATE * rate
    return res


def _vegeta_output(exe: str, command: str, *args: str) -> str:
    out = subprocess.run(
        [exe, command, *args], capture_output=True, text=True, timeout=300, check=False
    )
    if out.returncode != 0:
        raise BenchError(f"vegeta {command} failed ({out.returncode}): {out.stderr[-2000:]}")
    return out.stdout


def connection_lost(error: str) -> bool:
    """Whether vegeta's error for a request says the server's side of the connection went away
    under it: a reset read ("connection reset by peer") or a request body written into a
    connection the server had reset ("broken pipe"); not a timeout or a refusal to connect."""
    return "connection reset" in error or "broken pipe" in error


def _outcome(exe: str, results: Path, seconds: float) -> dict:
    """Goodput (200s per second of the attack), the share refused with 503, the latency of the
    answered (200) requests alone, and the connections reset, from vegeta's per-request
    results: under overload, the latency of all answers mixes fast refusals with the
    requests that were served."""
    ok: list[float] = []
    shed = resets = total = 0
    for line in _vegeta_output(exe, "encode", "-to=json", str(results)).splitlines():
        hit = json.loads(line)
        total += 1
        if hit["code"] == 200:
            ok.append(hit["latency"] / 1e6)
        elif hit["code"] == 503:
            shed += 1
        elif connection_lost(hit.get("error") or ""):
            resets += 1
    ok.sort()

    def pct(q: float) -> float | None:
        return round(ok[min(len(ok) - 1, int(q * len(ok)))], 3) if ok else None

    return {
        "goodput": round(len(ok) / seconds, 1),
        "shed_share": round(shed / total, 4) if total else 0.0,
        "resets": resets,
        "admitted_latency_ms": {"p50": pct(0.5), "p99": pct(0.99)},
    }


# ---------------------------------------------------------------- the model


def prepare_model(model_dir: str | None, work: Path) -> tuple[Path, dict]:
    from support.mlflow import mlflow_env

    if model_dir:
        return Path(model_dir).resolve(), {"source": str(model_dir)}
    tracking = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{work / 'mlflow.db'}"
    result_file = work / "train.json"
    print(f"training the default model (MLFLOW_TRACKING_URI={tracking})", flush=True)
    subprocess.run(  # in `work`: MLflow puts a sqlite store's artifacts under ./mlruns
        [sys.executable, "-m", "ml_service.training", "--output-json", str(result_file)],
        cwd=work,
        env=mlflow_env(tracking),
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
    """Closed loop, every (rows, connections) scenario, servers A B C, B C A, C A B..."""
    results = []
    for n in sizes:
        for c in conns:
            for r in range(rounds):
                # Interleaved, so noise hits every server alike; rotated, so no server always runs
                # right after the same neighbour (a busy predecessor left a warm CPU cache or a
                # backlog of reclaimed memory behind).
                shift = r % len(servers)
                for s in servers[shift:] + servers[:shift]:
                    url = s.url(s.predict_path)
                    if warmup > 0:
                        s.requests_sent += wrk(url, files[s.spec.kind, n], c, warmup)["requests"]
                    what = f"wrk {s.spec.key} rows={n} c={c} round {r + 1}"
                    res = wrk(url, files[s.spec.kind, n], c, duration, what)
                    s.requests_sent += res["requests"]
                    results.append(
                        {"server": s.spec.key, "rows": n, "connections": c, "round": r + 1, **res}
                    )
                    print(
                        f"  {s.spec.key:<22} rows={n:<4} c={c:<3} round {r + 1}: "
                        f"{res['rps']:8.1f} req/s  p95 {res['latency_ms']['p95']:8.1f} ms"
                        f"  p99 {res['latency_ms']['p99']:8.1f} ms{busy_note(res)}",
                        flush=True,
                    )
    return results


def open_loop(
    servers: list[Server],
    files: dict,
    rates: list[int],
    repetitions: int,
    seconds: float,
    pause: float,
    work: Path,
) -> list[dict]:
    """Ladders of constant rates (1-row requests), repeated; at every rate each server in turn
    (the order rotates per repetition). Past its first saturated step a server stays on the
    ladder up to OVERLOAD_FACTOR times its capacity in that ladder (the highest rate it kept up
    with), so goodput and shedding under overload are measured, then leaves it."""
    exe = find_vegeta()
    results = []
    for rep in range(repetitions):
        k = rep % len(servers)
        active = servers[k:] + servers[:k]
        capacity: dict[str, int | None] = {}
        for rate in rates:
            for s in list(active):
                cap = capacity.get(s.spec.key, 0)
                if cap is None or (cap and rate > OVERLOAD_FACTOR * cap):
                    active.remove(s)
            for s in list(active):
                what = f"vegeta {s.spec.key} {rate}/s ladder {rep + 1}"
                res = vegeta(
                    exe, s.url(s.predict_path), files[s.spec.kind, 1], rate, seconds, work, what
                )
                s.requests_sent += res["requests"]
                results.append({"server": s.spec.key, "repetition": rep + 1, **res})
                flags = " SATURATED" * res["saturated"] + " (generator lagged)" * res["lagged"]
                over = (
                    f"  shed {res['shed_share']:.0%}, 200s p99 "
                    f"{res['admitted_latency_ms']['p99']} ms, {res['resets']} resets"
                    if res["saturated"]
                    else ""
                )
                print(
                    f"  {s.spec.key:<22} {rate:>6}/s ladder {rep + 1}: "
                    f"p50 {res['latency_ms']['p50']:8.1f} ms  "
                    f"p99 {res['latency_ms']['p99']:8.1f} ms"
                    f"  {res['goodput']:8.1f} ok/s{flags}{over}{busy_note(res)}",
                    flush=True,
                )
                if not res["saturated"]:
                    capacity[s.spec.key] = rate
                elif not capacity.get(s.spec.key):
                    capacity[s.spec.key] = None  # saturated at its first step: no capacity
                time.sleep(pause)  # let the server drain whatever is left before the next step
            if not active:
                break
    return results


def has_files(files: dict, payload: str) -> bool:
    """Whether the run made the bodies a payload needs (its rows were measured)."""
    rows = {n for _, n in files}
    return {1, 100} <= rows if payload == MIX else int(payload) in rows


def payload_files(files: dict, kind: str, payload: str) -> list[Path]:
    return [files[kind, 1], files[kind, 100]] if payload == MIX else [files[kind, int(payload)]]


def overload(
    servers: list[Server],
    files: dict,
    own: list[str],
    payloads: list[str],
    factors: list[float],
    seconds: float,
    pause: float,
    work: Path,
    workers: int,
    capacity_seconds: float,
) -> tuple[list[dict], dict[str, dict[str, dict]]]:
    """Open loop past capacity: for each payload, every server offered the given multiples of
    the primary's (the first server's) capacity for that payload (so the HTTP floor at the same
    rate shows what the generator and the machine manage, and a variant what it changes),
    except the servers in `own` (the competitors): multiples of their own. Goodput, the share
    refused with 503, the p99 of the 200s and resets per step.

    Capacity is measured beside each payload's steps, before and after them (a closed loop of
    `workers` for `capacity_seconds`), and goodput is compared with the mean of the two: this
    machine's speed drifts by a tenth over minutes, and a capacity measured at the start of the
    run made the ratios of later steps drift with it. Returns the steps and, per server
    measured, per payload: the capacity before, after and their mean."""
    exe = find_vegeta()
    results: list[dict] = []
    measured = [servers[0], *(s for s in servers if s.spec.key in own)]
    capacity: dict[str, dict[str, dict]] = {s.spec.key: {} for s in measured}

    def measure(payload: str, when: str) -> None:
        for s in measured:
            body = payload_files(files, s.spec.kind, payload)
            what = f"capacity {s.spec.key} {payload} {when}"
            res = vegeta(exe, s.url(s.predict_path), body, 0, capacity_seconds, work, what,
                         workers=workers)  # fmt: skip
            s.requests_sent += res["requests"]
            capacity[s.spec.key].setdefault(payload, {})[when] = res["goodput"]
            wait_idle(s)
            print(f"  {s.spec.key:<22} {payload:>4} capacity {when}: {res['goodput']:8.1f} "
                  f"ok/s ({workers} workers){busy_note(res)}", flush=True)  # fmt: skip

    i = 0
    for payload in payloads:
        measure(payload, "before")
        steps = []
        for factor in factors:
            k = i % len(servers)
            i += 1
            for s in servers[k:] + servers[:k]:
                key = s.spec.key if s.spec.key in capacity else servers[0].spec.key
                rate = max(1, round(factor * capacity[key][payload]["before"]))
                what = f"overload {s.spec.key} {payload} x{factor:g}"
                body = payload_files(files, s.spec.kind, payload)
                res = vegeta(exe, s.url(s.predict_path), body, rate, seconds, work, what)
                s.requests_sent += res["requests"]
                res |= {"server": s.spec.key, "payload": payload, "factor": factor}
                res["capacity_of"] = key
                res["drain_s"] = wait_idle(s)
                steps.append(res)
                print(
                    f"  {s.spec.key:<22} {payload:>4} x{factor:<4g}{rate:>7}/s: "
                    f"{res['goodput']:8.1f} ok/s, shed {res['shed_share']:.0%}, 200s p99 "
                    f"{res['admitted_latency_ms']['p99']} ms, {res['resets']} resets"
                    f"{' (generator lagged)' * res['lagged']}, idle {res['drain_s']:.1f} s "
                    f"later{busy_note(res)}",
                    flush=True,
                )
                time.sleep(pause)
        measure(payload, "after")
        for caps in capacity.values():
            c = caps[payload]
            c["mean"] = round((c["before"] + c["after"]) / 2, 1)
        for res in steps:
            cap = capacity[res["capacity_of"]][res["payload"]]["mean"]
            res["capacity"] = cap
            res["goodput_vs_capacity"] = round(res["goodput"] / cap, 3) if cap else 0.0
        results += steps
    return results, capacity


# A server is idle again below this share of a CPU (wait_idle).
IDLE_CPU = 0.05


def wait_idle(server: Server, max_s: float = 30.0, every: float = 0.25) -> float:
    """Seconds until the server stops working on what an overload step left (a queue that
    outlives its clients runs on): the servers share CPUs, so the next one measured must not
    pay for it. Gives up after `max_s`."""
    t0 = time.monotonic()
    last = cpu_time_s(server)
    while time.monotonic() - t0 < max_s:
        time.sleep(every)
        now = cpu_time_s(server)
        if now - last < IDLE_CPU * every:
            break
        last = now
    return round(time.monotonic() - t0, 2)


def cpu_per_answer(server: Server, body_file: Path, seconds: float, what: str) -> dict:
    """Closed loop (wrk, 50 connections): the server's CPU seconds (every process) per answer,
    split by status (2xx served, the rest refused)."""
    url = server.url(server.predict_path)
    wrk(url, body_file, 50, 1, "warm-up")
    before = cpu_time_s(server)
    res = wrk(url, body_file, 50, seconds, what)
    cpu = cpu_time_s(server) - before
    server.requests_sent += res["requests"]
    refused = res["errors"]["status"]
    return {
        "server": server.spec.key,
        "requests": res["requests"],
        "refused": refused,
        "served": res["requests"] - refused,
        "cpu_s": round(cpu, 3),
        "rps": res["rps"],
        "loadavg_start": res["loadavg_start"],
        "loadavg_end": res["loadavg_end"],
    }


def answer_costs(
    primary: Server, refusing: Server, floor: Server | None, files: dict, seconds: float
) -> dict:
    """Server CPU time of one answer: a served 1-row and 100-row request (the primary), a
    refused one of each (a variant whose limit is 1: nearly every request is refused; the
    served few are subtracted at the served cost; a refused 100-row request's body is still
    read, to keep the connection) and, if present, the HTTP floor's hello-world answer."""
    kind = primary.spec.kind
    runs = {
        "served_1": cpu_per_answer(primary, files[kind, 1], seconds, "cost: 1 row"),
        "served_100": cpu_per_answer(primary, files[kind, 100], seconds, "cost: 100 rows"),
        "refused": cpu_per_answer(refusing, files[kind, 1], seconds, "cost: refusals"),
        "refused_100": cpu_per_answer(
            refusing, files[kind, 100], seconds, "cost: refusals, 100 rows"
        ),
    }
    if floor is not None:
        runs["floor"] = cpu_per_answer(floor, files[floor.spec.kind, 1], seconds, "cost: floor")
    us = {k: 1e6 * r["cpu_s"] / max(r["requests"], 1) for k, r in runs.items()}
    for refused, served in (("refused", "served_1"), ("refused_100", "served_100")):
        ref = runs[refused]
        us[refused] = (
            1e6 * (ref["cpu_s"] - ref["served"] * us[served] / 1e6) / max(ref["refused"], 1)
        )
    return {"runs": runs, "cpu_us": {k: round(v, 1) for k, v in us.items()}}


def rss_growth(server: Server, body_file: Path, total: int, max_seconds: float) -> dict:
    """RSS before and after `total` more 1-row requests at 50 connections (runs of 10 s, the
    first one 1 s long to size them, so a small `total` takes seconds)."""
    before = server.rss()
    sent, t0, seconds = 0, time.monotonic(), 1
    while sent < total and time.monotonic() - t0 < max_seconds:
        res = wrk(server.url(server.predict_path), body_file, 50, seconds, "RSS growth")
        sent += res["requests"]
        seconds = min(10, max(1, math.ceil((total - sent) / max(res["rps"], 1))))
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


def model_floor(model_dir: Path, sizes: list[int], seconds: float) -> dict:
    """The model alone, in process (floor.py), on one numeric thread, `seconds` per timing."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BENCH_FLOOR_SECONDS": f"{seconds:g}"}
    before = probe()
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
    LOAD.measure("in-process floor", before, probe())
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
    load = wrk(server.url(server.predict_path), body_file, 50, seconds + 1, "profile")
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
    ("HTTP server (uvicorn, httptools or h11)", ("uvicorn/", "h11/", "httptools")),
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


# ---------------------------------------------------------------- context


def default_microbatch() -> float:
    from ml_service.serving.settings import Settings

    return float(Settings.model_fields["microbatch_wait_ms"].default)


def versions(tools: Path, generators: dict[str, str]) -> dict:
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

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    common = ["mlflow-skinny", "scikit-learn", "numpy", "pandas", "uvicorn"]
    dirty = git("status", "--porcelain", "--", "app")
    return {
        "python": platform.python_version(),
        "git_commit": git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else ""),
        **generators,
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
    def first(path: str, prefix: str) -> str | None:
        with contextlib.suppress(OSError):
            for line in Path(path).read_text().splitlines():
                if line.startswith(prefix):
                    return line
        return None

    cpu = first("/proc/cpuinfo", "model name")
    mem = first("/proc/meminfo", "MemTotal:")
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu.split(":", 1)[1].strip() if cpu else platform.processor(),
        "memory_gb": round(int(mem.split()[1]) / 1024**2, 1) if mem else 0,
        "kernel": platform.release(),
        "loadavg_at_start": loadavg(),
    }
