"""Sends N chains of three no-op tasks, waits until every task ran, and prints one JSON line:
chains per second from the first send to the last task's end, the dispatch latency of the
second and third tasks (the previous task's end → this one's start) and send → first task
started, in milliseconds."""
import json
import os
import sys
import time

import redis
from celery import chain

from tasks import BROKER, noop

count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
r = redis.Redis.from_url(BROKER)
r.delete("bench:times")

# Warm-up: the worker's processes are up and connected.
chain(noop.si("warm", 0, time.time()), noop.si("warm", 1, time.time()), noop.si("warm", 2, time.time())).apply_async()
deadline = time.time() + 60
while r.llen("bench:times") < 3 and time.time() < deadline:
    time.sleep(0.05)
r.delete("bench:times")

start = time.time()
for index in range(count):
    created = time.time()
    chain(noop.si(index, 0, created), noop.si(index, 1, created), noop.si(index, 2, created)).apply_async()
deadline = time.time() + 600
while r.llen("bench:times") < 3 * count and time.time() < deadline:
    time.sleep(0.02)
rows = [row.decode().split(",") for row in r.lrange("bench:times", 0, -1)]
by_task = {(row[0], int(row[1])): (float(row[2]), float(row[3]), float(row[4])) for row in rows}
ends = [end for (_, _, end) in by_task.values()]
dispatch, first = [], []
for index in range(count):
    key = str(index)
    created, started0, end0 = by_task[(key, 0)]
    first.append((started0 - created) * 1000)
    for step in (1, 2):
        _, started, _ = by_task[(key, step)]
        _, _, previous_end = by_task[(key, step - 1)]
        dispatch.append((started - previous_end) * 1000)
print(json.dumps({
    "runs": count,
    "tasks": len(rows),
    "seconds": max(ends) - start,
    "runs_per_second": count / (max(ends) - start),
    "dispatch_ms": sorted(dispatch),
    "first_ms": sorted(first),
}))
