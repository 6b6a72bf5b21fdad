#!/usr/bin/env python3
"""The warder benchmark: warder side by side with direct, nginx, LiteLLM and
Celery, on loopback, with CPU pinning, in interleaved rounds.

Usually run through bench/run.sh, which installs the tools and builds the
binaries, then calls this with their paths. Stdlib only.

Per round, each measurement kind runs every scenario in turn (A B C, A B C…)
so that drift hits all alike; the report gives medians over rounds.
"""

import argparse
import atexit
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import report as rep  # noqa: E402
from harness.asyncjobs import CeleryRef, WarderAsync, detect, fresh_pg_database  # noqa: E402
from harness.host import wake_latency  # noqa: E402
from harness.loadgen import LoadError, Oha, Wrk  # noqa: E402
from harness.procs import Procs, core_busy_seconds, cpu_seconds, cpu_split, status_kib  # noqa: E402
from harness.targets import (  # noqa: E402
    FLOOR_LABEL, Target, Unavailable, check_warder, configure_warder, log_lines, log_warnings,
    start_bare_proxy, start_litellm, start_nginx, start_upstream, start_warder)

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke mode for CI: 2 s per scenario, 1 round, no installs; "
                        "fails on any warder error or zero throughput")
    p.add_argument("--warder", help="release warder binary (required unless --render)")
    p.add_argument("--upstream", help="bench-upstream binary (required unless --render)")
    p.add_argument("--render", metavar="RESULT_JSON",
                   help="measure nothing: recompute figures and tables from a result file "
                        "and rewrite results/latest.* (and the README block for a full run)")
    p.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    p.add_argument("--bare-proxy", default=None,
                   help="bench-upstream's bare-proxy binary: the HTTP stack's floor "
                        "(skipped without it)")
    p.add_argument("--wrk", default=shutil.which("wrk"))
    p.add_argument("--oha", default=None, help="oha binary (fixed-rate runs are skipped without it)")
    p.add_argument("--venv", default=os.path.join(BENCH, ".venv"),
                   help="Python venv with LiteLLM and Celery")
    p.add_argument("--results", default=os.path.join(BENCH, "results"))
    p.add_argument("--readme", default=os.path.join(BENCH, "README.md"),
                   help="README whose latest-results block a full run rewrites")
    p.add_argument("--duration", type=int, help="seconds per measurement (10; quick 2)")
    p.add_argument("--rounds", type=int, help="rounds (3; quick 1)")
    p.add_argument("--rates", help="fixed rates, comma-separated (1000,5000,10000,20000; quick 1000)")
    p.add_argument("--connections", type=int, default=32, help="connections (32)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up per scenario (3; quick 1)")
    p.add_argument("--celery-jobs", type=int, help="jobs per Celery run (5000; quick 300)")
    p.add_argument("--sut-core", type=int, default=0)
    p.add_argument("--load-core", type=int, default=1)
    p.add_argument("--skip", default="",
                   help="comma-separated: nginx,floor,litellm,async,celery,pg,open")
    p.add_argument("--pg-url", default=os.environ.get(
        "WARDER_BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
                   help="PostgreSQL server for the async PostgreSQL scenario")
    p.add_argument("--nginx-access-log", choices=("on", "off"), default="on",
                   help="nginx writes an access log line per request, like warder (on)")
    p.add_argument("--max-minutes", type=float,
                   help="stop starting new rounds after this long (45; quick 4)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs, configs)")
    a = p.parse_args(argv)
    if not a.render and not (a.warder and a.upstream):
        p.error("--warder and --upstream are required")
    q = a.quick
    a.duration = a.duration or (2 if q else 10)
    a.rounds = a.rounds or (1 if q else 3)
    a.rates = [int(x) for x in (a.rates or ("1000" if q else "1000,5000,10000,20000")).split(",") if x]
    a.warmup = a.warmup if a.warmup is not None else (1.0 if q else 3.0)
    a.celery_jobs = a.celery_jobs or (300 if q else 5000)
    a.max_minutes = a.max_minutes or (4 if q else 45)
    a.skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    return a


def postgres_cpu_seconds():
    """CPU used so far by every PostgreSQL process on the machine (the server
    is not started by the harness; its backends outlive a run)."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() != "postgres":
                    continue
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total / os.sysconf("SC_CLK_TCK")


def tool_version(argv, need_success=False):
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=15)
        if need_success and r.returncode != 0:
            return None
        out = (r.stdout + r.stderr).strip().splitlines()
        return out[0] if out else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def git_info():
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "crates"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return {"commit": head or None, "crates_dirty": bool(dirty)}
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "crates_dirty": None}


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


class Bench:
    def __init__(self, args):
        self.a = args
        self.tmp = tempfile.mkdtemp(prefix="warder-bench-")
        if not args.keep_tmp:
            atexit.register(shutil.rmtree, self.tmp, True)
        # Registered after the rmtree: processes stop first (atexit is LIFO).
        self.procs = Procs(pin=(os.cpu_count() or 1) >= 2)
        self.started = time.monotonic()
        self.targets: list[Target] = []
        self.async_scenarios = []
        self.unavailable = {}  # name -> reason
        self.notes = []
        self.runs = {}  # name -> {"closed": [...], "open": {rate: [...]}, "async": [...]}
        self.services = {}
        self.log_lines = {}
        self.rate_plan = {}  # (scenario, rate) -> runs at that rate
        self.queue_waits = {}  # async scenario -> queue latency percentiles
        self.skipped_rates = {}  # scenario -> {cap_rps, rates} not run (above 80 % of max)
        self.wrk = self.oha = None
        self.wake = {}  # "before" / "after" the measurements -> host.wake_latency()
        self.syscalls = {}  # sync scenario -> system calls per request (perf)

    def probe_wake(self, when):
        """The cores' hand-off latency (harness/host.py), with nothing else running."""
        if not self.procs.pin:
            return
        self.say(f"host probe ({when}): one-byte ping to an idle core")
        try:
            self.wake[when] = wake_latency(self.procs, self.a.sut_core, self.a.load_core,
                                           pings=500 if self.a.quick else 2000)
        except (OSError, ValueError, subprocess.TimeoutExpired) as e:
            self.notes.append(f"host probe ({when}) failed: {e}")

    def count_syscalls(self):
        """System calls per request of each proxy under closed-loop load, counted
        with perf's syscall tracepoint in a short run of its own after the
        rounds (counting slows every call a little, so never during them)."""
        perf = shutil.which("perf")
        if not perf:
            self.notes.append("system calls per request not counted: perf is not installed")
            return
        seconds = 1 if self.a.quick else 3
        for t in self.targets:
            if t.name not in ("nginx", "floor", "warder", "warder-raw") or not t.service:
                continue
            pids = t.service.pids()
            if not pids:
                self.notes.append(f"system calls per request not counted for {t.name}: "
                                  "it is not running")
                continue
            out = os.path.join(self.tmp, f"perf-{t.name}.csv")
            err = os.path.join(self.tmp, f"perf-{t.name}.err")
            with open(err, "wb") as err_file:
                st = subprocess.Popen([perf, "stat", "-x", ",", "-o", out, "-e",
                                       "raw_syscalls:sys_enter", "-p", ",".join(map(str, pids))],
                                      stdout=subprocess.DEVNULL, stderr=err_file)
            time.sleep(0.3)  # attached before the load starts
            try:
                r = self.wrk.run(t.url, t.body, t.auth, seconds, self.a.connections)
            except LoadError as e:
                self.notes.append(f"system calls per request not counted for {t.name}: {e}")
                continue
            finally:
                st.send_signal(signal.SIGINT)
                try:
                    st.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    st.kill()
            count = None
            try:
                with open(out) as f:
                    for line in f:
                        fields = line.split(",")
                        if len(fields) > 2 and "raw_syscalls:sys_enter" in fields[2]:
                            count = int(fields[0]) if fields[0].strip().isdigit() else None
            except OSError:
                pass  # perf did not start: said below
            if count is None or not r["requests"]:
                with open(err, errors="replace") as f:
                    why = f.read().strip().splitlines()
                self.notes.append(f"system calls per request not counted for {t.name}: perf "
                                  + (why[0][:200] if why else "counted nothing"))
                continue
            self.syscalls[t.name] = count / r["requests"]

    def say(self, msg):
        print(f"[bench {time.monotonic() - self.started:6.1f}s] {msg}", flush=True)

    # ---- set-up ---------------------------------------------------------

    def setup(self):
        a = self.a
        if not self.procs.pin:
            self.notes.append("CPU pinning is off (fewer than 2 cores or no taskset): "
                              "figures mix the system under test with the load generator")
        if not a.wrk:
            raise SystemExit("wrk is not installed (bench/run.sh installs it)")
        self.wrk = Wrk(a.wrk, self.procs, a.load_core)
        if a.oha and "open" not in a.skip:
            self.oha = Oha(a.oha, self.procs, a.load_core)
        else:
            self.notes.append("fixed-rate (open-loop) runs skipped: "
                              + ("disabled with --skip open" if "open" in a.skip else
                                 "oha is not installed (bench/run.sh builds it in full mode)"))

        self.say("starting the fake upstream")
        self.upstream = start_upstream(self.procs, a.upstream, a.load_core, self.tmp)
        self.services["upstream"] = self.upstream
        self.targets.append(Target("direct", "direct to upstream (baseline)", self.upstream.url,
                                   None, None))

        if "nginx" in a.skip:
            self.unavailable["nginx"] = "skipped (--skip nginx)"
        else:
            self.say("starting nginx")
            try:
                ng = start_nginx(self.procs, a.nginx, a.sut_core, self.tmp, self.upstream,
                                 access_log=a.nginx_access_log == "on")
                self.services["nginx"] = ng
                self.targets.append(Target("nginx", "nginx reverse proxy (1 worker, keep-alive)",
                                           ng.url, None, ng))
            except (Unavailable, OSError) as e:
                self.unavailable["nginx"] = str(e)

        if "floor" in a.skip or not a.bare_proxy:
            self.unavailable["floor"] = ("skipped (--skip floor)" if "floor" in a.skip
                                         else "no --bare-proxy binary given")
        else:
            self.say("starting the bare tokio proxy (floor)")
            try:
                fl = start_bare_proxy(self.procs, a.bare_proxy, a.sut_core, self.tmp,
                                      self.upstream)
                self.services["floor"] = fl
                self.targets.append(Target("floor", FLOOR_LABEL, fl.url, None, fl))
            except (Unavailable, OSError) as e:
                self.unavailable["floor"] = str(e)

        self.say("starting warder")
        w = start_warder(self.procs, a.warder, a.sut_core, self.tmp)
        configure_warder(w, self.upstream)
        check_warder(w, self.upstream)
        log_lines(w)
        self.services["warder"] = w
        self.targets.append(Target("warder", "warder predict (envelope)",
                                   f"{w.base}/models/bench/predict", w.auth, w))
        self.targets.append(Target("warder-raw", "warder predict (raw)",
                                   f"{w.base}/models/bench-raw/predict", w.auth, w))

        if "litellm" in a.skip:
            self.unavailable["litellm"] = "skipped (--skip litellm)"
        else:
            self.say("starting LiteLLM (slow to import)")
            try:
                ll = start_litellm(self.procs, a.venv, a.sut_core, self.tmp, self.upstream,
                                   timeout=90 if a.quick else 240)
                self.services["litellm"] = ll
                self.targets.append(Target("litellm", "LiteLLM proxy (master key)", ll.url,
                                           ll.auth, ll))
            except (Unavailable, OSError) as e:
                self.unavailable["litellm"] = str(e)

        self.setup_async(w)
        for s in self.services.values():
            s.note_idle()

    def setup_async(self, w):
        a = self.a
        if "async" in a.skip:
            self.unavailable["warder-async"] = "skipped (--skip async)"
        else:
            reason = detect(w)
            if reason:
                self.unavailable["warder-async-sqlite"] = reason
                self.unavailable["warder-async-pg"] = reason
            else:
                # Its own instance, so that the queue's work and memory do not
                # show in the sync figures of the main one.
                wa = start_warder(self.procs, a.warder, a.sut_core, self.tmp, name="warder-async")
                configure_warder(wa, self.upstream)
                check_warder(wa, self.upstream, warm=5)
                self.services["warder-async"] = wa
                self.async_scenarios.append(WarderAsync("warder-async-sqlite",
                                                        "warder async (SQLite)", wa))
                if "pg" in a.skip:
                    self.unavailable["warder-async-pg"] = "skipped (--skip pg)"
                else:
                    try:
                        url = fresh_pg_database(a.pg_url)
                        wp = start_warder(self.procs, a.warder, a.sut_core, self.tmp,
                                          name="warder-pg", database_url=url)
                        configure_warder(wp, self.upstream)
                        check_warder(wp, self.upstream, warm=5)
                        self.services["warder-pg"] = wp
                        self.async_scenarios.append(
                            WarderAsync("warder-async-pg", "warder async (PostgreSQL)", wp))
                        self.notes.append("the PostgreSQL server is not started by the harness "
                                          "and is not pinned: it competes for both cores")
                    except (Unavailable, OSError) as e:
                        self.unavailable["warder-async-pg"] = str(e)
        if "celery" in a.skip:
            self.unavailable["celery"] = "skipped (--skip celery)"
            return
        self.say("starting Celery + Redis")
        try:
            c = CeleryRef(self.procs, a.venv, a.sut_core, a.load_core, self.tmp)
            self.async_scenarios.append(c)
        except (Unavailable, OSError) as e:
            self.unavailable["celery"] = str(e)

    # ---- measuring ------------------------------------------------------

    def measure(self, pids_fn, run):
        """Runs `run()` and adds CPU of the system under test and of both cores."""
        a = self.a
        pids = pids_fn() if pids_fn else []
        up = self.upstream.pids()
        (user0, sys0), u0 = cpu_split(pids), cpu_seconds(up)
        k0 = core_busy_seconds([a.sut_core, a.load_core])
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        r = run()
        wall = time.monotonic() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        k1 = core_busy_seconds([a.sut_core, a.load_core])
        pids = pids_fn() if pids_fn else []
        user1, sys1 = cpu_split(pids)
        sut = (user1 - user0) + (sys1 - sys0) if pids_fn else None
        gen = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
        ups = cpu_seconds(up) - u0
        n = r.get("requests") or 0
        r["wall_s"] = wall
        r["sut_cpu_s"] = sut
        r["cpu_ms_per_1k"] = sut * 1e6 / n if (sut is not None and n) else None
        # The kernel's share: system calls and the loopback TCP stack, which
        # on loopback runs the peer's receive path on the sender's core (and
        # can count it as the sender's system time).
        r["kernel_ms_per_1k"] = (sys1 - sys0) * 1e6 / n if (pids_fn and n) else None
        r["sut_core_busy"] = sut / wall if sut is not None else None
        r["load_core_busy"] = (gen + ups) / wall
        # CPU on the two cores that none of our processes used: other work
        # on the machine (e.g. compilers) that makes this run noisy.
        busy_sut = k1.get(a.sut_core, 0) - k0.get(a.sut_core, 0)
        busy_load = k1.get(a.load_core, 0) - k0.get(a.load_core, 0)
        r["foreign_sut_core"] = max(0.0, busy_sut - sut) / wall if sut is not None else None
        r["foreign_load_core"] = max(0.0, busy_load - gen - ups) / wall
        return r

    def record(self, name, kind, r, rate=None):
        slot = self.runs.setdefault(name, {"closed": [], "open": {}, "async": []})
        if kind == "open":
            slot["open"].setdefault(str(rate), []).append(r)
        else:
            slot[kind].append(r)

    def after_warder(self, t):
        if t.service is not None and t.name.startswith("warder"):
            self.log_lines[t.name] = self.log_lines.get(t.name, 0) + log_lines(t.service)

    def warder_warnings(self):
        """Each warder instance's WARN and ERROR log lines, {message: count},
        with a note for each instance that logged any: a stall such as a
        retried write shows in a round's figures, and here says why."""
        out = {}
        for name, svc in self.services.items():
            if not name.startswith("warder") or not hasattr(svc, "log_path"):
                continue
            found = log_warnings(svc)
            if not found:
                continue
            out[name] = found
            top = sorted(found.items(), key=lambda kv: -kv[1])[:3]
            self.notes.append(f"{name} logged {sum(found.values())} warning or error lines: "
                              + "; ".join(f"{m[:160]} (×{c})" for m, c in top))
        return out

    def warmup(self):
        if self.a.warmup <= 0:
            return
        for t in self.targets:
            self.say(f"warm-up {t.name}")
            try:
                self.wrk.run(t.url, t.body, t.auth, max(1, round(self.a.warmup)),
                             self.a.connections)
            except LoadError as e:
                self.say(f"  warm-up failed: {e}")
            if t.service is not None and t.name.startswith("warder"):
                log_lines(t.service)  # not counted: only measured requests are

    def closed_rps(self, name):
        runs = self.runs.get(name, {}).get("closed", [])
        vals = sorted(r["rps"] for r in runs)
        return vals[len(vals) // 2] if vals else None

    def rate_fits(self, t, rate):
        """Whether `t` runs at `rate`: decided once, from its first closed-loop
        maximum, so every round runs the same set."""
        key = (t.name, rate)
        if key not in self.rate_plan:
            cap = self.closed_rps(t.name)
            self.rate_plan[key] = cap is None or rate <= 0.8 * cap
            if not self.rate_plan[key]:
                self.skipped_rates.setdefault(t.name, {"cap_rps": cap, "rates": []})
                self.skipped_rates[t.name]["rates"].append(rate)
        return self.rate_plan[key]

    def over_budget(self):
        return time.monotonic() - self.started > self.a.max_minutes * 60

    def rounds(self):
        a = self.a
        for rnd in range(a.rounds):
            if rnd and self.over_budget():
                self.notes.append(f"stopped after {rnd} of {a.rounds} rounds "
                                  f"(--max-minutes {a.max_minutes})")
                break
            for t in self.targets:
                self.one(t, rnd, "closed")
            if self.oha:
                for rate in a.rates:
                    for t in self.targets:
                        if not self.rate_fits(t, rate):
                            continue
                        self.one(t, rnd, "open", rate)
            for s in self.async_scenarios:
                try:
                    if isinstance(s, CeleryRef):
                        r = self.measure(s.pids, lambda: s.run(a.celery_jobs))
                    else:
                        pg0 = postgres_cpu_seconds() if s.name.endswith("-pg") else None
                        r = self.measure(s.pids, lambda: s.run(self.wrk, a.duration,
                                                               a.connections))
                        if pg0 is not None and r.get("requests"):
                            r["store_cpu_ms_per_1k"] = ((postgres_cpu_seconds() - pg0) * 1e6
                                                        / r["requests"])
                except (LoadError, Unavailable) as e:
                    r = {"failed": str(e), "errors": 1, "requests": 0}
                r["round"] = rnd
                self.record(s.name, "async", r)
                self.say(f"round {rnd + 1}: {s.name:<20} {r.get('jobs_per_s') or 0:7.0f} jobs/s  "
                         f"errors {r.get('errors')}")

    def queue_latency(self):
        """Queue wait (created → started) of warder's async jobs below saturation."""
        for s in self.async_scenarios:
            if isinstance(s, WarderAsync):
                self.say(f"queue latency {s.name}")
                try:
                    self.queue_waits[s.name] = s.queue_latency(
                        jobs=200 if self.a.quick else 1000, rate=200.0)
                except (OSError, ValueError) as e:
                    self.notes.append(f"{s.name}: queue latency not measured: {e}")

    def one(self, t, rnd, kind, rate=None):
        a = self.a
        what = "closed loop" if kind == "closed" else f"{rate} req/s"
        pids_fn = t.service.pids if t.service else None
        try:
            if kind == "closed":
                r = self.measure(pids_fn, lambda: self.wrk.run(t.url, t.body, t.auth, a.duration,
                                                               a.connections))
            else:
                r = self.measure(pids_fn, lambda: self.oha.run(t.url, t.body, t.auth, a.duration,
                                                               a.connections, rate))
        except LoadError as e:
            r = {"failed": str(e), "errors": 1, "requests": 0, "rps": 0.0}
        r["round"] = rnd
        self.after_warder(t)
        self.record(t.name, kind, r, rate)
        lat = r.get("latency_us", {})
        self.say(f"round {rnd + 1}: {t.name:<10} {what:<12} {r.get('rps', 0):9.0f} req/s  "
                 f"p50 {lat.get('p50', 0) / 1e3:7.3f} ms  p99 {lat.get('p99', 0) / 1e3:7.3f} ms  "
                 f"errors {r.get('errors')}")

    # ---- results --------------------------------------------------------

    def meta(self):
        a = self.a
        return {
            "timestamp": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "mode": "quick" if a.quick else "full",
            "git": git_info(),
            "host": {"cores": os.cpu_count(), "cpu": cpu_model(), "kernel": platform.release()},
            "pinning": {"enabled": self.procs.pin, "sut_core": a.sut_core,
                        "load_core": a.load_core},
            "settings": {"duration_s": a.duration, "rounds": a.rounds, "rates": a.rates,
                         "connections": a.connections, "warmup_s": a.warmup,
                         "celery_jobs": a.celery_jobs,
                         "nginx_access_log": a.nginx_access_log == "on"},
            "tools": {
                "wrk": tool_version([a.wrk, "-v"]) if a.wrk else None,
                "oha": tool_version([a.oha, "--version"]) if a.oha else None,
                "nginx": tool_version([a.nginx, "-v"]),
                "warder": tool_version([a.warder, "--version"], need_success=True),
                "litellm": pip_version(a.venv, "litellm"),
                "celery": pip_version(a.venv, "celery"),
                "redis-server": tool_version(["redis-server", "--version"]),
            },
            "elapsed_s": round(time.monotonic() - self.started, 1),
        }

    def service_facts(self):
        out = {}
        for name, s in self.services.items():
            out[name] = {
                "peak_rss_kib": status_kib(s.pids(), "VmHWM"),
                "idle_rss_kib": s.idle_rss_kib,
                "startup_ms": s.startup_ms,
            }
        for s in self.async_scenarios:
            if isinstance(s, CeleryRef):
                out["celery"] = {"peak_rss_kib": status_kib(s.pids(), "VmHWM"),
                                 "idle_rss_kib": None, "startup_ms": None}
        return out


def pip_version(venv, pkg):
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py):
        return None
    return tool_version([py, "-c", f"import importlib.metadata as m; print(m.version('{pkg}'))"])


def render(a):
    """Re-renders a stored result with the current report code."""
    with open(a.render) as f:
        result = json.load(f)
    quick = result["meta"]["mode"] == "quick"
    result["figures"] = rep.figures(result)
    result["problems"] = rep.problems(result, quick=quick)
    md = rep.markdown(result)
    for p in rep.write(result, md, a.results, a.readme, quick=quick):
        print(f"wrote {p}")
    return 0


def main(argv):
    a = parse_args(argv)
    if a.render:
        return render(a)
    b = Bench(a)
    fatal = None
    try:
        b.probe_wake("before")
        b.setup()
        b.warmup()
        b.rounds()
        b.queue_latency()
        b.count_syscalls()
    except Unavailable as e:
        fatal = str(e)
        b.say(f"FATAL: {e}")
    except LoadError as e:
        fatal = str(e)
        b.say(f"FATAL: {e}")
    facts = b.service_facts()
    warnings = b.warder_warnings()
    if not fatal:
        b.probe_wake("after")  # the services are idle by now
    result = {
        "meta": b.meta(),
        "targets": {t.name: {"label": t.label, "service": t.service.name if t.service else None,
                             "url_path": t.url.split("/", 3)[-1]} for t in b.targets},
        "async_scenarios": {s.name: {"label": s.label} for s in b.async_scenarios},
        "unavailable": b.unavailable,
        "notes": b.notes,
        "skipped_rates": b.skipped_rates,
        "services": facts,
        "warder_log_lines": b.log_lines,
        "warder_warnings": warnings,
        "async_queue_latency": b.queue_waits,
        "host_wake": b.wake,
        "syscalls_per_request": b.syscalls,
        "runs": b.runs,
        "fatal": fatal,
    }
    result["figures"] = rep.figures(result)
    problems = rep.problems(result, quick=a.quick)
    result["problems"] = problems
    md = rep.markdown(result)
    paths = rep.write(result, md, a.results, a.readme, quick=a.quick)
    print()
    print(md)
    for p in paths:
        b.say(f"wrote {os.path.relpath(p, ROOT) if p.startswith(ROOT) else p}")
    if problems:
        for p in problems:
            b.say(f"PROBLEM: {p}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
