"""The benchmark harness runs end to end on a tiny load (structure and non-zero throughput only).

Timings are never asserted: the machine is shared and `make bench` reports ratios instead.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "benchmarks" / "run.py"
CONNECTIONS = (1, 4)
ROWS = (1, 100)


def _load_harness():
    sys.path.insert(0, str(RUN.parent))
    spec = importlib.util.spec_from_file_location("bench_run", RUN)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


harness = _load_harness()


@pytest.fixture(scope="module")
def smoke(local_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    if not shutil.which("wrk"):
        pytest.fail("wrk is not installed: run `make setup` (target setup-bench)")
    out = tmp_path_factory.mktemp("bench")
    argv = [
        sys.executable, str(RUN),
        "--model-dir", str(local_model_dir),
        "--servers", "ml-service,mlflow",
        "--microbatch-ms", "0",
        "--rows", ",".join(map(str, ROWS)),
        "--connections", ",".join(map(str, CONNECTIONS)),
        "--duration", "1", "--warmup", "0", "--rounds", "1",
        "--rss-requests", "300", "--profile-seconds", "0",
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
    }


SERVERS = ["ml-service", "ml-service mb=0ms", "mlflow"]


def test_every_server_started_and_was_measured(smoke):
    servers = {s["key"]: s for s in smoke["report"]["servers"]}
    assert list(servers) == SERVERS
    for s in servers.values():
        assert s["startup_s"] > 0
        assert s["rss_at_ready"]["main_mb"] > 0
        assert s["requests_served"] > 0
    # mlflow serve runs uvicorn in a child process: the whole session is counted
    assert servers["mlflow"]["rss_at_ready"]["processes"] >= 2


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("conns", CONNECTIONS)
def test_every_scenario_has_throughput_and_percentiles(smoke, rows, conns):
    agg = {(a["server"], a["rows"], a["connections"]): a for a in smoke["report"]["aggregate"]}
    for server in SERVERS:
        a = agg[server, rows, conns]
        assert a["requests"] > 0 and a["rps"] > 0, a
        assert a["errors"] == 0, a
        assert 0 < a["p50"] <= a["p95"] <= a["p99"], a


def test_ratios_are_paired_per_scenario(smoke):
    ratios = smoke["report"]["ratios"]
    got = {(r["ours"], r["theirs"], r["rows"], r["connections"]) for r in ratios}
    want = {(o, "mlflow", n, c) for o in SERVERS[:2] for n in ROWS for c in CONNECTIONS}
    assert got == want
    assert all(r["throughput_ratio"] > 0 and r["rounds"] == 1 for r in ratios)


def test_goals_memory_floor_and_versions_are_reported(smoke):
    report = smoke["report"]
    goals = {g["goal"]: g for g in report["goals"]}
    assert len(goals) == 6 + len(CONNECTIONS) - 1
    assert goals["1 row, c=4: throughput vs MLServer"]["status"] == "not measured"
    mlflow_goal = goals["1 row, c=4: throughput vs mlflow models serve"]
    assert mlflow_goal["status"] in {"met", "MISSED"}
    assert report["rss_growth"]["requests"] >= 300
    for n in ("1", "100"):
        for path in ("sklearn_predict_proba", "pyfunc_predict"):
            assert report["floor"][n][path]["calls"] > 0
            assert report["floor"][n][path]["median_ms"] > 0
    assert report["microbatch"]["recommendation"]
    assert report["machine"]["nproc"] >= 1 and report["machine"]["cpu_model"]
    assert report["versions"]["ml-service / mlflow serve env"]["mlflow"]
    assert report["versions"]["wrk"].startswith("wrk")


def test_markdown_and_plot_are_written(smoke):
    md = smoke["md"]
    assert md.startswith("# Benchmarks")
    assert harness.BEGIN in md and harness.END in md
    for heading in ("### Goals", "### Throughput and latency", "### Ratios", "### Start-up",
                    "### In-process floor", "### Micro-batching", "### Versions"):  # fmt: skip
        assert heading in md
    assert "](benchmarks.png)" in md
    import matplotlib.image

    image = matplotlib.image.imread(smoke["png"])
    assert image.shape[0] > 300 and image.shape[1] > 300


def test_markdown_regeneration_keeps_hand_written_text(tmp_path):
    doc = tmp_path / "b.md"
    doc.write_text(
        f"# Title\n\nintro\n\n{harness.BEGIN}\nold\n{harness.END}\n\n## Analysis\nmine\n"
    )
    harness.write_markdown(doc, "new table")
    text = doc.read_text()
    assert "intro" in text and "## Analysis\nmine" in text and "new table" in text
    assert "old" not in text


def test_ratios_pair_rounds_and_take_the_geometric_mean():
    def res(server, rnd, rps):
        return {"server": server, "rows": 1, "connections": 50, "round": rnd, "rps": rps,
                "latency_ms": {"p95": 1000 / rps}}  # fmt: skip

    results = [res("a", 1, 400), res("b", 1, 100), res("a", 2, 100), res("b", 2, 100)]
    [r] = harness.ratios(results, ["a"], ["b"])
    assert r["throughput_ratio"] == 2.0  # sqrt(4 * 1), not mean(400, 100) / 100 = 2.5
    assert r["rounds"] == 2


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


def test_unknown_server_is_rejected(capsys):
    with pytest.raises(SystemExit):
        harness.parse(["--servers", "ml-service,torchserve"])
    assert "--servers must include ml-service" in capsys.readouterr().err


def test_missing_competitor_env_names_the_make_target(tmp_path):
    spec = harness.ServerSpec("mlserver", "mlserver")
    with pytest.raises(harness.BenchError, match="make bench-envs"):
        harness.start(spec, tmp_path, tmp_path, tmp_path / "no-tools", timeout=5)
