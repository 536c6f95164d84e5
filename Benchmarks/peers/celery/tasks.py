"""The original design's orchestration stack for make bench-runs: Celery 5 on Redis, acks_late,
one prefork worker process per core. A run is a chain of three no-op tasks; each records when it
started and ended (one Redis RPUSH), which is the only history Celery keeps."""
import os
import time

import redis
from celery import Celery

BROKER = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/15")
app = Celery("sparkops_peer", broker=BROKER)
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
_redis = None


def record(chain, index, created, started):
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(BROKER)
    _redis.rpush("bench:times", f"{chain},{index},{created},{started},{time.time()}")


@app.task(name="noop")
def noop(chain, index, created):
    started = time.time()
    record(chain, index, created, started)
