"""From raw results to figures: aggregates, ratios, goals, the plot and docs/benchmarks.md."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from .harness import OVERLOAD_FACTOR
from .servers import label

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
INF = math.inf


# ---------------------------------------------------------------- closed loop


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


# ---------------------------------------------------------------- open loop


def _step_values(results: list[dict], server: str, rate: int, reps: int) -> list[dict]:
    """One entry per ladder repetition; a step skipped because the server had saturated at a
    lower rate of the same ladder counts as saturated (p50/p99 infinite)."""
    out = []
    for rep in range(1, reps + 1):
        mine = [r for r in results if r["server"] == server and r["repetition"] == rep]
        step = next((r for r in mine if r["rate"] == rate), None)
        if step is not None:
            sat = step["saturated"]
            out.append(
                {
                    "p50": step["latency_ms"]["p50"],
                    "p99": INF if sat else step["latency_ms"]["p99"],
                    "p99_seen": step["latency_ms"]["p99"],
                    "throughput": step["throughput"],
                    "saturated": sat,
                    "lagged": step["lagged"],
                    "busy": step["busy"],
                    "skipped": False,
                    "goodput": step.get("goodput", step["throughput"]),
                    "shed_share": step.get("shed_share", 0.0),
                    "admitted_p99": (step.get("admitted_latency_ms") or {}).get("p99"),
                    "resets": step.get("resets", 0),
                }
            )
        elif any(r["saturated"] and r["rate"] < rate for r in mine):
            out.append(
                {
                    "p50": INF,
                    "p99": INF,
                    "p99_seen": INF,
                    "throughput": 0.0,
                    "saturated": True,
                    "lagged": False,
                    "busy": False,
                    "skipped": True,
                    "goodput": 0.0,
                    "shed_share": 0.0,
                    "admitted_p99": None,
                    "resets": 0,
                }
            )
    return out


def _fmt_ms(v: float | None) -> str:
    """Milliseconds; None (a saturated median, or a skipped step) reads "sat."."""
    return "sat." if v is None or v == INF else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def open_loop_summary(results: list[dict], servers: list[str], params: dict) -> dict:
    """Per server and rate: median and spread over the repeated ladders; per server the highest
    rate whose p99 stays under the SLO at that rate and every lower one (median of the ladders,
    and in every ladder)."""
    rates, reps, slo = params["rates"], params["repetitions"], params["slo_ms"]
    steps, limits = [], []
    for server in servers:
        ok_median = ok_every = None
        broken_median = broken_every = False
        for rate in rates:
            vals = _step_values(results, server, rate, reps)
            if not vals:
                broken_median = broken_every = True
                continue
            if all(v["skipped"] for v in vals):
                break  # it left every ladder below this rate: nothing more was measured
            p99s = [v["p99"] for v in vals]
            med = statistics.median(p99s)
            steps.append(
                {
                    "server": server,
                    "rate": rate,
                    "ladders": len(vals),
                    "saturated": sum(v["saturated"] for v in vals),
                    "lagged": sum(v["lagged"] for v in vals),
                    "busy": sum(v["busy"] for v in vals),
                    "p50_median": statistics.median(v["p50"] for v in vals),
                    "p50_min": min(v["p50"] for v in vals),
                    "p50_max": max(v["p50"] for v in vals),
                    "p99_median": med,
                    "p99_min": min(v["p99_seen"] for v in vals),
                    "p99_max": max(v["p99_seen"] for v in vals),
                    "throughput_median": statistics.median(v["throughput"] for v in vals),
                    "goodput_median": statistics.median(v["goodput"] for v in vals),
                    "shed_share_median": statistics.median(v["shed_share"] for v in vals),
                    "admitted_p99_median": _median_or_none(v["admitted_p99"] for v in vals),
                    "resets": sum(v["resets"] for v in vals),
                }
            )
            broken_median = broken_median or not med < slo
            broken_every = broken_every or not all(p < slo for p in p99s)
            ok_median = ok_median if broken_median else rate
            ok_every = ok_every if broken_every else rate
        mine = [s for s in steps if s["server"] == server]
        limits.append(
            {
                "server": server,
                "max_rate_under_slo": ok_median,
                "max_rate_under_slo_every_ladder": ok_every,
                # never saturated nor over the SLO: the ladder ended before the server did
                "ladder_top_reached": ok_median == rates[-1],
                "saturated_from": next(
                    (s["rate"] for s in mine if s["saturated"] * 2 > s["ladders"]), None
                ),
            }
        )
    finite = _finite(steps)
    return {"steps": finite, "limits": limits, "overload": overload_summary(finite)}


def _median_or_none(values) -> float | None:  # type: ignore[no-untyped-def]
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def overload_summary(steps: list[dict]) -> list[dict]:
    """Per server, its capacity (the highest rate it kept up with in most ladders, and the
    goodput there) and every step beyond it: goodput against capacity, the share refused with
    503, the p99 of the answered requests, connection resets."""
    out = []
    for server in dict.fromkeys(s["server"] for s in steps):
        mine = [s for s in steps if s["server"] == server]
        kept = [s for s in mine if s["saturated"] * 2 <= s["ladders"]]
        if not kept:
            continue
        cap = max(kept, key=lambda s: s["rate"])
        for s in mine:
            if s["rate"] <= cap["rate"]:
                continue
            out.append(
                {
                    "server": server,
                    "capacity": cap["rate"],
                    "capacity_goodput": cap["goodput_median"],
                    "capacity_p99": cap["p99_median"],
                    "rate": s["rate"],
                    "load_factor": round(s["rate"] / cap["rate"], 2),
                    "goodput": s["goodput_median"],
                    "goodput_vs_capacity": round(
                        s["goodput_median"] / max(cap["goodput_median"], 1e-9), 3
                    ),
                    "shed_share": s["shed_share_median"],
                    "admitted_p99": s["admitted_p99_median"],
                    "resets": s["resets"],
                    "lagged": s["lagged"],
                }
            )
    return out


def _finite(rows: list[dict]) -> list[dict]:
    """JSON has no infinity: saturated medians become null."""
    return [{k: (None if v == INF else v) for k, v in r.items()} for r in rows]


# ---------------------------------------------------------------- goals


def _goal(name: str, value, target: float | None, at_least: bool, unit: str = "", note="") -> dict:
    """A goal row; when missed, by how much (absolute and relative to the target)."""
    cmp = ">=" if at_least else "<"
    shown = (lambda v: f"{v * 100:.0f} %") if unit == "%" else (lambda v: f"{v:g}{unit}")
    row = {"goal": name, "target": f"{cmp} {shown(target)}", "value": None, "status": note}
    if value is None:
        row["status"] = note or "not measured"
        return row
    row["value"] = shown(value)
    met = value >= target if at_least else value < target
    if met:
        row["status"] = "met"
    else:
        gap = abs(target - value)
        rel = gap / target if target else 0.0
        amount = f"{gap * 100:.0f} points" if unit == "%" else shown(round(gap, 2))
        side = "short" if at_least else "over"
        row["status"] = f"MISSED: {amount} {side} ({rel:.0%} of the target)"
    return row


def goals(report: dict) -> list[dict]:
    primary, params = report["primary"], report["params"]
    agg = {(a["server"], a["rows"], a["connections"]): a for a in report["aggregate"]}
    rat = {
        (r["theirs"], r["rows"], r["connections"]): r["throughput_ratio"]
        for r in report["ratios"]
        if r["ours"] == primary
    }
    conns = params["connections"]
    c_lo, c_hi = min(conns), max(conns)
    floor_key = next((s["key"] for s in report["servers"] if s["kind"] == "http-floor"), None)
    out = [
        _goal(
            f"1 row, c={c_hi}: throughput vs HTTP floor (hello world, same uvicorn settings)",
            rat.get((floor_key, 1, c_hi)),
            0.45,
            True,
            "%",
        ),
        _goal(
            f"1 row, c={c_hi}: throughput vs mlflow models serve",
            rat.get(("mlflow", 1, c_hi)),
            5,
            True,
            "x",
        ),
        _goal(
            f"1 row, c={c_hi}: throughput vs MLServer", rat.get(("mlserver", 1, c_hi)), 2, True, "x"
        ),
        _goal(
            f"1 row, c={c_hi}: ml-service p99",
            agg.get((primary, 1, c_hi), {}).get("p99"),
            30,
            False,
            " ms",
        ),
    ]
    ol = report.get("open_loop")
    if ol:
        slo, top = params["open_loop"]["slo_ms"], params["open_loop"]["rates"][-1]
        lim = {x["server"]: x for x in ol["limits"]}
        ours, theirs = lim.get(primary, {}), lim.get("mlflow")
        r_ours = ours.get("max_rate_under_slo")
        if ours and r_ours is None:
            r_ours = 0  # over the SLO at the lowest rate already
        note = ""
        if ours.get("ladder_top_reached") and top < 3000:
            r_ours, note = None, f"not measured (the ladder stops at {top}/s)"
        out.append(
            _goal(
                f"open loop, 1 row: p99 < {slo:g} ms at every rate up to",
                r_ours,
                3000,
                True,
                " req/s",
                note,
            )
        )
        ratio, note = None, ""
        if theirs and r_ours:
            if theirs["max_rate_under_slo"]:
                ratio = round(r_ours / theirs["max_rate_under_slo"], 1)
            else:
                note = f"not measured (mlflow over {slo:g} ms at the lowest rate: add lower rates)"
        out.append(
            _goal(
                f"open loop: highest rate with p99 < {slo:g} ms vs mlflow models serve",
                ratio,
                60,
                True,
                "x",
                note,
            )
        )
    for c in conns:
        target = 4 if c == c_lo else 3
        out.append(
            _goal(
                f"100 rows, c={c}: throughput vs mlflow models serve",
                rat.get(("mlflow", 100, c)),
                target,
                True,
                "x",
            )
        )
    me = next((s for s in report["servers"] if s["key"] == primary), {})
    out.append(
        _goal(
            "RSS at ready (main process)",
            me.get("rss_at_ready", {}).get("main_mb"),
            250,
            False,
            " MB",
        )
    )
    rss = report.get("rss_growth") or {}
    out.append(
        _goal(
            f"RSS growth over {rss.get('requests', 0):,} requests",
            rss.get("growth_mb"),
            5,
            False,
            " MB",
        )
    )
    out.append(_goal("start to /ready, model on local disk", me.get("startup_s"), 3, False, " s"))
    off = next(
        (
            s["key"]
            for s in report["servers"]
            if s["kind"] == "ml-service"
            and not s.get("argv")
            and s["env"].get("MICROBATCH_WAIT_MS") in ("0", "0.0")
        ),
        None,
    )
    a, b = agg.get((primary, 1, c_lo)), agg.get((off, 1, c_lo))
    lone = round(a["p50"] / max(b["p50"], 1e-3), 2) if a and b else None
    pl = report.get("payload_log") or {}
    logged = [
        r for r in pl.get("rows", []) if "payload-log" in r["server"] and r["connections"] == c_hi
    ]
    if logged:
        out.append(
            _goal(
                f"1 row, c={c_hi}: p99 with the payload log on ({logged[0]['server']}) / off",
                logged[0]["p99_vs_off"],
                1.10,
                False,
                "x",
            )
        )
    row = _goal(
        f"a lone request never pays for micro-batching: 1 row, c={c_lo}, p50 default / "
        "MICROBATCH_WAIT_MS=0",
        lone,
        1.1,
        False,
        "x",
    )
    if a and b:
        row["value"] += f" (p50 {a['p50']} vs {b['p50']} ms, p99 {a['p99']} vs {b['p99']} ms)"
    out.append(row)
    return out


# ---------------------------------------------------------------- micro-batching


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
        if (v, 1, hi) not in by or (v, 1, lo) not in by:
            continue
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


# ---------------------------------------------------------------- prediction IDs, payload log


def payload_log_summary(agg: list[dict], off: str, variants: list[str]) -> dict | None:
    """Each variant's 1-row figures against the default in the same run (prediction IDs and
    the payload log are off by default)."""
    if not variants:
        return None
    by = {(a["server"], a["rows"], a["connections"]): a for a in agg}
    rows = []
    for key in variants:
        for c in sorted({a["connections"] for a in agg}):
            a, base = by.get((key, 1, c)), by.get((off, 1, c))
            if a and base:
                rows.append(
                    {
                        "server": key,
                        "connections": c,
                        "rps": a["rps"],
                        "p50": a["p50"],
                        "p99": a["p99"],
                        "rps_vs_off": round(a["rps"] / base["rps"], 3),
                        "p99_vs_off": round(a["p99"] / max(base["p99"], 1e-3), 3),
                    }
                )
    return {"off": off, "rows": rows}


# ---------------------------------------------------------------- plot


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    servers = [s["key"] for s in report["servers"]]
    colors = {s: f"C{i}" for i, s in enumerate(servers)}
    ol = report.get("open_loop")
    rows = 3 if ol else 1
    fig, axes = plt.subplots(
        rows, 2, figsize=(13, 5 * rows), constrained_layout=True, squeeze=False
    )
    if ol:
        slo = report["params"]["open_loop"]["slo_ms"]
        for ax, p in zip(axes[0], ("p99", "p50"), strict=True):
            for s in servers:
                st = [x for x in ol["steps"] if x["server"] == s]
                if not st:
                    continue
                ok = [x for x in st if x[f"{p}_median"] is not None]
                ax.plot(
                    [x["rate"] for x in ok],
                    [x[f"{p}_median"] for x in ok],
                    "o-",
                    color=colors[s],
                    label=label(s),
                    markersize=4,
                )
                spread = [x for x in ok if x[f"{p}_max"] is not None]
                ax.fill_between(
                    [x["rate"] for x in spread],
                    [x[f"{p}_min"] for x in spread],
                    [x[f"{p}_max"] for x in spread],
                    color=colors[s],
                    alpha=0.15,
                )
                sat = [x for x in st if x["saturated"] and x[f"{p}_max"] is not None]
                ax.plot(
                    [x["rate"] for x in sat],
                    [x[f"{p}_max"] for x in sat],
                    "x",
                    color=colors[s],
                    markersize=8,
                )
            if p == "p99":
                ax.axhline(slo, color="grey", linestyle="--", linewidth=1, label=f"{slo:g} ms")
            ax.set_xscale("log")
            ax.set_yscale("log")
            rates = report["params"]["open_loop"]["rates"]
            ax.set_xticks(rates, [f"{r:,}" for r in rates], rotation=45, fontsize=7)
            ax.minorticks_off()
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.set_xlabel("offered rate (req/s, constant, 1-row requests)")
            ax.set_ylabel(f"{p} latency (ms)")
            ax.set_title(
                f"open loop: {p} vs offered rate (median of ladders, band = min-max, "
                "x = saturated)",
                fontsize=9,
            )
            ax.grid(which="both", alpha=0.3)
        axes[0][0].legend(fontsize=8)
        _plot_goodput(axes[1], ol["steps"], servers, colors, label)
    agg = report["aggregate"]
    scen = sorted({(a["rows"], a["connections"]) for a in agg})
    width = 0.8 / max(1, len(servers))
    bars = axes[-1]
    for i, s in enumerate(servers):
        vals = {(a["rows"], a["connections"]): a for a in agg if a["server"] == s}
        xs = [j + i * width for j in range(len(scen))]
        for ax, key in zip(bars, ("rps", "p95"), strict=True):
            ax.bar(
                xs,
                [vals.get(k, {}).get(key, 0) for k in scen],
                width,
                label=label(s),
                color=colors[s],
            )
    ticks = [j + width * (len(servers) - 1) / 2 for j in range(len(scen))]
    titles = (
        "closed loop: throughput (req/s, log scale, higher is better)",
        "closed loop: p95 latency (ms, log scale, lower is better)",
    )
    for ax, title in zip(bars, titles, strict=True):
        ax.set_xticks(ticks, [f"{n} row{'s' * (n > 1)}, c={c}" for n, c in scen], fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in bars:  # log: the HTTP floor and mlflow serve are two orders of magnitude apart
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    if not ol:
        bars[0].legend(fontsize=8, ncols=min(3, len(servers)))
    m, p = report["machine"], report["params"]
    fig.suptitle(
        f"{m['nproc']} cores ({m['cpu_model']}), load average {m['loadavg_at_start'][0]} at start, "
        f"{report['date']}; closed loop {p['duration_s']} s x {p['rounds']} rounds"
        + (
            f"; open loop {p['open_loop']['step_s']} s per step x {p['open_loop']['repetitions']} "
            "ladders"
            if ol
            else ""
        ),
        fontsize=9,
    )
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- markdown


def _plot_goodput(axes, steps, servers, colors, name) -> None:  # type: ignore[no-untyped-def]
    """Goodput (200s per second) and the 200s' p99 against offered load, past saturation."""
    for s in servers:
        st = [x for x in steps if x["server"] == s]
        if not st:
            continue
        rates = [x["rate"] for x in st]
        axes[0].plot(rates, [x["goodput_median"] for x in st], "o-", color=colors[s], label=name(s))
        p99 = [x for x in st if x["admitted_p99_median"] is not None]
        axes[1].plot(
            [x["rate"] for x in p99],
            [x["admitted_p99_median"] for x in p99],
            "o-",
            color=colors[s],
            label=name(s),
        )
    top = max((x["rate"] for x in steps), default=1)
    axes[0].plot([0, top], [0, top], color="grey", linestyle=":", linewidth=1, label="offered")
    axes[0].set_title("open loop: goodput (200s/s) vs offered rate (median of ladders)", fontsize=9)
    axes[0].set_ylabel("goodput (req/s answered 200)")
    axes[1].set_yscale("log")
    axes[1].set_title("open loop: p99 of the 200 answers only (ms)", fontsize=9)
    axes[1].set_ylabel("p99 of 200s (ms)")
    for ax in axes:
        ax.set_xlabel("offered rate (req/s, constant, 1-row requests)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _busy_warning(report: dict) -> list[str]:
    load = report["load"]
    busy, total = len(load["busy_measurements"]), load["measurements"]
    start = report["machine"]["loadavg_at_start"][0]
    if not busy and start <= load["threshold"] / 2:
        return []
    return [
        f"> **Busy machine: do not publish these figures.** The 1-minute load average was "
        f"{start} before the benchmark started anything; {busy} of {total} measurements ran with "
        f"a load average above {load['threshold']:g} or while other processes used more than "
        f"{load['cpu_threshold']:g} cores (peaks: load {load['peak']}, "
        f"{load['peak_other_cpu']} cores).",
        "",
    ]


def _open_loop_md(report: dict) -> list[str]:
    ol, p = report["open_loop"], report["params"]["open_loop"]
    slo = p["slo_ms"]

    def limit(x: dict) -> str:
        r = x["max_rate_under_slo"]
        if r is None:
            return f"none (over at {p['rates'][0]}/s)"
        return f"{r:,}" + (
            " (the ladder's top: no limit reached)" if x["ladder_top_reached"] else ""
        )

    rows = []
    for s in ol["steps"]:
        rows.append(
            [
                label(s["server"]),
                f"{s['rate']:,}",
                f"{_fmt_ms(s['p50_median'])} ({_fmt_ms(s['p50_min'])}-{_fmt_ms(s['p50_max'])})",
                f"{_fmt_ms(s['p99_median'])} ({_fmt_ms(s['p99_min'])}-{_fmt_ms(s['p99_max'])})",
                f"{s['throughput_median']:,.0f}",
                f"{s['saturated']}/{s['ladders']}"
                + (f", generator lagged {s['lagged']}" if s["lagged"] else ""),
            ]
        )
    return [
        f"### Latency against offered load (open loop, 1 row, {p['repetitions']} ladders)",
        "",
        f"vegeta at a constant rate, {p['step_s']:g} s per step; at every rate the servers run one "
        "after the other (the order rotates per ladder). A step is saturated under 99 % success, "
        "under 80 % of the offered rate completed, or with p99 over 2 s; past its first saturated "
        f"step a server stays on the ladder up to {OVERLOAD_FACTOR:g}x its capacity in that ladder "
        "(the highest rate it kept up with), then leaves it: later steps count as saturated.",
        "",
        table(
            [
                "server",
                f"highest rate with p99 < {slo:g} ms there and below (median of ladders)",
                "(in every ladder)",
            ],
            [
                [
                    label(x["server"]),
                    limit(x),
                    f"{x['max_rate_under_slo_every_ladder']:,}"
                    if x["max_rate_under_slo_every_ladder"]
                    else "none",
                ]
                for x in ol["limits"]
            ],
        ),
        "",
        table(
            [
                "server",
                "offered req/s",
                "p50 ms median (min-max)",
                "p99 ms median (min-max)",
                "completed req/s (median)",
                "saturated ladders",
            ],
            rows,
        ),
        "",
        *_overload_md(ol.get("overload") or []),
    ]


def _overload_md(over: list[dict]) -> list[str]:
    if not over:
        return []
    rows = [
        [
            label(o["server"]),
            f"{o['capacity']:,} ({o['capacity_goodput']:,.0f} ok/s, p99 "
            f"{_fmt_ms(o['capacity_p99'])} ms)",
            f"{o['rate']:,} ({o['load_factor']:g}x)",
            f"{o['goodput']:,.0f}",
            f"{o['goodput_vs_capacity']:.0%}",
            f"{o['shed_share']:.0%}",
            _fmt_ms(o["admitted_p99"]),
            f"{o['resets']:,}" + (" (generator lagged)" if o["lagged"] else ""),
        ]
        for o in over
    ]
    return [
        "### Past saturation: goodput under overload (open loop, 1 row)",
        "",
        "Goodput is the 200 answers per second; capacity is the highest rate a server kept up "
        "with in most ladders. Under overload a server should keep serving its capacity, refuse "
        "the rest quickly (503), keep its served requests' p99 near the one at capacity, and "
        "reset no connection.",
        "",
        table(
            [
                "server",
                "capacity req/s",
                "offered req/s",
                "goodput (median)",
                "goodput / capacity's",
                "refused (503)",
                "200s p99 ms",
                "connection resets",
            ],
            rows,
        ),
        "",
    ]


def goodput_ceiling(cost_us: dict, payload: str, factor: float) -> float | None:
    """The most goodput, as a share of capacity, one server CPU allows when offered `factor`
    times its capacity C = 1/b: refusing the excess costs a each, serving costs b, so
    a (f C - S) + b S <= 1 s per second gives S / C <= (1 - f r) / (1 - r), r = a / b. The
    mix's costs are the means of its halves'; a 100-row refusal costs what was measured for it
    (its body is read), or a 1-row one's in a report without it."""
    served = {"1": cost_us.get("served_1"), "100": cost_us.get("served_100")}
    refused = {"1": cost_us.get("refused")}
    refused["100"] = cost_us.get("refused_100", refused["1"])
    for costs in (served, refused):
        if costs["1"] is not None and costs["100"] is not None:
            costs["mix"] = (costs["1"] + costs["100"]) / 2
    b, a = served.get(payload), refused.get(payload)
    if not b or a is None or a >= b:
        return None
    r = max(a, 0.0) / b
    return min(1.0, max(0.0, (1 - factor * r) / (1 - r)))


def _answer_cost_md(cost: dict) -> list[str]:
    us, runs = cost["cpu_us"], cost["runs"]
    names = {
        "served_1": "served, 1 row",
        "served_100": "served, 100 rows",
        "refused": "refused, 1 row (503 + Retry-After)",
        "refused_100": "refused, 100 rows (503 + Retry-After, its body read and dropped)",
        "floor": "HTTP floor, hello world",
    }
    rows = [
        [
            names[k],
            f"{us[k]:,.1f}",
            f"{runs[k]['served']:,} / {runs[k]['refused']:,}",
            f"{runs[k]['cpu_s']:.2f}",
            f"{runs[k]['loadavg_start']}-{runs[k]['loadavg_end']}",
        ]
        for k in names
        if k in us
    ]
    return [
        "### Server CPU per answer",
        "",
        "Every process of the server, CPU seconds over answers, wrk at 50 connections on the "
        "client CPUs. Refusals: a variant whose limit is 1, so nearly every request is refused; "
        "its few served requests are counted at the served cost and subtracted.",
        "",
        table(["answer", "server CPU µs", "served / refused", "CPU s", "load average"], rows),
        "",
    ]


def _overload_steps_md(report: dict) -> list[str]:
    steps, cap = report.get("overload_results") or [], report.get("capacity") or {}
    if not steps:
        return []
    cost = (report.get("answer_cost") or {}).get("cpu_us") or {}
    p = report["params"]
    pinned = (
        f"Servers pinned to CPU {p['server_cpus']} and the load generator to CPU "
        f"{p['client_cpus']}: a pod with a 1-CPU limit, its client on another node."
        if p.get("server_cpus")
        else "Servers and load generator unpinned (they share the CPUs)."
    ) + (
        f" vegeta opens at most {p['client_connections']} connections to a server, as a load "
        "balancer's pool to one pod."
        if p.get("client_connections")
        else " vegeta opens as many connections as it likes."
    )
    rows = []
    for s in steps:
        competitor = s["server"] in (report.get("own_capacity") or {})
        ceiling = None if competitor else goodput_ceiling(cost, s["payload"], s["factor"])
        rows.append(
            [
                label(s["server"]),
                s["payload"],
                f"{s['rate']:,} ({s['factor']:g}x)",
                f"{s['goodput']:,.0f}",
                f"{s['goodput_vs_capacity']:.0%}",
                "-" if ceiling is None else f"{ceiling:.0%}",
                f"{s['shed_share']:.0%}",
                _fmt_ms(s["admitted_latency_ms"]["p99"]),
                f"{s['resets']:,}" + (" (generator lagged)" if s["lagged"] else ""),
                f"{s['loadavg_start']}-{s['loadavg_end']}",
            ]
        )

    def caps_md(cap: dict) -> str:
        return ", ".join(
            f"{k} rows {v:,.0f}" if k != "mix" else f"mix {v:,.0f}" for k, v in cap.items()
        )

    beside = (report.get("capacity_beside") or {}).get(report.get("primary"), {})
    caps = ", ".join(
        f"{k if k == 'mix' else k + ' rows'} {c['mean']:,.0f} ({c['before']:,.0f} before, "
        f"{c['after']:,.0f} after)"
        for k, c in beside.items()
    ) or caps_md(cap)
    own = "; ".join(
        f"{label(key)} {caps_md(c)}" for key, c in (report.get("own_capacity") or {}).items()
    )
    return [
        "### Overload: goodput at 1.5x, 2x and 4x capacity (open loop)",
        "",
        f"{pinned} Capacity is ml-service's throughput in a closed loop of "
        f"{max(p['connections'])} vegeta workers for {p['duration_s']:g} s, measured beside "
        "each payload's steps, before and after them; goodput is compared with the mean of "
        f"the two (req/s: {caps}; the mix: half 1-row and half 100-row requests, "
        "alternating). Every server is offered the same rates, multiples of the capacity before, "
        "so the HTTP floor shows what the generator and the machine manage at that rate"
        + (
            f", except the competitors: multiples of their own capacity (req/s: {own})"
            if own
            else ""
        )
        + ". Goodput is 200 answers per second; the ceiling is what one CPU allows at "
        "ml-service's measured costs of a refusal and a served request (below).",
        "",
        table(
            [
                "server",
                "rows",
                "offered req/s",
                "goodput",
                "/ capacity",
                "one-CPU ceiling",
                "refused (503)",
                "200s p99 ms",
                "connection resets",
                "load average",
            ],
            rows,
        ),
        "",
        *(_answer_cost_md(report["answer_cost"]) if report.get("answer_cost") else []),
    ]


def _floor_cell(timing: dict | None) -> str:
    if not timing:
        return "- (model not covered)"
    return f"{timing['median_ms']:.2f} / {timing['p95_ms']:.2f} ms"


def markdown(report: dict, png_name: str) -> str:
    p, m = report["params"], report["machine"]
    ol = p.get("open_loop")
    out = [
        f"_Generated by `make bench` on {report['date']} (`benchmarks/run.py "
        f"{' '.join(report['argv'])}`)._",
        "",
        *_busy_warning(report),
        f"Machine: {m['nproc']} cores, {m['cpu_model']}, {m['memory_gb']} GB, Linux {m['kernel']}; "
        f"load average at start {m['loadavg_at_start']}, at end {report['loadavg_at_end']}.",
        f"Load: wrk, 1 thread, closed loop; {p['duration_s']} s per run after {p['warmup_s']} s "
        f"warm-up, {p['rounds']} rounds interleaved across servers (the order rotates per round)."
        + (
            f" vegeta, open loop: {len(ol['rates'])} rates from {ol['rates'][0]} to "
            f"{ol['rates'][-1]} req/s, {ol['step_s']:g} s per step, {ol['repetitions']} ladders "
            "interleaved across servers."
            if ol
            else ""
        ),
        "",
        f"![latency vs offered rate; throughput and p95 per server and payload]({png_name})",
        "",
        "### Goals",
        "",
        table(
            ["goal", "target", "measured", "status"],
            [[g["goal"], g["target"], g["value"] or "-", g["status"]] for g in report["goals"]],
        ),
        "",
    ]
    if report.get("open_loop"):
        out += _open_loop_md(report)
    out += _overload_steps_md(report)
    out += [
        "### Throughput and latency, closed loop (mean over rounds)",
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
                    label(a["server"]),
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
                    label(r["theirs"]),
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
                    label(s["key"]),
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
    variants = [s for s in report["servers"] if s["key"] != s["kind"]]
    if variants:
        out += [
            "Variants: "
            + "; ".join(
                f"`{s['key']}` = {s['kind']}"
                + (
                    f" with {', '.join(f'{k}={v}' for k, v in s['env'].items())}"
                    if s["env"]
                    else ""
                )
                + (f", started as `{' '.join(s['argv'])}`" if s.get("argv") else "")
                for s in variants
            )
            + ".",
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
                "sklearn predict_proba",
                "flat tree walk (ml-service's path up to MAX_ROWS)",
                "walk vs sklearn",
                "mlflow pyfunc predict (the competitors' path)",
            ],
            [
                [
                    n,
                    _floor_cell(v["sklearn_predict_proba"]),
                    _floor_cell(v.get("flat_walk")),
                    f"{v['sklearn_predict_proba']['median_ms'] / v['flat_walk']['median_ms']:.1f}x"
                    if v.get("flat_walk")
                    else "-",
                    _floor_cell(v["pyfunc_predict"]),
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
    pl = report.get("payload_log")
    if pl and pl["rows"]:
        out += [
            f"### Prediction IDs and the payload log (1-row requests, against `{pl['off']}`, "
            "where both are off)",
            "",
            table(
                ["variant", "conns", "req/s", "p50 ms", "p99 ms", "req/s vs off", "p99 vs off"],
                [
                    [
                        v["server"],
                        v["connections"],
                        v["rps"],
                        v["p50"],
                        v["p99"],
                        f"{v['rps_vs_off']:.2f}x",
                        f"{v['p99_vs_off']:.2f}x",
                    ]
                    for v in pl["rows"]
                ],
            ),
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
