#!/usr/bin/env bash
# Runs every available SparkOps service as its own process, the way a deployment does, against a
# local PostgreSQL and Redis (started by deploy/local/services.sh): each sparkops-<service>
# executable with its own certificate, SparkWire with mutual TLS between them, the gateway on
# http://localhost:8000. Ctrl-C stops them all gracefully.
#
#   deploy/local/run-distributed.sh            (or: make run-distributed)
#
# Environment: SPARKOPS_HOME (default .sparkops-distributed) holds certificates and logs;
# SPARKOPS_ADMIN_PASSWORD sets the first administrator's password (otherwise the project service
# prints a generated one in its log once); CONFIGURATION=release builds optimized binaries.
# Each process runs one event loop thread (NIO_SINGLETON_GROUP_LOOP_COUNT, default 1 here): eight
# processes on one machine outnumber its cores (docs/configuration.md, "Threads").
set -euo pipefail
export NIO_SINGLETON_GROUP_LOOP_COUNT=${NIO_SINGLETON_GROUP_LOOP_COUNT:-1}
cd "$(dirname "$0")/../.."

services=(project budget policy tool agent workflow run gateway)
home=${SPARKOPS_HOME:-.sparkops-distributed}
configuration=${CONFIGURATION:-debug}

eval "$(deploy/local/services.sh)"
swift build -c "$configuration"
bin=$(swift build -c "$configuration" --show-bin-path)
mkdir -p "$home/logs"
if [ ! -f "$home/certs/ca.pem" ]; then
	"$bin/sparkops" certs init --dir "$home/certs" \
		--services gateway,project,agent,workflow,run,tool,policy,budget,scheduler
fi

# The tool service seals secrets under master keys kept outside the database.
if [ ! -f "$home/keys/tool-master-keys" ]; then
	mkdir -p "$home/keys" && chmod 700 "$home/keys"
	(umask 077 && "$bin/sparkops" secret new-master-key >"$home/keys/tool-master-keys")
fi

pids=()
stop() {
	trap - INT TERM EXIT
	[ ${#pids[@]} -gt 0 ] && kill -TERM "${pids[@]}" 2>/dev/null || true
	wait
	echo "stopped"
}
trap stop INT TERM EXIT

for service in "${services[@]}"; do
	SPARKOPS_HOME="$home" SPARKOPS_LOG_FORMAT=json "$bin/sparkops-$service" >>"$home/logs/$service.log" 2>&1 &
	pids+=($!)
	echo "sparkops-$service: pid $!, log $home/logs/$service.log"
done

# Ready when every admin listener says so (services: migrated; gateway: connected to its peers).
for _ in $(seq 1 120); do
	ready=1
	for port in 9001 9006 9002 9003 9005 9000; do
		curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz" 2>/dev/null || ready=0
	done
	[ $ready = 1 ] && break
	for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || { echo "a service exited; see $home/logs" >&2; exit 1; }; done
	sleep 0.5
done
[ $ready = 1 ] || { echo "not ready after 60 s; see $home/logs" >&2; exit 1; }
grep -h -B1 "  password: " "$home/logs/project.log" || true
echo "SparkOps (distributed): API on http://localhost:8000, metrics on :9000 (gateway), :9001 (project), :9002 (agent), :9003 (workflow), :9005 (tool), :9004 (run), :9006 (policy) and :9007 (budget). Ctrl-C stops."
wait
