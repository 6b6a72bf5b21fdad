"""The Celery reference: a no-op task on a Redis broker with a Redis result
backend (results stored, like warder stores async outputs).

Imported by the worker (`celery -A celery_noop worker`) and by celery_client.py.
"""

import os

from celery import Celery

_redis = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379")

app = Celery("bench", broker=f"{_redis}/0", backend=f"{_redis}/1")
app.conf.update(
    task_default_queue="bench",
    broker_connection_retry_on_startup=True,
    result_expires=3600,
    worker_hijack_root_logger=False,
)


@app.task(name="bench.noop")
def noop(model_input):
    """Does nothing and returns its input, as the fake model does."""
    return model_input
