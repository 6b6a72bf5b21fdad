"""Load generators: wrk (closed loop) and oha (open loop at a fixed rate).

Both run pinned to the load core and return the same dict:
`{requests, seconds, rps, errors, error_detail, latency_us: {p50, p99, p999, ...}}`.
Also a tiny HTTP client for set-up calls (admin API, readiness checks).
"""

import http.client
import json
import os
import subprocess
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
WRK_LUA = os.path.join(HERE, "wrk.lua")


def http_call(method, url, body=None, headers=None, timeout=10.0):
    """One request on a fresh connection: `(status, headers, body bytes)`."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        data = body
        hdrs = dict(headers or {})
        if body is not None and not isinstance(body, (bytes, str)):
            data = json.dumps(body)
            hdrs.setdefault("Content-Type", "application/json")
        path = u.path or "/"
        if u.query:
            path += "?" + u.query
        conn.request(method, path, body=data, headers=hdrs)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


class LoadError(RuntimeError):
    """A load generator failed to run or printed nothing usable."""


class Wrk:
    """wrk, one thread, `conns` keep-alive connections, as fast as answers come."""

    name = "wrk"

    def __init__(self, path, procs, core):
        self.path, self.procs, self.core = path, procs, core

    def version(self):
        r = subprocess.run([self.path, "-v"], capture_output=True, text=True, timeout=10)
        return (r.stdout + r.stderr).strip().splitlines()[0] if (r.stdout + r.stderr) else "wrk"

    def run(self, url, body, auth, seconds, conns):
        env = dict(os.environ, BENCH_BODY=body, BENCH_AUTH=auth or "")
        argv = self.procs.argv(
            [self.path, "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "5s",
             "-s", WRK_LUA, url],
            self.core,
        )
        try:
            r = subprocess.run(argv, env=env, capture_output=True, text=True,
                               timeout=seconds + 30)
        except subprocess.TimeoutExpired as e:
            raise LoadError(f"wrk did not finish within {seconds + 30} s") from e
        line = next((x for x in r.stdout.splitlines() if x.startswith("WRKJSON ")), None)
        if r.returncode != 0 or line is None:
            raise LoadError(f"wrk failed (exit {r.returncode}): {r.stderr.strip()[:300]}")
        s = json.loads(line[len("WRKJSON "):])
        secs = s["duration_us"] / 1e6
        errors = sum(s["errors"].values())
        lat = s["latency_us"]
        return {
            "tool": "wrk",
            "requests": s["requests"],
            "seconds": secs,
            "rps": s["requests"] / secs if secs else 0.0,
            "errors": errors,
            "error_detail": {k: v for k, v in s["errors"].items() if v},
            "latency_us": {k: float(lat[k]) for k in ("p50", "p90", "p99", "p999", "max", "mean")},
        }


class Oha:
    """oha at a fixed rate with latency correction (no coordinated omission):
    each request's latency counts from when it was due, not when it was sent."""

    name = "oha"

    def __init__(self, path, procs, core):
        self.path, self.procs, self.core = path, procs, core

    def version(self):
        r = subprocess.run([self.path, "--version"], capture_output=True, text=True, timeout=10)
        return r.stdout.strip() or "oha"

    def run(self, url, body, auth, seconds, conns, rate):
        argv = [self.path, "--no-tui", "--output-format", "json",
                "-z", f"{seconds}s", "-q", str(rate), "--latency-correction",
                "-c", str(conns), "-m", "POST", "-T", "application/json", "-d", body]
        if auth:
            argv += ["-H", f"Authorization: {auth}"]
        argv.append(url)
        try:
            r = subprocess.run(self.procs.argv(argv, self.core), capture_output=True,
                               text=True, timeout=seconds + 30)
        except subprocess.TimeoutExpired as e:
            raise LoadError(f"oha did not finish within {seconds + 30} s") from e
        if r.returncode != 0:
            raise LoadError(f"oha failed (exit {r.returncode}): {r.stderr.strip()[:300]}")
        try:
            s = json.loads(r.stdout)
        except json.JSONDecodeError as e:
            raise LoadError(f"oha printed no JSON: {r.stdout[:200]!r}") from e
        statuses = {int(k): v for k, v in (s.get("statusCodeDistribution") or {}).items()}
        ok = sum(v for k, v in statuses.items() if 200 <= k < 300)
        # Requests still in flight at the deadline are cut off by oha itself:
        # they say nothing about the target, so they are not errors.
        errs = {k: v for k, v in (s.get("errorDistribution") or {}).items()
                if "deadline" not in k}
        bad_status = sum(v for k, v in statuses.items() if not 200 <= k < 300)
        pct = s.get("latencyPercentiles") or {}
        def us(key):
            v = pct.get(key)
            return float(v) * 1e6 if v is not None else float("nan")
        summary = s.get("summary") or {}
        return {
            "tool": "oha",
            "rate": rate,
            "requests": ok,
            "seconds": float(seconds),
            "rps": ok / seconds,
            "errors": bad_status + sum(errs.values()),
            "error_detail": {**{f"status_{k}": v for k, v in statuses.items()
                                if not 200 <= k < 300}, **errs},
            "latency_us": {"p50": us("p50"), "p90": us("p90"), "p99": us("p99"),
                           "p999": us("p99.9"),
                           "max": float(summary.get("slowest") or 0) * 1e6,
                           "mean": float(summary.get("average") or 0) * 1e6},
        }
