"""The benchmark harness runs end to end on a tiny load (structure and non-zero throughput only).

Timings are never asserted: the machine is shared and `make bench` reports ratios instead.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support.poll import wait_until
from support.tools import tool

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the harness is the `benchmarks` package at the repository root

from benchmarks import BenchError, harness, report, run, servers  # noqa: E402

RUN = ROOT / "benchmarks" / "run.py"
CONNECTIONS = (1, 4)
ROWS = (1, 100)
RATES = (20, 100)
LADDERS = 2


@pytest.fixture(scope="module")
def smoke(local_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tool("wrk", "setup-bench")
    harness.find_vegeta()  # BenchError naming `make setup` when missing
    out = tmp_path_factory.mktemp("bench")
    argv = [
        sys.executable, str(RUN),
        "--model-dir", str(local_model_dir),
        "--servers", "ml-service,mlflow,http-floor",
        "--microbatch-ms", "0",
        "--rows", ",".join(map(str, ROWS)),
        "--connections", ",".join(map(str, CONNECTIONS)),
        "--duration", "1", "--warmup", "0", "--rounds", "2",
        "--open-loop-rates", ",".join(map(str, RATES)),
        "--open-loop-step", "0.5", "--open-loop-repetitions", str(LADDERS),
        "--open-loop-pause", "0",
        "--overload-payloads", "1,mix", "--overload-factors", "1.5", "--overload-step", "0.5",
        "--cost-seconds", "1",
        "--rss-requests", "300", "--profile-seconds", "0", "--floor-seconds", "0.3",
        "--work-dir", str(out / "work"),
        "--out-json", str(out / "report.json"),
        "--out-md", str(out / "benchmarks.md"),
        "--out-png", str(out / "benchmarks.png"),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        log, _ = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the harness stops its servers on SIGTERM
        log, _ = proc.communicate(timeout=60)
        pytest.fail(f"harness did not finish within 600 s:\n{log[-4000:]}")
    assert proc.returncode == 0, log[-6000:]
    return {
        "report": json.loads((out / "report.json").read_text()),
        "md": (out / "benchmarks.md").read_text(),
        "png": out / "benchmarks.png",
        "log": log,
        "work": out / "work",
    }


SERVERS = [
    "ml-service",
    "ml-service mb=0ms",
    "ml-service prediction-ids",
    "ml-service payload-log=1",
    "mlflow",
    "http-floor",
]
OURS = 4  # the ml-service variants come first


def test_every_server_started_and_was_measured(smoke):
    servers_ = {s["key"]: s for s in smoke["report"]["servers"]}
    assert list(servers_) == SERVERS
    for s in servers_.values():
        assert s["startup_s"] > 0
        assert s["rss_at_ready"]["main_mb"] > 0
        assert s["requests_served"] > 0
    # mlflow serve runs uvicorn in a child process: the whole session is counted
    assert servers_["mlflow"]["rss_at_ready"]["processes"] >= 2
    assert servers_["ml-service mb=0ms"]["env"] == {"MICROBATCH_WAIT_MS": "0"}
    assert servers_["mlflow"]["env"] == {"OMP_NUM_THREADS": "1"}
    logged = servers_["ml-service payload-log=1"]["env"]
    assert logged["PREDICTION_SIGNING_SECRET"] == "***"  # never the key in the report
    assert logged["PAYLOAD_LOG_SAMPLE"] == "1" and logged["PAYLOAD_LOG_URI"].endswith("payload-log")


def test_the_payload_log_variant_wrote_what_it_served(smoke):
    import gzip

    objects = list(Path(smoke["work"], "payload-log").rglob("*.jsonl.gz"))
    rows = sum(len(gzip.decompress(p.read_bytes()).splitlines()) for p in objects)
    assert objects and rows > 0
    pl = {(r["server"], r["connections"]): r for r in smoke["report"]["payload_log"]["rows"]}
    assert set(pl) == {(s, c) for s in SERVERS[2:OURS] for c in CONNECTIONS}
    assert all(r["rps_vs_off"] > 0 and r["p99_vs_off"] > 0 for r in pl.values())


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("conns", CONNECTIONS)
def test_every_scenario_has_throughput_and_percentiles(smoke, rows, conns):
    agg = {(a["server"], a["rows"], a["connections"]): a for a in smoke["report"]["aggregate"]}
    for server in SERVERS:
        a = agg[server, rows, conns]
        assert a["requests"] > 0 and a["rps"] > 0, a
        assert a["errors"] == 0, a
        assert 0 < a["p50"] <= a["p95"] <= a["p99"], a


def test_closed_loop_rounds_are_interleaved_and_rotated(smoke):
    results = smoke["report"]["results"]
    for rows in ROWS:
        for conns in CONNECTIONS:
            order = {
                rnd: [
                    r["server"]
                    for r in results
                    if (r["rows"], r["connections"], r["round"]) == (rows, conns, rnd)
                ]
                for rnd in (1, 2)
            }
            assert order[1] == SERVERS, order
            assert order[2] == SERVERS[1:] + SERVERS[:1], order


def test_open_loop_ladders_are_interleaved_and_summarised(smoke):
    rep = smoke["report"]
    results = rep["open_loop_results"]
    # every server at the first rate in every ladder, the order rotating per ladder
    for ladder in range(1, LADDERS + 1):
        first = [
            r["server"] for r in results if r["repetition"] == ladder and r["rate"] == RATES[0]
        ]
        assert sorted(first) == sorted(SERVERS), first
    firsts = [next(r["server"] for r in results if r["repetition"] == k) for k in (1, 2)]
    assert firsts[0] != firsts[1]
    for r in results:
        assert r["requests"] > 0 and r["sent_rate"] > 0, r
        assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p99"], r
        assert r["loadavg_start"] >= 0 and r["loadavg_end"] >= 0
        # goodput and the latency of the 200s alone, from vegeta's per-request results
        assert 0 <= r["goodput"] <= r["requests"] / 0.5 + 1, r
        assert 0 <= r["shed_share"] <= 1 and r["resets"] >= 0, r
        p99_ok = r["admitted_latency_ms"]["p99"]
        assert p99_ok is None or p99_ok <= r["latency_ms"]["max"] + 1e-3, r
    ml = [r for r in results if r["server"] == "ml-service" and not r["saturated"]]
    assert ml and all(r["goodput"] > 0 and r["shed_share"] == 0 for r in ml)
    steps = {(s["server"], s["rate"]): s for s in rep["open_loop"]["steps"]}
    for server in SERVERS:
        s = steps[server, RATES[0]]
        assert s["ladders"] == LADDERS, s
        if not s["saturated"]:
            assert s["p99_min"] <= s["p99_median"] <= s["p99_max"], s
    limits = {x["server"]: x for x in rep["open_loop"]["limits"]}
    assert set(limits) == set(SERVERS)
    for x in limits.values():
        assert x["max_rate_under_slo"] in (None, *RATES)
        every = x["max_rate_under_slo_every_ladder"]
        assert every is None or every <= x["max_rate_under_slo"]
    assert rep["versions"]["vegeta"] == "vegeta v12.13.0"


def test_overload_steps_offer_a_multiple_of_capacity_and_competitors_of_their_own(smoke):
    """Capacity measured beside each payload's steps, before and after; ml-service and the HTTP
    floor offered multiples of ml-service's capacity before, mlflow multiples of its own (at
    ml-service's rates it would only show a queue); goodput against the mean of the two."""
    rep = smoke["report"]
    beside = rep["capacity_beside"]
    assert set(beside) == {"ml-service", "mlflow"}
    for caps in beside.values():
        assert set(caps) == {"1", "mix"}
        for c in caps.values():
            assert c["before"] > 0 and c["after"] > 0, c
            assert c["mean"] == round((c["before"] + c["after"]) / 2, 1), c
    assert rep["capacity"] == {p: c["mean"] for p, c in beside["ml-service"].items()}
    assert rep["own_capacity"] == {"mlflow": {p: c["mean"] for p, c in beside["mlflow"].items()}}
    # a 100-row request costs more than a 1-row one, and every other request of the mix is one
    assert beside["ml-service"]["1"]["before"] > beside["ml-service"]["mix"]["before"]
    steps = rep["overload_results"]
    assert {(s["server"], s["payload"]) for s in steps} == {
        (server, payload) for server in SERVERS for payload in ("1", "mix")
    }
    for s in steps:
        own = beside["mlflow" if s["server"] == "mlflow" else "ml-service"][s["payload"]]
        assert s["factor"] == 1.5 and s["rate"] == max(1, round(1.5 * own["before"])), s
        assert s["capacity"] == own["mean"], s
        assert s["goodput_vs_capacity"] == round(s["goodput"] / own["mean"], 3), s
    assert 0 <= s["shed_share"] <= 1 and s["resets"] >= 0, s
    # both servers pinned, to different CPUs (the machine has two or more)
    assert rep["params"]["server_cpus"] and rep["params"]["client_cpus"]
    assert rep["params"]["server_cpus"] not in rep["params"]["client_cpus"].split(",")
    assert "### Overload: goodput at 1.5x, 2x and 4x capacity" in smoke["md"]
    assert "except the competitors: multiples of their own capacity" in smoke["md"]


def test_a_refusal_and_a_served_request_are_costed_in_server_cpu(smoke):
    cost = smoke["report"]["answer_cost"]
    runs = cost["runs"]
    for key in ("refused", "refused_100"):  # a limit of 1 at 50 connections
        assert runs[key]["refused"] > runs[key]["served"], runs[key]
    assert runs["served_1"]["refused"] == 0 and runs["served_100"]["refused"] == 0
    assert runs["floor"]["served"] > 0
    for key in ("served_1", "served_100", "floor"):
        assert cost["cpu_us"][key] > 0, cost
    assert "### Server CPU per answer" in smoke["md"]


def test_goodput_ceiling_follows_from_the_costs():
    cost = {"served_1": 300.0, "served_100": 1000.0, "refused": 30.0}
    # r = 0.1: (1 - 4 x 0.1) / 0.9
    assert report.goodput_ceiling(cost, "1", 4) == pytest.approx(0.6 / 0.9)
    assert report.goodput_ceiling(cost, "100", 2) == pytest.approx(0.94 / 0.97)
    assert report.goodput_ceiling(cost, "mix", 1) == 1.0
    assert report.goodput_ceiling(cost | {"refused": 300.0}, "1", 2) is None
    # a 100-row refusal measured apart: r = 0.05 at 100 rows; the mix's r = 40 / 650
    both = cost | {"refused_100": 50.0}
    assert report.goodput_ceiling(both, "100", 2) == pytest.approx(0.9 / 0.95)
    assert report.goodput_ceiling(both, "mix", 4) == pytest.approx((1 - 160 / 650) / (1 - 40 / 650))
    assert report.goodput_ceiling({"served_1": 300.0}, "1", 2) is None


def test_ratios_are_paired_per_scenario(smoke):
    ratios = smoke["report"]["ratios"]
    got = {(r["ours"], r["theirs"], r["rows"], r["connections"]) for r in ratios}
    want = {
        (o, t, n, c)
        for o in SERVERS[:OURS]
        for t in SERVERS[OURS:]
        for n in ROWS
        for c in CONNECTIONS
    }
    assert got == want
    assert all(r["throughput_ratio"] > 0 and r["rounds"] == 2 for r in ratios)


def test_goals_memory_floor_load_and_versions_are_reported(smoke):
    rep = smoke["report"]
    goals = {g["goal"]: g for g in rep["goals"]}
    c = max(CONNECTIONS)
    assert len(goals) == 13, list(goals)
    assert goals[f"1 row, c={c}: throughput vs MLServer"]["status"] == "not measured"
    for name in (
        f"1 row, c={c}: throughput vs mlflow models serve",
        f"1 row, c={c}: throughput vs HTTP floor (hello world, same uvicorn settings)",
        f"1 row, c={c}: ml-service p99",
        f"1 row, c={c}: p99 with the payload log on (ml-service payload-log=1) / off",
        "RSS at ready (main process)",
    ):
        assert goals[name]["status"] == "met" or goals[name]["status"].startswith("MISSED: "), (
            goals[name]
        )
    # the ladder stops at 100/s: the 3,000 req/s goal cannot be judged from it
    [ol] = [g for g in rep["goals"] if g["goal"].startswith("open loop, 1 row")]
    assert ol["status"] in {"not measured (the ladder stops at 100/s)"} or "MISSED" in ol["status"]
    lone = next(g for g in rep["goals"] if g["goal"].startswith("a lone request"))
    assert "p50" in lone["value"] and "MICROBATCH_WAIT_MS=0" in lone["goal"]
    assert rep["rss_growth"]["requests"] >= 300
    for n in ("1", "100", "256", "512"):  # the sizes run, and both sides of flat_trees.MAX_ROWS
        for path in ("sklearn_predict_proba", "flat_walk", "pyfunc_predict"):
            assert rep["floor"][n][path]["calls"] > 0
            assert rep["floor"][n][path]["median_ms"] > 0
    assert rep["microbatch"]["recommendation"]
    assert rep["machine"]["nproc"] >= 1 and rep["machine"]["cpu_model"]
    assert len(rep["machine"]["loadavg_at_start"]) == 3
    load = rep["load"]
    assert load["measurements"] >= len(rep["results"]) + len(rep["open_loop_results"])
    for r in rep["results"] + rep["open_loop_results"]:
        high = max(r["loadavg_start"], r["loadavg_end"]) > load["threshold"]
        assert r["busy"] == (high or r["other_cpu"] > load["cpu_threshold"]), r
    assert rep["versions"]["ml-service / mlflow serve env"]["mlflow"]
    assert rep["versions"]["wrk"].startswith("wrk")


def test_markdown_and_plot_are_written(smoke):
    md = smoke["md"]
    assert md.startswith("# Benchmarks")
    assert report.BEGIN in md and report.END in md
    for heading in ("### Goals", "### Latency against offered load", "### Throughput and latency",
                    "### Ratios", "### Start-up", "### In-process floor", "### Micro-batching",
                    "### Prediction IDs and the payload log", "### Versions"):  # fmt: skip
        assert heading in md
    assert "](benchmarks.png)" in md
    assert "HTTP floor (hello world, h11)" in md
    import matplotlib.image

    image = matplotlib.image.imread(smoke["png"])
    assert image.shape[0] > 600 and image.shape[1] > 600  # open loop and closed loop panels


def test_busy_machine_is_flagged_in_the_report():
    rep = {
        "load": {"threshold": 4.0, "cpu_threshold": 0.25, "peak": 11.5, "peak_other_cpu": 1.6,
                 "measurements": 10, "busy_measurements": [{"what": "x"}]},
        "machine": {"loadavg_at_start": [10.2, 9.0, 8.0]},
    }  # fmt: skip
    [warning, _] = report._busy_warning(rep)
    assert "do not publish" in warning and "1 of 10" in warning and "10.2" in warning
    assert "1.6 cores" in warning
    rep["load"]["busy_measurements"], rep["machine"]["loadavg_at_start"] = [], [0.5, 1, 1]
    assert report._busy_warning(rep) == []


@pytest.mark.parametrize(
    ("error", "lost"),
    [
        # vegeta's own texts, from a 100-row overload step whose pooled connections the server
        # closed after its keep-alive timeout while the client reused them
        (
            'Post "http://127.0.0.1:27182/predict": read tcp 127.0.0.1:43625->127.0.0.1:27182: '
            "read: connection reset by peer",
            True,
        ),
        (
            'Post "http://127.0.0.1:27182/predict": readfrom tcp 127.0.0.1:49953->127.0.0.1:27182: '
            "write tcp 127.0.0.1:49953->127.0.0.1:27182: write: broken pipe",
            True,
        ),
        (
            'Post "http://127.0.0.1:31917/predict": context deadline exceeded (Client.Timeout '
            "exceeded while awaiting headers)",
            False,
        ),
        (
            'Post "http://127.0.0.1:9/predict": dial tcp 127.0.0.1:9: connect: connection refused',
            False,
        ),
        ("503 Service Unavailable", False),
    ],
)
def test_a_connection_lost_under_a_request_counts_as_a_reset(error: str, lost: bool) -> None:
    assert harness.connection_lost(error) is lost


def test_load_log_counts_only_other_processes_cpu():
    log = harness.LoadLog(threshold=4.0, cpu_threshold=0.25)
    # 10 s in which the machine used 25 CPU-seconds, 20 of them the benchmark's own
    others = log.measure("a", harness.Probe(0, 2.5, 100, 50), harness.Probe(10, 3.0, 125, 70))
    assert others == {"loadavg_start": 2.5, "loadavg_end": 3.0, "other_cpu": 0.5, "busy": True}
    ours = log.measure("b", harness.Probe(0, 2.5, 100, 50), harness.Probe(10, 3.0, 121, 70))
    assert ours["other_cpu"] == 0.1 and not ours["busy"]
    loaded = log.measure("c", harness.Probe(0, 9.0, 0, 0), harness.Probe(10, 9.5, 1, 1))
    assert loaded["busy"]
    assert [b["what"] for b in log.busy] == ["a", "c"] and log.count == 3
    assert log.peak == 9.5 and log.peak_other_cpu == 0.5
    p = harness.probe()  # the real one reads /proc and getrusage
    assert p.busy_s > 0 and p.ours_s > 0 and p.load >= 0


def test_server_processes_include_workers_in_sessions_of_their_own():
    """BentoML's workers start their own sessions: counted by session alone, their CPU read as
    another process's (every BentoML measurement flagged busy) and their memory was missed."""
    code = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'], "
        "start_new_session=True); time.sleep(30)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        wait_until(lambda: len(servers.server_pids(proc.pid)) >= 2, 10, "two server pids", 0.1)
        pids = servers.server_pids(proc.pid)
        assert proc.pid in pids and len(pids) == 2, pids
        worker = next(p for p in pids if p != proc.pid)
        assert os.getsid(worker) == worker  # a session of its own
    finally:
        for pid in servers.server_pids(proc.pid):
            os.kill(pid, signal.SIGKILL)
        proc.wait()


def test_model_floor_with_a_zero_budget_still_times_every_call(local_model_dir):
    """`--floor-seconds 0` still times every call: a finished run never ends with `no median for
    empty data`."""
    floor = harness.model_floor(local_model_dir, [1, 100], 0)
    timings = [t for size in ("1", "100") for t in floor[size].values()]
    assert len(timings) == 6 and all(t["calls"] >= 1 and t["median_ms"] > 0 for t in timings)


def test_markdown_regeneration_keeps_hand_written_text(tmp_path):
    doc = tmp_path / "b.md"
    doc.write_text(f"# Title\n\nintro\n\n{report.BEGIN}\nold\n{report.END}\n\n## Analysis\nmine\n")
    report.write_markdown(doc, "new table")
    text = doc.read_text()
    assert "intro" in text and "## Analysis\nmine" in text and "new table" in text
    assert "old" not in text


def test_ratios_pair_rounds_and_take_the_geometric_mean():
    def res(server, rnd, rps):
        return {"server": server, "rows": 1, "connections": 50, "round": rnd, "rps": rps,
                "latency_ms": {"p95": 1000 / rps}}  # fmt: skip

    results = [res("a", 1, 400), res("b", 1, 100), res("a", 2, 100), res("b", 2, 100)]
    [r] = report.ratios(results, ["a"], ["b"])
    assert r["throughput_ratio"] == 2.0  # sqrt(4 * 1), not mean(400, 100) / 100 = 2.5
    assert r["rounds"] == 2


def test_open_loop_limit_is_the_highest_rate_under_the_slo_at_and_below_it():
    def step(server, rep, rate, p99, saturated=False):
        return {"server": server, "repetition": rep, "rate": rate, "throughput": rate,
                "saturated": saturated, "lagged": False, "busy": False,
                "latency_ms": {"p50": p99 / 2, "p99": p99}}  # fmt: skip

    results = [
        # ladder 1: a noise spike at 200/s; ladder 2 and 3 clean up to 400, saturated at 800
        step("a", 1, 100, 10), step("a", 1, 200, 900), step("a", 1, 400, 30),
        step("a", 1, 800, 3000, saturated=True),
        step("a", 2, 100, 12), step("a", 2, 200, 20), step("a", 2, 400, 40),
        step("a", 2, 800, 2500, saturated=True),
        step("a", 3, 100, 11), step("a", 3, 200, 25), step("a", 3, 400, 45),
        step("a", 3, 800, 70),
        # b saturates at 200/s in every ladder: 400 and 800 were never sent
        *[step("b", k, 100, 45) for k in (1, 2, 3)],
        *[step("b", k, 200, 5000, saturated=True) for k in (1, 2, 3)],
    ]  # fmt: skip
    params = {"rates": [100, 200, 400, 800], "repetitions": 3, "slo_ms": 50}
    summary = report.open_loop_summary(results, ["a", "b"], params)
    limits = {x["server"]: x for x in summary["limits"]}
    assert limits["a"]["max_rate_under_slo"] == 400  # median p99 at 200/s is 25 ms
    assert limits["a"]["max_rate_under_slo_every_ladder"] == 100  # ladder 1 broke at 200/s
    assert limits["a"]["saturated_from"] == 800
    assert limits["b"]["max_rate_under_slo"] == 100
    assert limits["b"]["saturated_from"] == 200
    steps = {(s["server"], s["rate"]): s for s in summary["steps"]}
    assert steps["a", 200]["p99_median"] == 25 and steps["a", 200]["p99_max"] == 900
    assert steps["a", 800]["p99_median"] is None  # 2 of 3 ladders saturated: no median
    assert steps["b", 200] == steps["b", 200] | {"ladders": 3, "saturated": 3, "p99_median": None}
    assert ("b", 400) not in steps  # left every ladder after 200/s: no more rows


def test_overload_steps_report_goodput_against_capacity():
    def step(rep, rate, goodput, shed, p99_ok, saturated):
        return {"server": "a", "repetition": rep, "rate": rate, "throughput": rate,
                "saturated": saturated, "lagged": False, "busy": False,
                "latency_ms": {"p50": 1.0, "p99": 5.0 if not saturated else 3000},
                "goodput": goodput, "shed_share": shed, "resets": 0,
                "admitted_latency_ms": {"p50": 1.0, "p99": p99_ok}}  # fmt: skip

    results = [
        x
        for k in (1, 2)
        for x in (
            step(k, 100, 100, 0.0, 5.0, False),
            step(k, 200, 200, 0.0, 6.0, False),
            step(k, 400, 190, 0.5, 8.0, True),
            step(k, 800, 180, 0.75, 9.0, True),
        )
    ]
    params = {"rates": [100, 200, 400, 800], "repetitions": 2, "slo_ms": 50}
    summary = report.open_loop_summary(results, ["a"], params)
    over = {o["rate"]: o for o in summary["overload"]}
    assert set(over) == {400, 800}  # the steps past capacity (200/s), not skipped
    assert over[800]["load_factor"] == 4 and over[800]["capacity"] == 200
    assert over[800]["goodput_vs_capacity"] == 0.9
    assert over[400]["shed_share"] == 0.5 and over[400]["admitted_p99"] == 8.0
    md = "\n".join(report._overload_md(summary["overload"]))
    assert "| 800 (4x) | 180 | 90% | 75% | 9.0 | 0 |" in md


def test_goals_say_by_how_much_they_are_missed():
    assert (
        report._goal("x", 3.52, 4, True, "x")["status"] == "MISSED: 0.48x short (12% of the target)"
    )
    assert (
        report._goal("x", 36, 30, False, " ms")["status"] == "MISSED: 6 ms over (20% of the target)"
    )
    assert report._goal("x", 0.27, 0.45, True, "%")["status"] == (
        "MISSED: 18 points short (40% of the target)"
    )
    assert report._goal("x", 0.5, 0.45, True, "%")["status"] == "met"
    assert report._goal("x", None, 3, True)["status"] == "not measured"


def test_profile_summary_ranks_frames(tmp_path):
    raw = tmp_path / "p.txt"
    raw.write_text(
        "run (/x/lib/python3.11/threading.py:1);predict (/x/site-packages/sk/p.py:9) 30\n"
        "run (/x/lib/python3.11/threading.py:1);select (/x/lib/python3.11/selectors.py:4) 10\n"
    )
    summary = harness.summarise_profile(raw)
    assert summary["samples"] == 40
    assert summary["inclusive"][0] == {"frame": "run (threading.py)", "share": 1.0}
    assert summary["self"][0] == {"frame": "predict (sk/p.py)", "share": 0.75}
    assert summary["components"] == [
        {"frame": "other", "share": 0.75},
        {"frame": "event loop, sockets (asyncio)", "share": 0.25},
    ]


@pytest.mark.parametrize(
    ("text", "key", "kind", "env", "argv"),
    [
        ("ml-service", "ml-service", "ml-service", {}, ()),
        ("ml-service[MICROBATCH_WAIT_MS=0]", "ml-service[MICROBATCH_WAIT_MS=0]", "ml-service",
         {"MICROBATCH_WAIT_MS": "0"}, ()),
        ("nomb=ml-service[MICROBATCH_WAIT_MS=0, NUMERIC_THREADS=1]", "nomb", "ml-service",
         {"MICROBATCH_WAIT_MS": "0", "NUMERIC_THREADS": "1"}, ()),
        ("g=ml-service[X=a=b] -- {bin}/granian --port {port} 'a b'", "g", "ml-service",
         {"X": "a=b"}, ("{bin}/granian", "--port", "{port}", "a b")),
        ("http-floor[HELLO_HTTP=httptools]", "http-floor[HELLO_HTTP=httptools]", "http-floor",
         {"HELLO_HTTP": "httptools"}, ()),
    ],
)  # fmt: skip
def test_server_specs_parse(text, key, kind, env, argv):
    assert servers.parse_spec(text) == servers.ServerSpec(key, kind, env, argv)


@pytest.mark.parametrize(
    ("spec", "message"),
    [("torchserve", "unknown kind 'torchserve'"), ("ml-service[lower=1]", "is not NAME=VALUE"),
     ("ml-service[X]", "is not NAME=VALUE"), ("ml-service[X=1", "expected")],
)  # fmt: skip
def test_bad_server_specs_are_rejected(spec, message):
    with pytest.raises(ValueError, match=message):
        servers.parse_spec(spec)


def test_server_list_keeps_commas_inside_brackets():
    got = servers.split_specs("ml-service,a=ml-service[A=1,B=2], mlflow")
    assert got == ["ml-service", "a=ml-service[A=1,B=2]", "mlflow"]


def test_variant_command_gets_the_kind_env_and_placeholders(tmp_path):
    spec = servers.parse_spec("v=ml-service[MICROBATCH_WAIT_MS=0] -- {python} -m x --port {port}")
    launch = servers.command(spec, tmp_path / "model", 4321, tmp_path, tmp_path)
    assert launch.argv == [sys.executable, "-m", "x", "--port", "4321"]
    assert launch.env["MODEL_URI"] == str(tmp_path / "model") and launch.env["PORT"] == "4321"
    assert launch.env["MICROBATCH_WAIT_MS"] == "0"
    assert (launch.ready_path, launch.predict_path) == ("/ready", "/predict")


def test_run_orders_servers_and_applies_quick_presets():
    args = run.parse(["--quick", "--servers", "mlflow,ml-service,ml-service[A=1]", "--rounds", "3"])
    assert [s.key for s in args.specs] == [
        "ml-service", "ml-service mb=0ms", "ml-service prediction-ids",
        "ml-service payload-log=1", "ml-service[A=1]", "mlflow",
    ]  # fmt: skip
    bare = run.parse(["--servers", "ml-service", "--microbatch-ms", "", "--payload-log-sample", ""])
    assert [s.key for s in bare.specs] == ["ml-service"]
    assert args.specs[-1].env == {"OMP_NUM_THREADS": "1"}
    assert args.rounds == 3  # an explicit flag wins over the preset
    assert args.duration == run.PRESETS["quick"]["duration"]
    assert run.parse([]).duration == run.PRESETS["full"]["duration"]


def test_unknown_server_is_rejected(capsys):
    with pytest.raises(SystemExit):
        run.parse(["--servers", "ml-service,torchserve"])
    assert "unknown kind 'torchserve'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run.parse(["--servers", "mlflow"])
    assert "must include ml-service" in capsys.readouterr().err


def test_missing_competitor_env_names_the_make_target(tmp_path):
    spec = servers.ServerSpec("mlserver", "mlserver")
    with pytest.raises(BenchError, match="make bench-envs"):
        servers.start(spec, tmp_path, tmp_path, tmp_path / "no-tools", timeout=5)


def test_the_attack_figures_script_runs(local_model_dir: Path, tmp_path: Path) -> None:
    """benchmarks/attacks.py (docs/benchmarks.md, "Attacks") on two short attacks: one JSON
    object per attack, with the probe and memory figures, and the server alive after it."""
    argv = [
        sys.executable, str(ROOT / "benchmarks" / "attacks.py"),
        "--model-dir", str(local_model_dir), "--work", str(tmp_path),
        "--attacks", "pipeline,wide-csv-row", "--seconds", "1",
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert "load_average" in lines[0]
    figures = {line["attack"]: line for line in lines[1:]}
    assert set(figures) == {"pipeline", "wide-csv-row"}
    for attack in figures.values():
        assert attack["alive"] and attack["probes"]["probes"] > 0, attack
        assert attack["rss"]["idle_mb"] > 0
    assert figures["wide-csv-row"]["10000_fields"]["status"] == "HTTP/1.1 400"
