"""Sends N chains of three no-op tasks, waits until every task ran, and prints one JSON line:
chains per second from the first send to the last task's end, the dispatch latency of the
second and third tasks (the previous task's end → this one's start), their handoff (the previous
task's end → this one's end) and send → first task started, in milliseconds."""
import json
import os
import sys
import time

import redis
from celery import chain

from tasks import BROKER, noop

count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
serial = int(sys.argv[2]) if len(sys.argv) > 2 else 50
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
dispatch, handoff, first = [], [], []
for index in range(count):
    key = str(index)
    created, started0, end0 = by_task[(key, 0)]
    first.append((started0 - created) * 1000)
    for step in (1, 2):
        _, started, end = by_task[(key, step)]
        _, _, previous_end = by_task[(key, step - 1)]
        dispatch.append((started - previous_end) * 1000)
        handoff.append((end - previous_end) * 1000)

# One chain at a time, each sent when the one before has ended: latencies without a backlog.
r.delete("bench:times")
for index in range(serial):
    created = time.time()
    chain(noop.si(f"s{index}", 0, created), noop.si(f"s{index}", 1, created), noop.si(f"s{index}", 2, created)).apply_async()
    while r.llen("bench:times") < 3 * (index + 1):
        time.sleep(0.0005)
rows = [row.decode().split(",") for row in r.lrange("bench:times", 0, -1)]
lone = {(row[0], int(row[1])): (float(row[2]), float(row[3]), float(row[4])) for row in rows}
lone_dispatch, lone_handoff, lone_first = [], [], []
for index in range(serial):
    key = f"s{index}"
    created, started0, _ = lone[(key, 0)]
    lone_first.append((started0 - created) * 1000)
    for step in (1, 2):
        lone_dispatch.append((lone[(key, step)][1] - lone[(key, step - 1)][2]) * 1000)
        lone_handoff.append((lone[(key, step)][2] - lone[(key, step - 1)][2]) * 1000)
print(json.dumps({
    "runs": count,
    "tasks": 3 * count,
    "seconds": max(ends) - start,
    "runs_per_second": count / (max(ends) - start),
    "dispatch_ms": sorted(dispatch),
    "handoff_ms": sorted(handoff),
    "first_ms": sorted(first),
    "lone_dispatch_ms": sorted(lone_dispatch),
    "lone_handoff_ms": sorted(lone_handoff),
    "lone_first_ms": sorted(lone_first),
}))
