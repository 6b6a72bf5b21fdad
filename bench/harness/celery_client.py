"""Submits COUNT no-op Celery tasks as fast as it can and waits until every
result is stored; prints one JSON line: submitted, completed, seconds, jobs_per_s.

Completion is read from the result backend (number of keys in its Redis db),
so the client adds no per-task polling of its own.
Usage: celery_client.py COUNT TIMEOUT_S (BENCH_REDIS in the environment).
"""

import json
import sys
import time

import redis

from celery_noop import app, noop

count, timeout = int(sys.argv[1]), float(sys.argv[2])
backend = redis.Redis.from_url(app.conf.result_backend)
payload = {"messages": [{"role": "user", "content": "Say hello to the benchmark."}]}

# One task end to end first: the worker is up and connected.
noop.apply_async((payload,)).get(timeout=60)
backend.flushdb()

started = time.monotonic()
for _ in range(count):
    noop.apply_async((payload,))
submitted = time.monotonic()
done = 0
deadline = started + timeout
while time.monotonic() < deadline:
    done = backend.dbsize()
    if done >= count:
        break
    time.sleep(0.02)
finished = time.monotonic()
print(json.dumps({
    "submitted": count,
    "completed": done,
    "submit_seconds": submitted - started,
    "seconds": finished - started,
    "jobs_per_s": done / (finished - started),
}))
