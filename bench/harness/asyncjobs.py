"""Async submit→complete throughput: warder's async predict (SQLite and
PostgreSQL) with the no-op upstream as the model, and Celery + Redis doing
the same no-op work as the reference.

warder: wrk submits `POST /models/bench/async_predict` as fast as it can for
the run's duration; the run ends when `async_queue_status` shows nothing
queued or in progress. jobs/s = accepted submits / (drained − start).
When the build has no async route (404/405), the report says so.
"""

import atexit
import json
import os
import secrets
import shutil
import socket
import string
import subprocess
import time
from datetime import datetime

from .loadgen import http_call
from .procs import descendants, wait_until
from .targets import JSON, REQUEST_BODY, Unavailable

HERE = os.path.dirname(os.path.abspath(__file__))
ASYNC_BODY = json.dumps({"model_input": json.loads(REQUEST_BODY)}, separators=(",", ":"))


def detect(svc):
    """None when warder has async predict, else why not."""
    status, _, body = http_call("POST", f"{svc.base}/models/bench/async_predict", ASYNC_BODY,
                                {"Authorization": svc.auth, **JSON})
    if status in (200, 201, 202):
        return None
    if status in (404, 405):
        return (f"async not available in this build "
                f"(POST /models/{{m}}/async_predict answered {status})")
    return f"async_predict answered {status}: {body[:200]!r}"


class WarderAsync:
    """One warder instance's async path as a benchmark scenario."""

    def __init__(self, name, label, svc):
        self.name, self.label, self.svc = name, label, svc

    def pids(self):
        return self.svc.pids()

    def _queue_empty(self):
        status, _, body = http_call("GET", f"{self.svc.base}/models/bench/async_queue_status",
                                    headers={"Authorization": self.svc.auth}, timeout=5)
        if status != 200:
            return False
        q = json.loads(body)
        return q.get("num_queued_requests", 1) == 0 and q.get("num_in_progress_requests", 1) == 0

    def run(self, wrk, seconds, conns, drain_timeout=120.0):
        started = time.monotonic()
        r = wrk.run(f"{self.svc.base}/models/bench/async_predict", ASYNC_BODY, self.svc.auth,
                    seconds, conns)
        accepted = r["requests"] - r["error_detail"].get("status", 0)
        # Polled every 50 ms: counting a deep queue is work for the store too.
        drained = wait_until(self._queue_empty, drain_timeout, interval=0.05)
        elapsed = time.monotonic() - started
        return {
            "submitted": accepted,
            "completed": accepted if drained else None,
            "seconds": elapsed,
            "submit_rps": r["rps"],
            "jobs_per_s": accepted / elapsed if drained else 0.0,
            "errors": r["errors"] + (0 if drained else 1),
            "error_detail": {**r["error_detail"], **({} if drained else {"not_drained": 1})},
            "requests": accepted,
        }

    def queue_latency(self, jobs=200, rate=100.0, timeout=60.0):
        """Queue latency (created → started) of jobs submitted below saturation."""
        ids, period = [], 1.0 / rate
        next_at = time.monotonic()
        for _ in range(jobs):
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += period
            status, _, body = http_call("POST", f"{self.svc.base}/models/bench/async_predict",
                                        ASYNC_BODY, {"Authorization": self.svc.auth, **JSON})
            if status in (200, 201, 202):
                ids.append(json.loads(body)["request_id"])
        wait_until(self._queue_empty, timeout, interval=0.05)
        waits = []
        for rid in ids:
            status, _, body = http_call("GET", f"{self.svc.base}/async_request/{rid}",
                                        headers={"Authorization": self.svc.auth})
            if status != 200:
                continue
            d = json.loads(body)
            try:
                created = datetime.fromisoformat(d["created_at"])
                begun = datetime.fromisoformat(d["started_at"])
                waits.append((begun - created).total_seconds() * 1e3)
            except (KeyError, TypeError, ValueError):
                continue
        if not waits:
            return None
        waits.sort()
        pick = lambda q: waits[min(len(waits) - 1, int(q * len(waits)))]  # noqa: E731
        return {"jobs": len(waits), "rate": rate, "p50_ms": pick(0.5), "p99_ms": pick(0.99)}


def fresh_pg_database(base_url):
    """A new database on the PostgreSQL server of `base_url`, dropped at exit."""
    psql = shutil.which("psql")
    if not psql:
        raise Unavailable("psql is not installed (needed to create the benchmark database)")
    name = "warder_bench_" + "".join(secrets.choice(string.ascii_lowercase) for _ in range(10))
    r = subprocess.run([psql, base_url, "-v", "ON_ERROR_STOP=1", "-qc", f"CREATE DATABASE {name}"],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise Unavailable(f"PostgreSQL at {base_url} is not usable: {r.stderr.strip()[:200]}")
    atexit.register(lambda: subprocess.run(
        [psql, base_url, "-qc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"],
        capture_output=True, timeout=30))
    return base_url.rsplit("/", 1)[0] + "/" + name


def _redis_ping(port):
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")


class CeleryRef:
    """Celery (prefork, concurrency 1) + its own Redis, both on the SUT core."""

    name, label = "celery", "Celery + Redis (reference)"

    def __init__(self, procs, venv, sut_core, load_core, tmp):
        self.procs, self.load_core, self.tmp = procs, load_core, tmp
        venv = os.path.abspath(venv)
        self.python = os.path.join(venv, "bin", "python")
        celery_bin = os.path.join(venv, "bin", "celery")
        if not os.path.exists(celery_bin):
            raise Unavailable("Celery is not installed in bench/.venv "
                              "(bench/run.sh installs it in full mode; quick mode skips the install)")
        redis_bin = shutil.which("redis-server")
        if not redis_bin:
            raise Unavailable("redis-server is not installed")
        from .procs import free_port
        port = free_port()
        self.redis = procs.start("redis", [redis_bin, "--port", str(port), "--bind", "127.0.0.1",
                                           "--save", "", "--appendonly", "no", "--dir", tmp],
                                 core=sut_core)
        if not wait_until(lambda: _redis_ping(port), 10, proc=self.redis):
            raise Unavailable("redis-server did not start")
        self.env = dict(os.environ, BENCH_REDIS=f"redis://127.0.0.1:{port}", PYTHONPATH=HERE)
        log = open(os.path.join(tmp, "celery.log"), "ab")
        self.worker = procs.start(
            "celery", [celery_bin, "-A", "celery_noop", "worker", "--pool", "prefork",
                       "--concurrency", "1", "--without-gossip", "--without-mingle",
                       "--without-heartbeat", "--loglevel", "WARNING", "-Q", "bench"],
            core=sut_core, env=self.env, cwd=HERE, stdout=log, stderr=subprocess.STDOUT)
        # Ready when one task makes the round trip (the client does that first).
        self._client(1, 90)

    def pids(self):
        return descendants(self.worker.pid) + [self.redis.pid]

    def _client(self, count, timeout):
        argv = self.procs.argv([self.python, os.path.join(HERE, "celery_client.py"),
                                str(count), str(timeout)], self.load_core)
        try:
            r = subprocess.run(argv, env=self.env, cwd=HERE, capture_output=True, text=True,
                               timeout=timeout + 120)
        except subprocess.TimeoutExpired as e:
            raise Unavailable("the Celery client did not finish") from e
        if r.returncode != 0:
            raise Unavailable(f"the Celery client failed: {r.stderr.strip()[-300:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])

    def run(self, count, timeout=120.0):
        d = self._client(count, timeout)
        d["errors"] = d["submitted"] - d["completed"]
        d["error_detail"] = {"not_completed": d["errors"]} if d["errors"] else {}
        d["requests"] = d["completed"]
        return d
