"""`make bench`: ml-service vs `mlflow models serve`, MLServer and BentoML, same model and machine.

Steps: train (or reuse) the model and download it to a plain directory; start every server one at
a time (time from process start to ready, RSS at ready); drive them with wrk, interleaved ABC ABC
per scenario (payload rows x connections) so that machine noise hits all of them alike; then
vegeta at constant rates, a ladder up to saturation and on to 4x each server's capacity (goodput
under overload), repeated and interleaved the same way; RSS
growth of ml-service over N requests; the in-process floor; a py-spy profile of ml-service under
load. Writes JSON, a PNG plot and the generated part of docs/benchmarks.md.

Every knob is a flag so that tests/bench can run the whole thing on a tiny load; `--quick` is a
short run for a developer (figures not for publishing).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
import shutil
import signal
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: `python benchmarks/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import HERE, ROOT, BenchError, harness, report, servers
from benchmarks.harness import LOAD
from benchmarks.servers import KINDS, ServerSpec, parse_spec, split_specs

IDS_VARIANT, LOG_VARIANT = "ml-service prediction-ids", "ml-service payload-log"

# Two HTTP floors: h11 (uvicorn's default parser) and httptools, the parser ml-service runs.
DEFAULT_SERVERS = (
    "ml-service,mlflow,mlserver,bentoml,http-floor,floor-httptools=http-floor[HELLO_HTTP=httptools]"
)
# Full run (the published figures) and --quick (a look in a few minutes); explicit flags win.
PRESETS = {
    "full": {
        "rows": [1, 100],
        "connections": [1, 50],
        "duration": 20.0,
        "warmup": 3.0,
        "rounds": 2,
        "rss_requests": 100_000,
        "profile_seconds": 15.0,
        "floor_seconds": 5.0,
        "open_loop_rates": [
            25,
            50,
            100,
            200,
            400,
            800,
            1200,
            1600,
            2000,
            2400,
            2800,
            3200,
            3600,
            4000,
            4800,
            6400,
            8000,
        ],
        "open_loop_step": 10.0,
        "open_loop_repetitions": 3,
        "open_loop_pause": 1.0,
        "overload_step": 10.0,
        "cost_seconds": 10.0,
    },
    "quick": {
        "rows": [1, 100],
        "connections": [1, 50],
        "duration": 3.0,
        "warmup": 1.0,
        "rounds": 1,
        "rss_requests": 0,
        "profile_seconds": 0.0,
        "floor_seconds": 1.0,
        "open_loop_rates": [50, 200, 800, 1600, 3200, 4800, 6400],
        "open_loop_step": 2.0,
        "open_loop_repetitions": 2,
        "open_loop_pause": 0.5,
        "overload_step": 4.0,
        "cost_seconds": 3.0,
    },
}


def default_cpus() -> tuple[str, str]:
    """Servers on the first CPU, the load generator on the others: a pod with a 1-CPU limit
    and its client on another node, so the generator never takes the server's CPU (past
    capacity it would: refusing costs the server little, sending costs the generator more).
    One CPU: both unpinned."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return "", ""
    return str(cpus[0]), ",".join(map(str, cpus[1:]))


def csv(kind):
    return lambda s: [kind(x) for x in s.split(",") if x.strip()]


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="server specs: [LABEL=]KIND[ENV=VALUE,...][ -- COMMAND], KIND one of "
        f"{', '.join(KINDS)}; see benchmarks/servers.py and docs/benchmarks.md",
    )
    p.add_argument("--quick", action="store_true", help="a short run (defaults below in brackets)")
    p.add_argument(
        "--servers",
        default=DEFAULT_SERVERS,
        help="comma list of server specs, e.g. 'ml-service,ml-service[UVICORN_X=1],"
        f"mlflow' (default {DEFAULT_SERVERS}); must include an ml-service",
    )
    p.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="SPEC",
        help="one more server spec, may carry ' -- COMMAND' (repeatable)",
    )
    p.add_argument(
        "--microbatch-ms",
        type=csv(float),
        # the default is micro-batching on (2 ms): the extra variant measures it off
        default=[0.0],
        help="extra ml-service variants with MICROBATCH_WAIT_MS set ('' for none)",
    )
    p.add_argument(
        "--payload-log-sample",
        type=lambda v: float(v) if v.strip() else None,
        default=1.0,
        help="extra ml-service variants with prediction IDs on, and with them plus the payload "
        "log at this PAYLOAD_LOG_SAMPLE, written to WORK_DIR/payload-log ('' for none; 1)",
    )
    p.add_argument(
        "--competitor-omp-threads",
        type=int,
        default=1,
        help="OMP_NUM_THREADS for the competitors, as ml-service's NUMERIC_THREADS=1 (0 = unset)",
    )
    full, quick = PRESETS["full"], PRESETS["quick"]

    def preset(name: str) -> str:
        def show(v: object) -> str:
            return ",".join(map(str, v)) if isinstance(v, list) else f"{v:g}"

        return f"[{show(full[name])}; quick {show(quick[name])}]"

    g = p.add_argument_group("closed loop (wrk)")
    g.add_argument("--rows", type=csv(int), help=f"rows per request {preset('rows')}")
    g.add_argument("--connections", type=csv(int), help=f"{preset('connections')}")
    g.add_argument("--duration", type=float, help=f"seconds per measured run {preset('duration')}")
    g.add_argument("--warmup", type=float, help=f"seconds before each run {preset('warmup')}")
    g.add_argument("--rounds", type=int, help=f"{preset('rounds')}")
    g = p.add_argument_group("open loop (vegeta, 1-row requests)")
    g.add_argument(
        "--open-loop-rates",
        type=csv(int),
        help=f"the ladder, req/s ('' = no open loop) {preset('open_loop_rates')}",
    )
    g.add_argument(
        "--open-loop-step", type=float, help=f"seconds per step {preset('open_loop_step')}"
    )
    g.add_argument(
        "--open-loop-repetitions", type=int, help=f"ladders {preset('open_loop_repetitions')}"
    )
    g.add_argument(
        "--open-loop-pause", type=float, help=f"seconds between steps {preset('open_loop_pause')}"
    )
    g.add_argument("--slo-ms", type=float, default=50.0, help="the p99 bound of the report (50)")
    g = p.add_argument_group("overload (vegeta past each payload's capacity)")
    g.add_argument(
        "--overload-payloads",
        type=csv(str),
        default=["1", "100", harness.MIX],
        help="rows per request (each one of --rows), or 'mix' (1 and 100 alternating); '' = "
        "no overload steps (1,100,mix)",
    )
    g.add_argument(
        "--overload-factors",
        type=csv(float),
        default=[1.5, 2.0, 4.0],
        help="offered rates as multiples of each payload's capacity, measured beside its "
        "steps (ml-service's; a competitor's own) (1.5,2,4)",
    )
    g.add_argument(
        "--overload-step", type=float, help=f"seconds per step {preset('overload_step')}"
    )
    g.add_argument(
        "--cost-seconds",
        type=float,
        help="seconds per run measuring server CPU per answer, served and refused "
        f"(0 = not measured) {preset('cost_seconds')}",
    )
    g.add_argument(
        "--client-connections",
        type=int,
        default=256,
        help="at most this many connections from vegeta to a server, as a load balancer's pool "
        "to one pod, below its MAX_CONNECTIONS (0 = unbounded: past capacity vegeta opens a "
        "connection per waiting request; default 256)",
    )
    server_cpus, client_cpus = default_cpus()
    g = p.add_argument_group("CPUs")
    g.add_argument(
        "--server-cpus",
        default=server_cpus,
        help=f"taskset CPU list of every server ('' = unpinned; default {server_cpus!r})",
    )
    g.add_argument(
        "--client-cpus",
        default=client_cpus,
        help=f"taskset CPU list of wrk and vegeta ('' = unpinned; default {client_cpus!r})",
    )
    g = p.add_argument_group("other measurements")
    g.add_argument("--rss-requests", type=int, help=f"{preset('rss_requests')}")
    g.add_argument("--rss-max-seconds", type=float, default=480.0)
    g.add_argument(
        "--profile-seconds", type=float, help=f"0 = no py-spy profile {preset('profile_seconds')}"
    )
    g.add_argument(
        "--floor-seconds",
        type=float,
        help=f"time budget of each in-process floor timing {preset('floor_seconds')}",
    )
    g.add_argument(
        "--busy-loadavg",
        type=float,
        default=LOAD.threshold,
        help="flag measurements above this 1-min load average (default: twice the cores)",
    )
    g.add_argument(
        "--busy-cpu",
        type=float,
        default=LOAD.cpu_threshold,
        help="flag measurements while other processes used more cores than this "
        f"(default {LOAD.cpu_threshold:g})",
    )
    p.add_argument("--startup-timeout", type=float, default=300.0)
    p.add_argument("--model-dir", help="reuse this local MLflow model dir instead of training")
    p.add_argument("--work-dir", type=Path, default=ROOT / ".local/bench")
    p.add_argument("--tools-dir", type=Path, default=ROOT / ".tools/bench")
    out = "(default: the published files; with --quick under WORK_DIR/quick/)"
    p.add_argument("--out-json", type=Path, help=f"{out[:-1]}: benchmarks/results/latest.json)")
    p.add_argument("--out-md", type=Path, help=f"{out[:-1]}: docs/benchmarks.md)")
    p.add_argument("--out-png", type=Path, help=f"{out[:-1]}: docs/benchmarks.png)")
    args = p.parse_args(argv)
    for name, value in PRESETS["quick" if args.quick else "full"].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    # a quick run never overwrites the published figures unless told to
    quick = args.work_dir / "quick"
    published = {
        "out_json": (HERE / "results/latest.json", quick / "latest.json"),
        "out_md": (ROOT / "docs/benchmarks.md", quick / "benchmarks.md"),
        "out_png": (ROOT / "docs/benchmarks.png", quick / "benchmarks.png"),
    }
    for name, (full_path, quick_path) in published.items():
        if getattr(args, name) is None:
            setattr(args, name, quick_path if args.quick else full_path)
    try:
        args.specs = specs(args)
    except ValueError as exc:
        p.error(str(exc))
    return args


def payload_log_variants(args: argparse.Namespace) -> list[ServerSpec]:
    """ml-service with prediction IDs on, and with them and the payload log on (the log needs
    the IDs): the cost of each, beside the default in the same interleaved run. The log writes
    to a local directory, so its whole cost in the app is measured (sampling, queue, JSON
    Lines, gzip, the write) and no S3 server competes for the same cores."""
    if args.payload_log_sample is None:
        return []
    ids = {"PREDICTION_SIGNING_SECRET": secrets.token_hex(24)}
    log = {
        **ids,
        "PAYLOAD_LOG_URI": str((args.work_dir / "payload-log").resolve()),
        "PAYLOAD_LOG_SAMPLE": f"{args.payload_log_sample:g}",
    }
    return [
        ServerSpec(IDS_VARIANT, "ml-service", ids),
        ServerSpec(f"{LOG_VARIANT}={args.payload_log_sample:g}", "ml-service", log),
    ]


def specs(args: argparse.Namespace) -> list[ServerSpec]:
    """The servers in start order: the first ml-service is the primary, then its variants,
    then the competitors (same numeric threads as ml-service) and the HTTP floor."""
    given = [parse_spec(s) for s in [*split_specs(args.servers), *args.server]]
    ml = [s for s in given if s.kind == "ml-service"]
    if not ml:
        raise ValueError("--servers must include ml-service")
    ml[1:1] = [
        ServerSpec(f"ml-service mb={ms:g}ms", "ml-service", {"MICROBATCH_WAIT_MS": f"{ms:g}"})
        for ms in args.microbatch_ms
    ] + payload_log_variants(args)
    # Same numeric threads for all: unset, HistGradientBoosting's OpenMP teams (one per tree) stall
    # the competitors on a busy 2-core machine and the comparison measures the machine's load.
    omp = {"OMP_NUM_THREADS": str(args.competitor_omp_threads)}
    others = [
        ServerSpec(s.key, s.kind, {**omp, **s.env}, s.argv)
        if s.kind in servers.COMPETITORS and args.competitor_omp_threads
        else s
        for s in given
        if s.kind != "ml-service"
    ]
    out = ml + others
    keys = [s.key for s in out]
    if len(set(keys)) != len(keys):
        raise ValueError(f"server labels must be unique: {keys}")
    return out


def answer_costs(args, live, files, model_dir, work) -> dict:  # type: ignore[no-untyped-def]
    """The primary serving, a variant of it that refuses nearly everything (its limit is 1),
    and the first HTTP floor, if any: server CPU per answer (harness.answer_costs)."""
    primary = live[0]
    refuse = ServerSpec(
        "ml-service limit=1",
        "ml-service",
        {**primary.spec.env, "ADMISSION_MIN_CONCURRENCY": "1", "ADMISSION_MAX_CONCURRENCY": "1"},
    )
    floor = next((s for s in live if s.spec.kind == "http-floor"), None)
    refusing = servers.start(refuse, model_dir, work, args.tools_dir, args.startup_timeout)
    try:
        return harness.answer_costs(primary, refusing, floor, files, args.cost_seconds)
    finally:
        servers.stop(refusing)


def main(argv: list[str]) -> int:
    args = parse(argv)
    LOAD.threshold, LOAD.cpu_threshold = args.busy_loadavg, args.busy_cpu
    servers.CPUS.update(server=args.server_cpus, client=args.client_cpus)
    harness.CLIENT["max_connections"] = args.client_connections
    generators = {"wrk": harness.check_wrk()}
    if args.open_loop_rates:
        generators["vegeta"] = harness.vegeta_version(harness.find_vegeta())
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.UTC)
    mach = harness.machine()
    if mach["loadavg_at_start"][0] > LOAD.threshold / 2:  # nothing of ours runs yet
        print(
            f"WARNING: load average {mach['loadavg_at_start']} with nothing of the benchmark "
            "running: the machine is busy; these figures are for checking the harness, not for "
            "publishing",
            flush=True,
        )
    model_dir, model_info = harness.prepare_model(args.model_dir, work)
    specs = args.specs
    primary, variants = specs[0].key, [s.key for s in specs if s.kind == "ml-service"][1:]
    mb_variants = [s.key for s in specs[1:] if "MICROBATCH_WAIT_MS" in s.env]
    shutil.rmtree(work / "payload-log", ignore_errors=True)
    rep: dict = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "argv": argv,
        "primary": primary,
        "model": {"dir": str(model_dir), **model_info},
        "machine": mach,
        "params": {
            "rows": args.rows,
            "connections": args.connections,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "servers": [s.key for s in specs],
            "ml_service_default_microbatch_wait_ms": harness.default_microbatch(),
            "server_cpus": args.server_cpus,
            "client_cpus": args.client_cpus,
            "client_connections": args.client_connections,
        },
    }
    if args.open_loop_rates:
        rep["params"]["open_loop"] = {
            "rates": sorted(args.open_loop_rates),
            "step_s": args.open_loop_step,
            "repetitions": args.open_loop_repetitions,
            "pause_s": args.open_loop_pause,
            "slo_ms": args.slo_ms,
        }
    with servers.running(specs, model_dir, work, args.tools_dir, args.startup_timeout) as live:
        files = harness.bodies(live, model_dir, sorted({1, *args.rows}), work)
        print("closed loop (wrk) ...", flush=True)
        results = harness.interleaved(
            live, files, args.rows, args.connections, args.rounds, args.duration, args.warmup
        )
        if args.open_loop_rates:
            print("open loop (vegeta) ...", flush=True)
            rep["open_loop_results"] = harness.open_loop(
                live,
                files,
                sorted(args.open_loop_rates),
                args.open_loop_repetitions,
                args.open_loop_step,
                args.open_loop_pause,
                work,
            )
        ml = live[0]
        if args.overload_payloads and args.overload_factors:
            print("overload (vegeta past capacity) ...", flush=True)
            rep["overload_results"], beside = harness.overload(
                live,
                files,
                [s.spec.key for s in live if s.spec.kind in servers.COMPETITORS],
                [p for p in args.overload_payloads if harness.has_files(files, p)],
                args.overload_factors,
                args.overload_step,
                args.open_loop_pause,
                work,
                max(args.connections),
                args.duration,
            )
            # Capacity per payload, measured beside its steps (mean of before and after); the
            # competitors are offered multiples of their own (a fifth of ml-service's or less:
            # at ml-service's rates they would only show a queue).
            rep["capacity_beside"] = beside
            means = {k: {p: c["mean"] for p, c in v.items()} for k, v in beside.items()}
            rep["capacity"] = means.pop(primary)
            rep["own_capacity"] = means
        if args.cost_seconds > 0:
            print("server CPU per answer, served and refused ...", flush=True)
            rep["answer_cost"] = answer_costs(args, live, files, model_dir, work)
        if args.rss_requests > 0:
            print(f"RSS: {args.rss_requests:,} requests to {ml.spec.key} ...", flush=True)
            rep["rss_growth"] = harness.rss_growth(
                ml, files["ml-service", 1], args.rss_requests, args.rss_max_seconds
            )
        if args.profile_seconds > 0:
            print("profiling ml-service under load ...", flush=True)
            rep["profile"] = harness.profile(
                ml, files["ml-service", 1], args.profile_seconds, args.tools_dir, work
            )
        rep["servers"] = [
            {
                "key": s.spec.key,
                "kind": s.spec.kind,
                "env": {k: "***" if "SECRET" in k else v for k, v in s.spec.env.items()},
                "argv": list(s.spec.argv),
                "startup_s": round(s.startup_s, 2),
                "rss_at_ready": s.rss_at_ready,
                "rss_at_end": s.rss(),
                "requests_served": s.requests_sent,
            }
            for s in live
        ]
    print("in-process floor ...", flush=True)
    rep["floor"] = harness.model_floor(model_dir, sorted({1, *args.rows}), args.floor_seconds)
    rep["loadavg_at_end"] = harness.loadavg()
    rep["load"] = LOAD.summary()
    rep["results"] = results
    rep["aggregate"] = report.aggregate(results)
    others = [s.key for s in specs if s.kind != "ml-service"]
    rep["ratios"] = report.ratios(results, [primary, *variants], others)
    if args.open_loop_rates:
        rep["open_loop"] = report.open_loop_summary(
            rep["open_loop_results"], [s.key for s in specs], rep["params"]["open_loop"]
        )
    rep["microbatch"] = report.microbatch_summary(
        rep["aggregate"],
        primary,
        mb_variants,
        rep["params"]["ml_service_default_microbatch_wait_ms"],
    )
    logged = next((k for k in variants if k.startswith(LOG_VARIANT)), None)
    rep["payload_log"] = report.payload_log_summary(
        rep["aggregate"], primary, [k for k in (IDS_VARIANT, logged) if k in variants]
    )
    rep["goals"] = report.goals(rep)
    rep["versions"] = harness.versions(args.tools_dir, generators)

    for path in (args.out_json, args.out_md, args.out_png):
        path.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(rep, indent=1) + "\n")
    report.plot(rep, args.out_png)
    rel_png = os.path.relpath(args.out_png, args.out_md.parent)
    report.write_markdown(args.out_md, report.markdown(rep, rel_png))
    print(f"wrote {args.out_json}, {args.out_md}, {args.out_png}")
    for lim in rep.get("open_loop", {}).get("limits", []):
        print(
            f"  open loop: {lim['server']:<22} p99 < {args.slo_ms:g} ms up to "
            f"{lim['max_rate_under_slo'] or 'none'} req/s (in every ladder: "
            f"{lim['max_rate_under_slo_every_ladder'] or 'none'})"
        )
    for g in rep["goals"]:
        print(f"  {g['goal']}: {g['value'] or '-'} (target {g['target']}): {g['status']}")
    if LOAD.busy:
        print(
            f"WARNING: {len(LOAD.busy)} of {LOAD.count} measurements ran on a busy machine "
            f"(load average above {LOAD.threshold:g} or other processes on more than "
            f"{LOAD.cpu_threshold:g} cores; peaks {LOAD.peak} and {LOAD.peak_other_cpu} cores): "
            "do not publish these figures"
        )
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
