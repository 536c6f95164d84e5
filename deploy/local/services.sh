#!/usr/bin/env bash
# Starts a local PostgreSQL and Redis on loopback, installing them when missing (Debian), creates
# the `sparkops` role and database, and prints the environment that points SparkOps at them:
#
#   eval "$(deploy/local/services.sh)"          # SPARKOPS_DATABASE_URL, SPARKOPS_REDIS_URL
#   eval "$(deploy/local/services.sh --test)"   # SPARKOPS_TEST_DATABASE_URL, SPARKOPS_TEST_REDIS_URL
#
# Needs root or sudo. Idempotent: servers already running are reused. For development machines:
# the role's password is `sparkops`, and the servers listen on 127.0.0.1 only.
set -euo pipefail
sudo=$([ "$(id -u)" = 0 ] || echo sudo)
log() { echo "services: $*" >&2; }
database=sparkops prefix=SPARKOPS_
if [ "${1:-}" = --test ]; then database=sparkops_test prefix=SPARKOPS_TEST_; fi

missing=$(for p in postgresql redis-server; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
	log "installing" $missing
	$sudo apt-get update -qq >&2
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >&2
fi

# PostgreSQL: the packaged cluster, started without systemd.
version=$(ls /usr/lib/postgresql | sort -V | tail -1)
if ! pg_lsclusters -h | awk '{print $1, $2}' | grep -q "^$version main$"; then
	$sudo pg_createcluster "$version" main >&2
fi
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
	$sudo pg_ctlcluster "$version" main start >&2 || true
fi
for _ in $(seq 1 60); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.5; done
pg_isready -h 127.0.0.1 -p 5432 >&2
psql_admin() {
	if [ "$(id -u)" = 0 ]; then
		su postgres -c "psql -v ON_ERROR_STOP=1 -qtA $(printf '%q ' "$@")"
	else
		sudo -u postgres psql -v ON_ERROR_STOP=1 -qtA "$@"
	fi
}
# Room for many SparkOps processes (each service holds a pool) and, with --test, for the test
# suite's clusters running side by side: at least 500 connections, which needs a restart once.
if [ "$(psql_admin -c "SHOW max_connections")" -lt 500 ]; then
	psql_admin -c "ALTER SYSTEM SET max_connections = 500" >&2
	$sudo pg_ctlcluster "$version" main restart >&2
	for _ in $(seq 1 60); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.5; done
fi
if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = 'sparkops'")" != 1 ]; then
	psql_admin -c "CREATE ROLE sparkops LOGIN SUPERUSER PASSWORD 'sparkops'" >&2
fi
if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$database'")" != 1 ]; then
	psql_admin -c "CREATE DATABASE $database OWNER sparkops" >&2
fi

# Redis: loopback only, nothing persisted.
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
	redis-server --bind 127.0.0.1 --port 6379 --save '' --appendonly no --daemonize yes >&2
	for _ in $(seq 1 40); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.25; done
fi
redis-cli -h 127.0.0.1 -p 6379 ping >&2

echo "export ${prefix}DATABASE_URL=postgres://sparkops:sparkops@127.0.0.1:5432/$database"
echo "export ${prefix}REDIS_URL=redis://127.0.0.1:6379/0"
