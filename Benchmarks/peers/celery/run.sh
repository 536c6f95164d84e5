#!/usr/bin/env bash
# Starts the Celery peer (one prefork worker process per core, acks_late, Redis broker), sends N
# chains of three no-op tasks, prints bench.py's JSON line, and stops the worker.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
count=${1:-1000}
serial=${2:-50}
export CELERY_BROKER_URL=${CELERY_BROKER_URL:-redis://127.0.0.1:6379/15}
[ -x "$here/.venv/bin/celery" ] || { python3 -m venv "$here/.venv" && "$here/.venv/bin/pip" install -q -r "$here/requirements.txt"; } >&2
cd "$here"
.venv/bin/python -c "import redis; redis.Redis.from_url('$CELERY_BROKER_URL').flushdb()"
.venv/bin/celery -A tasks worker --pool prefork --concurrency "$(nproc)" --loglevel WARNING >"$here/.worker.log" 2>&1 &
worker=$!
# SIGQUIT (a cold shutdown), then SIGKILL: a parent that ignores SIGTERM passes that on to its children.
trap 'kill -QUIT $worker 2>/dev/null; sleep 1; pkill -KILL -P $worker 2>/dev/null; kill -KILL $worker 2>/dev/null; wait $worker 2>/dev/null || true' EXIT
.venv/bin/python bench.py "$count" "$serial"
