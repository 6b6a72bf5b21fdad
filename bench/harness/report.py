"""Figures from the raw runs, the markdown table, and where results are written.

Every figure is a median over rounds. Added latency at a fixed rate is the
median over rounds of (scenario − direct) in the same round, so drift
between rounds cancels out.
"""

import json
import math
import os
import re
import statistics

PCTS = ("p50", "p99", "p999")
PCT_LABEL = {"p50": "p50", "p99": "p99", "p999": "p99.9"}
# Which started service runs each async scenario (for its peak RSS).
ASYNC_SERVICE = {"warder-async-sqlite": "warder-async", "warder-async-pg": "warder-pg"}
# A fixed rate whose direct baseline has a p99 above this did not hold: the
# load core (the load generator and the upstream) queued its own requests,
# so a difference of p99s there is the noise of that queue, not what a proxy
# adds.
BASELINE_HELD_P99_US = 10_000
README_START = "<!-- bench:latest:start -->"
README_END = "<!-- bench:latest:end -->"


def _med(values):
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(vals) if vals else None


def _ok_runs(runs):
    return [r for r in runs if "failed" not in r]


def _rss_mib(facts, service):
    f = facts.get(service) or {}
    return f["peak_rss_kib"] / 1024 if f.get("peak_rss_kib") else None


def figures(res):
    runs, facts = res["runs"], res["services"]
    targets = res["targets"]
    fig = {"closed": {}, "open": {}, "async": {}, "ratios": {}, "budget": []}
    for name, t in targets.items():
        closed = _ok_runs(runs.get(name, {}).get("closed", []))
        fig["closed"][name] = {
            "rps": _med(r["rps"] for r in closed),
            **{f"{p}_us": _med(r["latency_us"][p] for r in closed) for p in PCTS},
            "cpu_ms_per_1k": _med(r.get("cpu_ms_per_1k") for r in closed),
            "kernel_ms_per_1k": _med(r.get("kernel_ms_per_1k") for r in closed),
            "sut_core_busy": _med(r.get("sut_core_busy") for r in closed),
            "load_core_busy": _med(r.get("load_core_busy") for r in closed),
            "foreign_sut_core": _med(r.get("foreign_sut_core") for r in closed),
            "errors": sum(r.get("errors", 0) for r in runs.get(name, {}).get("closed", [])),
            "peak_rss_mib": _rss_mib(facts, t["service"]) if t["service"] else None,
            "runs": len(closed),
        }
    direct_open = runs.get("direct", {}).get("open", {})
    fig["unheld_rates"] = {}
    for rate, rr in direct_open.items():
        p99 = _med(r["latency_us"]["p99"] for r in _ok_runs(rr))
        if p99 is not None and p99 > BASELINE_HELD_P99_US:
            fig["unheld_rates"][rate] = p99
    for name in targets:
        for rate, rr in runs.get(name, {}).get("open", {}).items():
            rr = _ok_runs(rr)
            base = {r["round"]: r for r in _ok_runs(direct_open.get(rate, []))}
            row = {
                **{f"{p}_us": _med(r["latency_us"][p] for r in rr) for p in PCTS},
                "achieved_rps": _med(r["rps"] for r in rr),
                "cpu_ms_per_1k": _med(r.get("cpu_ms_per_1k") for r in rr),
                "sut_core_busy": _med(r.get("sut_core_busy") for r in rr),
                "errors": sum(r.get("errors", 0) for r in rr),
            }
            if name != "direct" and rate not in fig["unheld_rates"]:
                for p in PCTS:
                    row[f"added_{p}_us"] = _med(
                        r["latency_us"][p] - base[r["round"]]["latency_us"][p]
                        for r in rr if r["round"] in base)
            fig["open"].setdefault(rate, {})[name] = row
    for name, slot in runs.items():
        aa = _ok_runs(slot.get("async", []))
        if not slot.get("async"):
            continue
        fig["async"][name] = {
            "jobs_per_s": _med(r.get("jobs_per_s") for r in aa),
            "cpu_ms_per_1k": _med(r.get("cpu_ms_per_1k") for r in aa),
            "store_cpu_ms_per_1k": _med(r.get("store_cpu_ms_per_1k") for r in aa),
            # wrk submitting and polling, and the upstream answering the
            # worker's calls: their CPU per job, on the load core.
            "load_cpu_ms_per_1k": _med(r["load_core_busy"] * r["wall_s"] * 1e6 / r["requests"]
                                       for r in aa if r.get("load_core_busy") is not None
                                       and r.get("wall_s") and r.get("requests")),
            "errors": sum(r.get("errors", 0) for r in slot["async"]),
            "peak_rss_mib": _rss_mib(facts, ASYNC_SERVICE.get(name, name)),
            "queue_latency": (res.get("async_queue_latency") or {}).get(name),
        }

    for name, lines in (res.get("warder_log_lines") or {}).items():
        slot = runs.get(name, {})
        n = sum(r.get("requests") or 0 for r in slot.get("closed", []))
        n += sum(r.get("requests") or 0 for rr in slot.get("open", {}).values() for r in rr)
        fig.setdefault("warder_log", {})[name] = {
            "lines": lines, "requests": n, "lines_per_request": lines / n if n else None}

    c = fig["closed"]

    def ratio(a, b, key):
        x, y = (c.get(a) or {}).get(key), (c.get(b) or {}).get(key)
        return x / y if x and y else None

    for ref in ("nginx", "floor", "litellm"):
        fig["ratios"][f"warder/{ref}"] = {
            "throughput": ratio("warder", ref, "rps"),
            "cpu_per_request": ratio("warder", ref, "cpu_ms_per_1k"),
            "peak_rss": ratio("warder", ref, "peak_rss_mib"),
        }
        fig["ratios"][f"warder-raw/{ref}"] = {
            "throughput": ratio("warder-raw", ref, "rps"),
            "cpu_per_request": ratio("warder-raw", ref, "cpu_ms_per_1k"),
            "peak_rss": ratio("warder-raw", ref, "peak_rss_mib"),
        }
    celery = (fig["async"].get("celery") or {}).get("jobs_per_s")
    for name in ("warder-async-sqlite", "warder-async-pg"):
        w = (fig["async"].get(name) or {}).get("jobs_per_s")
        fig["ratios"][f"{name}/celery"] = {"throughput": w / celery if w and celery else None}

    # DESIGN §9, the parts this harness measures.
    b = fig["budget"]
    for rate, rows in sorted(fig["open"].items(), key=lambda kv: int(kv[0])):
        v = (rows.get("warder") or {}).get("added_p99_us")
        if "warder" not in rows:
            continue  # not run at that rate (above 80 % of its maximum)
        check = f"added p99 latency at {rate} req/s (envelope)"
        if rate in fig["unheld_rates"]:
            check += " (the load core did not hold the rate)"
        b.append({"check": check, "value": v,
                  "unit": "µs", "budget": "< 1000", "ok": None if v is None else v < 1000})
    v = ratio("warder", "nginx", "rps")
    b.append({"check": "max throughput / nginx", "value": v, "unit": "×", "budget": "≥ 1.0",
              "ok": None if v is None else v >= 1.0})
    v = ratio("warder", "nginx", "cpu_ms_per_1k")
    b.append({"check": "CPU per request / nginx", "value": v, "unit": "×", "budget": "≤ 1.5",
              "ok": None if v is None else v <= 1.5})
    for name, need in (("warder-async-sqlite", 5000), ("warder-async-pg", 10000)):
        v = (fig["async"].get(name) or {}).get("jobs_per_s")
        b.append({"check": f"{name} jobs/s", "value": v, "unit": "jobs/s", "budget": f"≥ {need}",
                  "ok": None if v is None else v >= need})
    for name in ("warder-async-sqlite", "warder-async-pg"):
        q = (fig["async"].get(name) or {}).get("queue_latency")
        if q:
            v = q["p99_ms"]
            b.append({"check": f"{name} queue latency p99 at {q['rate']:.0f} jobs/s", "value": v,
                      "unit": "ms", "budget": "< 50", "ok": v < 50})
    w = facts.get("warder") or {}
    if w.get("idle_rss_kib"):
        v = w["idle_rss_kib"] / 1024
        b.append({"check": "idle RSS (configured, before load)", "value": v, "unit": "MiB",
                  "budget": "< 30", "ok": v < 30})
    if w.get("startup_ms"):
        v = w["startup_ms"]
        b.append({"check": "startup to ready (embedded, spawn → /readyz 200)", "value": v,
                  "unit": "ms", "budget": "< 200", "ok": v < 200})
    fig["syscalls"] = res.get("syscalls_per_request") or {}
    fig["limits"] = limits(fig, (res.get("meta") or {}).get("host", {}).get("cores"),
                           res.get("host_wake"))
    return fig


def _wake(host_wake):
    """The slower of the before and after host probes (by cross-core p99)."""
    probes = [p for p in (host_wake or {}).values() if p]
    return max(probes, key=lambda p: p["cross"]["p99_us"]) if probes else None


def _syscalls(counts):
    """The system calls per request counted after the rounds, as a sentence."""
    names = (("nginx", "nginx"), ("floor", "the bare stack"), ("warder", "warder (envelope)"),
             ("warder-raw", "warder (raw)"))
    got = [f"{label} {counts[n]:.1f}" for n, label in names if counts.get(n) is not None]
    return f" System calls per request (perf, a short run after the rounds): {', '.join(got)}." \
        if got else ""


def limits(fig, cores, host_wake=None):
    """What bounds a missed budget line, from this run's own figures: how much
    of the CPU budget the bare stack leaves, what one core's throughput asks
    of CPU per request, what the stack adds at p99 with nothing of warder's
    own, and how many cores PostgreSQL alone would need for the async
    target."""
    out = []
    c = fig["closed"]
    nginx = (c.get("nginx") or {}).get("cpu_ms_per_1k")
    floor = (c.get("floor") or {}).get("cpu_ms_per_1k")
    if nginx and floor:
        # CPU-ms per 1 000 requests is CPU-µs per request.
        room = 1.5 * nginx - floor
        line = (f"CPU per request: nginx {nginx:.1f} µs; the bare stack with nothing of warder's "
                f"own {floor:.1f} µs ({floor / nginx:.2f}× nginx). The 1.5× budget "
                f"({1.5 * nginx:.1f} µs) leaves {room:.1f} µs on top of the stack for "
                f"authentication, rate limiting, metrics, the log line and JSON checks")
        more = [f"{(c.get(n) or {}).get('cpu_ms_per_1k') - floor:.1f} µs ({label})"
                for n, label in (("warder", "envelope"), ("warder-raw", "raw"))
                if (c.get(n) or {}).get("cpu_ms_per_1k")]
        if more:
            line += "; warder costs " + " and ".join(more) + " more than the bare stack"
        out.append(line + ".")
    w = c.get("warder") or {}
    if nginx and floor and w.get("rps") and w.get("cpu_ms_per_1k"):
        # One core serves at most 1 / (CPU per request): matching nginx's
        # throughput takes nginx's CPU per request, features included.
        rn, rf = c["nginx"].get("rps"), c["floor"].get("rps")
        out.append(
            f"Throughput: the system under test has one core, so it serves at most about "
            f"1 / (CPU per request). nginx did {_f(rn)} req/s at {nginx:.1f} µs and the bare "
            f"stack {_f(rf)} at {floor:.1f} µs; warder did {w['rps']:.0f} at "
            f"{w['cpu_ms_per_1k']:.1f} µs. As fast as nginx means costing no more CPU than "
            f"nginx, with authentication, rate limiting, metrics and the log line on; the "
            f"bare stack alone costs {floor / nginx:.2f}× nginx's CPU"
            + (f", which leaves {nginx - floor:.1f} µs per request for all of that."
               if floor < nginx else ", before any of that."))
    split = {n: ((c.get(n) or {}).get("cpu_ms_per_1k"), (c.get(n) or {}).get("kernel_ms_per_1k"))
             for n in ("nginx", "floor", "warder")}
    if all(t is not None and k is not None for t, k in split.values()):
        (tn, kn), (tf, kf), (tw, kw) = split["nginx"], split["floor"], split["warder"]
        out.append(
            f"Where the CPU goes: in the kernel (system calls and loopback TCP) nginx spent "
            f"{kn:.1f} µs per request, the bare stack {kf:.1f} and warder {kw:.1f}; in user "
            f"space nginx {tn - kn:.1f}, the bare stack {tf - kf:.1f} and warder {tw - kw:.1f}. "
            f"To cost what nginx costs, warder's user space would have to fit in "
            f"{tn - kw:.1f} µs, against the {tf - kf:.1f} µs of the bare stack (tokio and "
            f"HTTP/1.1 by hand on both sides, as warder's sync predicts: ARCHITECTURE.md "
            f"decisions (l) and (m))."
            + _syscalls(fig.get("syscalls") or {}))
    elif fig.get("syscalls"):
        out.append(_syscalls(fig["syscalls"]).strip())
    rates = sorted(fig["open"].items(), key=lambda kv: int(kv[0]))
    if rates:
        rate, rows = rates[0]
        got = {n: (rows.get(n) or {}).get("added_p99_us") for n in ("warder", "floor", "nginx")}
        if None not in got.values() and got["warder"] >= 1000:
            line = (f"p99 at a fixed rate: at {rate} req/s, the lowest rate measured, warder "
                    f"adds {got['warder']:.0f} µs, the bare stack {got['floor']:.0f} and nginx "
                    f"{got['nginx']:.0f}")
            least = min(got["floor"], got["nginx"])
            if least >= 800:
                line += (f": a second process on the path, on the other core, costs "
                         f"{least:.0f} µs or more at the 99th percentile on this machine "
                         f"before any feature runs")
            out.append(line + ".")
    # A missed rate where warder's core was mostly busy: queueing then adds
    # to its p99, whatever the features cost.
    busy = []
    for rate, rows in rates:
        b = next((x for x in fig["budget"] if x["check"] == f"added p99 latency at {rate} req/s "
                  "(envelope)"), None)
        load = (rows.get("warder") or {}).get("sut_core_busy")
        if b and b["ok"] is False and load is not None and load >= 0.7:
            busy.append(f"{load:.0%} at {rate} req/s")
    if busy:
        out.append(f"Load at the fixed rates: warder's core was busy {', '.join(busy)} (its CPU "
                   f"time over the run's wall time). At that load requests wait for the core, "
                   f"which likely adds to the p99.")
    wake = _wake(host_wake)
    if wake and any(b["ok"] is False for b in fig["budget"] if b["check"].startswith("added p99")):
        cross, same = wake["cross"], wake["same"]
        out.append(
            f"Hand-off between cores: on this host a one-byte ping to a process on the idle "
            f"other core came back in {cross['p50_us']:.0f} µs at the median and "
            f"{cross['p99_us']:.0f} µs at p99 ({same['p50_us']:.0f} and {same['p99_us']:.0f} "
            f"within one core, the probe's own cost). A request through any proxy crosses "
            f"cores four times, so at a fixed rate, where the proxy's core idles between "
            f"requests, it pays about two such round trips before any feature runs.")
    pg = fig["async"].get("warder-async-pg") or {}
    if pg.get("store_cpu_ms_per_1k"):
        store, own = pg["store_cpu_ms_per_1k"], pg.get("cpu_ms_per_1k") or 0
        load = pg.get("load_cpu_ms_per_1k") or 0
        total, n = store + own + load, cores or os.cpu_count()
        out.append(f"Async on PostgreSQL: per 1 000 jobs the PostgreSQL server used {store:.0f} "
                   f"CPU-ms, warder {own:.0f} and the load generator with the upstream "
                   f"{load:.0f}: {total:.0f} in all. 10 000 jobs/s would take "
                   f"{total * 10 / 1000:.2f} cores ({store * 10 / 1000:.2f} for PostgreSQL "
                   f"alone); the machine's {n} cores, kept entirely busy, would complete at "
                   f"most {n * 1e6 / total:.0f} jobs/s at that cost.")
    return out


def problems(res, quick):
    """What makes the run fail: warder errors, zero throughput, a fatal set-up error."""
    out = []
    if res.get("fatal"):
        out.append(f"set-up failed: {res['fatal']}")
    for name, slot in res["runs"].items():
        for kind in ("closed", "async"):
            for r in slot.get(kind, []):
                if "failed" in r:
                    out.append(f"{name} {kind} run failed: {r['failed']}")
                elif name.startswith("warder") and r.get("errors"):
                    out.append(f"{name} answered errors in a {kind} run: {r.get('error_detail')}")
        for rate, rr in slot.get("open", {}).items():
            for r in rr:
                if "failed" in r:
                    out.append(f"{name} at {rate} req/s failed: {r['failed']}")
                elif name.startswith("warder") and r.get("errors"):
                    out.append(f"{name} answered errors at {rate} req/s: {r.get('error_detail')}")
    for name in ("direct", "nginx", "warder", "warder-raw"):
        if name in res["targets"] and not (res["figures"]["closed"].get(name) or {}).get("rps"):
            out.append(f"{name}: zero throughput")
    if "warder" not in res["targets"]:
        out.append("warder did not run")
    return out


def _f(v, fmt="{:.0f}", none="–"):
    return none if v is None else fmt.format(v)


def _x(ratio):
    """A ratio with three significant digits (0.00357×, 1.02×, 256×)."""
    return "–" if ratio is None else f"{ratio:.3g}×"


def _ms(us):
    return _f(us / 1e3 if us is not None else None, "{:.3f}")


def markdown(res):
    m, fig = res["meta"], res["figures"]
    s = m["settings"]
    L = []
    git = m["git"]
    L.append(f"### {m['mode'].capitalize()} run, {m['timestamp']}")
    L.append("")
    L.append(f"Commit `{git.get('commit')}`{' (crates modified)' if git.get('crates_dirty') else ''}"
             f" · {m['host']['cores']} cores ({m['host']['cpu']}) · "
             + (f"system under test pinned to core {m['pinning']['sut_core']}, load generator "
                f"and upstream to core {m['pinning']['load_core']}" if m["pinning"]["enabled"]
                else "no CPU pinning")
             + f" · {s['rounds']} round(s) × {s['duration_s']} s per measurement, "
               f"{s['connections']} connections, medians over rounds · took {m['elapsed_s']:.0f} s")
    L.append("")
    L.append("**Closed loop (wrk, maximum throughput)**")
    L.append("")
    L.append("| scenario | req/s | p50 ms | p99 ms | p99.9 ms | CPU-ms / 1k req | of it kernel "
             "| SUT core busy | load core busy | peak RSS MiB | errors |")
    L.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for name, t in res["targets"].items():
        c = fig["closed"].get(name) or {}
        L.append(f"| {t['label']} | {_f(c.get('rps'))} | {_ms(c.get('p50_us'))} | "
                 f"{_ms(c.get('p99_us'))} | {_ms(c.get('p999_us'))} | "
                 f"{_f(c.get('cpu_ms_per_1k'), '{:.1f}')} | "
                 f"{_f(c.get('kernel_ms_per_1k'), '{:.1f}')} | "
                 f"{_f(c.get('sut_core_busy'), '{:.0%}')} | {_f(c.get('load_core_busy'), '{:.0%}')}"
                 f" | {_f(c.get('peak_rss_mib'), '{:.1f}')} | {c.get('errors', '–')} |")
    L.append("")
    if fig["open"]:
        L.append("**Fixed rate (oha, open loop, latency-corrected): latency added over direct**")
        L.append("")
        L.append("| rate req/s | scenario | p50 µs | p99 µs | p99.9 µs | CPU-ms / 1k req | errors |")
        L.append("|--:|---|--:|--:|--:|--:|--:|")
        for rate, rows in sorted(fig["open"].items(), key=lambda kv: int(kv[0])):
            for name, t in res["targets"].items():
                r = rows.get(name)
                if not r:
                    continue
                if name == "direct":
                    cells = " | ".join(f"({_f(r.get(f'{p}_us'))})" for p in PCTS)
                else:
                    cells = " | ".join(_f(r.get(f"added_{p}_us"), "{:+.0f}") for p in PCTS)
                L.append(f"| {rate} | {t['label']} | {cells} | "
                         f"{_f(r.get('cpu_ms_per_1k'), '{:.1f}')} | {r.get('errors', 0)} |")
        L.append("")
        L.append("Direct rows show absolute latency in parentheses; the others, what the "
                 "proxy adds to it (negative values are noise).")
        for rate, p99 in sorted((fig.get("unheld_rates") or {}).items(),
                                key=lambda kv: int(kv[0])):
            L.append("")
            L.append(f"At {rate} req/s the direct baseline's own p99 was {p99 / 1000:.0f} ms "
                     f"(over {BASELINE_HELD_P99_US / 1000:.0f} ms): the load core, the load "
                     f"generator and the upstream, did not hold that rate and queued its own "
                     f"requests, so what the proxies add there is not measured (–).")
        L.append("")
    probes = {when: p for when, p in (res.get("host_wake") or {}).items() if p}
    if probes:
        cells = "; ".join(
            f"{when}: to the idle other core p50 {p['cross']['p50_us']:.0f} / p99 "
            f"{p['cross']['p99_us']:.0f} / p99.9 {p['cross']['p999_us']:.0f} µs, within one "
            f"core p50 {p['same']['p50_us']:.0f} / p99 {p['same']['p99_us']:.0f} µs"
            for when, p in probes.items())
        L.append(f"**Host probe** (one-byte round trip between two pinned processes, "
                 f"{next(iter(probes.values()))['pings']} pings with idle gaps; "
                 f"`bench/harness/host.py`): {cells}.")
        L.append("")
    if fig["async"]:
        L.append("**Async submit → complete (no-op model)**")
        L.append("")
        L.append("| scenario | jobs/s | CPU-ms / 1k jobs | PostgreSQL CPU-ms / 1k jobs "
                 "| queue wait p50 / p99 ms | peak RSS MiB | errors |")
        L.append("|---|--:|--:|--:|--:|--:|--:|")
        labels = res.get("async_scenarios", {})
        for name, a in fig["async"].items():
            q = a.get("queue_latency")
            wait = f"{q['p50_ms']:.1f} / {q['p99_ms']:.1f}" if q else "–"
            L.append(f"| {labels.get(name, {}).get('label', name)} | {_f(a.get('jobs_per_s'))} | "
                     f"{_f(a.get('cpu_ms_per_1k'), '{:.1f}')} | "
                     f"{_f(a.get('store_cpu_ms_per_1k'), '{:.1f}')} | {wait} | "
                     f"{_f(a.get('peak_rss_mib'), '{:.1f}')} | {a.get('errors')} |")
        L.append("")
        L.append("Queue wait: created → started of jobs submitted one by one at a rate well "
                 "below saturation, after the rounds. The PostgreSQL server's CPU (all its "
                 "processes, both cores) is shown on its own, not in warder's column.")
        L.append("")
    L.append("**Ratios** (closed loop; throughput > 1 and CPU < 1 favour warder)")
    L.append("")
    L.append("| | throughput | CPU per request | peak RSS |")
    L.append("|---|--:|--:|--:|")
    for k, v in fig["ratios"].items():
        L.append(f"| {k} | {_x(v.get('throughput'))} | {_x(v.get('cpu_per_request'))} | "
                 f"{_x(v.get('peak_rss'))} |")
    L.append("")
    L.append("**Budget (DESIGN §9)**")
    L.append("")
    L.append("| check | measured | budget | |")
    L.append("|---|--:|--:|---|")
    for b in fig["budget"]:
        mark = {True: "ok", False: "**missed**", None: "not measured"}[b["ok"]]
        fmt = "{:.2f}" if b["unit"] == "×" else "{:.0f}"
        L.append(f"| {b['check']} | {_f(b['value'], fmt)} {b['unit']} | {b['budget']} {b['unit']}"
                 f" | {mark} |")
    L.append("")
    if fig.get("limits"):
        L.append("**What bounds the missed lines** (from this run's figures)")
        L.append("")
        for line in fig["limits"]:
            L.append(f"- {line}")
        L.append("")
    if res["unavailable"] or res["notes"] or res.get("problems") or res.get("skipped_rates"):
        L.append("**Not measured, notes**")
        L.append("")
        for name, why in res["unavailable"].items():
            L.append(f"- {name}: {why}")
        for name, sk in (res.get("skipped_rates") or {}).items():
            rates = ", ".join(str(r) for r in sk["rates"])
            L.append(f"- {name} not run at {rates} req/s: above 80 % of its maximum throughput "
                     f"({sk['cap_rps']:.0f} req/s in round 1), it would only measure its queue")
        for n in res["notes"]:
            L.append(f"- {n}")
        for p in res.get("problems", []):
            L.append(f"- PROBLEM: {p}")
        L.append("")
    noisy = {n: c["foreign_sut_core"] for n, c in fig["closed"].items()
             if (c.get("foreign_sut_core") or 0) > 0.05}
    if noisy:
        share = ", ".join(f"{n} {v:.0%}" for n, v in noisy.items())
        L.append(f"**Noise:** other processes on the machine took this share of the SUT core "
                 f"during the closed-loop runs (median): {share}. Throughput and latency are "
                 f"then low by about that much; CPU per request and the ratios hold up better.")
        L.append("")
    wake = _wake(res.get("host_wake"))
    if wake and wake["cross"]["p99_us"] > 1000:
        L.append(f"**Slow host:** waking the idle other core took {wake['cross']['p99_us']:.0f} µs "
                 f"at p99 in the host probe. Latency at fixed rates then says more about the "
                 f"host than about the systems measured, and every proxy's closed-loop "
                 f"throughput drops with it.")
        L.append("")
    return "\n".join(L)


def write(res, md, results_dir, readme, quick):
    """Quick runs go to results/quick/ (not committed); full runs to results/
    and the README's latest-results block."""
    out = os.path.join(results_dir, "quick") if quick else results_dir
    os.makedirs(out, exist_ok=True)
    stamp = res["meta"]["timestamp"].replace(":", "").replace("-", "")
    paths = []
    for name in (f"{stamp}.json", "latest.json"):
        p = os.path.join(out, name)
        with open(p, "w") as f:
            json.dump(res, f, indent=1, sort_keys=False)
            f.write("\n")
        paths.append(p)
    p = os.path.join(out, "latest.md")
    with open(p, "w") as f:
        f.write(f"# warder benchmark — latest {res['meta']['mode']} run\n\n"
                "Reproduce with `bench/run.sh`" + (" --quick" if quick else "") + ".\n\n")
        f.write(md + "\n")
    paths.append(p)
    if not quick and readme and os.path.exists(readme):
        with open(readme) as f:
            text = f.read()
        if README_START in text and README_END in text:
            block = (f"{README_START}\nReproduce with `bench/run.sh` (full run, about "
                     f"{max(1, round(res['meta']['elapsed_s'] / 60))} min here).\n\n{md}\n"
                     f"{README_END}")
            text = re.sub(re.escape(README_START) + ".*?" + re.escape(README_END),
                          lambda _: block, text, flags=re.S)
            with open(readme, "w") as f:
                f.write(text)
            paths.append(readme)
    return paths

