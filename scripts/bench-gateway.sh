#!/usr/bin/env bash
# make bench-gateway: wrk against GET /api/v1/projects/{id} with an API key, through
# gateway -> SparkWire (mutual TLS) -> project service -> store, in two deployments:
#   dev        `sparkops dev`: one process, SQLite
#   postgres   sparkops-project and sparkops-gateway as separate processes, PostgreSQL and Redis
# Side by side, the baseline: the gateway process's own /healthz (same HTTP stack, no auth, no
# RPC, no store) under the same load; and in postgres mode the peer, the original design's
# stack: FastAPI + asyncpg under uvicorn with two workers (Benchmarks/peers/fastapi), serving
# the same authenticated read from the same database, started here and loaded the same way.
# Prints requests/s, p50/p99 latency, the ratios, CPU per request, and each process's RSS.
#
# In postgres mode SparkOps and the peer run side by side, idle while the other is loaded, and are
# loaded in turn ROUNDS times (SparkOps, peer, SparkOps, peer, ...), so that a machine whose speed
# drifts during the run (a shared or virtualized one) weighs on both alike; the ratio is taken
# from each one's requests over all rounds, and each round's ratio is printed too.
#
# Each distributed SparkOps process runs EVENT_LOOPS event loop threads (NIO_SINGLETON_GROUP_LOOP_COUNT;
# default 1, as docs/configuration.md advises when the processes outnumber the cores; 0 for NIO's
# default of one per core). `sparkops dev`, one process, keeps one per core.
#
# Environment: SECONDS_PER_RUN (default 20, per load), ROUNDS (3), EVENT_LOOPS (1), CONNECTIONS (64), THREADS (2), MODES ("dev postgres"),
# LEAN_UNARY (true; false sends every SparkWire call through GRPCCore's executors, to compare),
# PROFILE_DIR (when set, `perf record -g` of each SparkOps process during the load, written there).
# Beside each measured load it prints the CPU time each process used per request (SparkOps's,
# the peer's, PostgreSQL's and Redis's), and the machine's idle time per request.
# Rate limits are raised for the run (one key would otherwise be limited to its per-minute quota).
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${SECONDS_PER_RUN:-20}
rounds=${ROUNDS:-3}
event_loops=${EVENT_LOOPS:-1}
loops_env=()
[ "$event_loops" = 0 ] || loops_env=(env NIO_SINGLETON_GROUP_LOOP_COUNT="$event_loops")
connections=${CONNECTIONS:-64}
threads=${THREADS:-2}
modes=${MODES:-dev postgres}
sudo=$([ "$(id -u)" = 0 ] || echo sudo)
command -v wrk >/dev/null || $sudo apt-get install -y -qq wrk
python3 -c 'import ensurepip' 2>/dev/null || $sudo apt-get install -y -qq python3-venv
peer_dir=Benchmarks/peers/fastapi
[ -x "$peer_dir/.venv/bin/uvicorn" ] || { python3 -m venv "$peer_dir/.venv" && "$peer_dir/.venv/bin/pip" install -q -r "$peer_dir/requirements.txt"; } >&2
swift build -c release --product sparkops >&2
swift build -c release --product sparkops-project >&2
swift build -c release --product sparkops-gateway >&2
swift build -c release --product sparkops-workflow >&2
swift build -c release --product sparkops-tool >&2
swift build -c release --product sparkops-agent >&2
swift build -c release --product sparkops-policy >&2
swift build -c release --product sparkops-budget >&2
swift build -c release --product sparkops-run >&2
bin=$(swift build -c release --show-bin-path)

work=$(mktemp -d /tmp/sparkops-bench.XXXXXX)
pids=()
cleanup() { [ ${#pids[@]} -gt 0 ] && kill -TERM "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

password=bench-password-123
settings=(
	--set home="$work/home" --set log.level=warning --set admin.password=$password
	--set gateway.port=18000 --set gateway.adminPort=19000 --set project.port=17001 --set project.adminPort=19001 --set workflow.port=17003 --set workflow.adminPort=19003 --set tool.port=17005 --set tool.adminPort=19005 --set agent.port=17002 --set agent.adminPort=19002 --set policy.port=17006 --set policy.adminPort=19006 --set budget.port=17007 --set budget.adminPort=19007 --set run.port=17004 --set run.adminPort=19004
	--set tool.masterKeys=bench:$(head -c 32 /dev/urandom | base64)
	--set gateway.rateLimit.principalPerMinute=100000000 --set gateway.rateLimit.principalBurst=100000000
	--set gateway.rateLimit.ipPerMinute=100000000 --set gateway.rateLimit.ipBurst=100000000
	--set wire.leanUnary="${LEAN_UNARY:-true}"
)

json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
rss() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
peak() { awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
# CPU time (user + system, clock ticks) used so far by the processes named on stdin, one pid a line.
ticks() { local total=0 pid; while read -r pid; do [ -r "/proc/$pid/stat" ] && total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0))); done; echo "$total"; }
# The processes whose CPU is counted per request: name and pids (SparkOps's, the peer's, and the
# PostgreSQL, Redis and wrk processes both share).
cpu_groups() {
	local pid
	for pid in "$@"; do echo "$(tr '\0' ' ' </proc/$pid/cmdline | awk '{print $1}' | xargs basename) $pid $(pgrep -P "$pid" | xargs)"; done
	echo "postgres $(pgrep -x postgres | xargs)"
	echo "redis $(pgrep -x redis-server | xargs)"
}
# Runs `load` while counting each group's CPU; prints the load's line, then "name µs" per group on
# the following lines (CPU µs per request).
measured() {
	local groups before after line rps
	groups=$(cpu_groups "${measure_pids[@]}")
	before=$(while read -r name rest; do echo "$name $(tr ' ' '\n' <<<"$rest" | ticks)"; done <<<"$groups")
	local idle_before; idle_before=$(awk '/^cpu / {print $5 + $6}' /proc/stat)
	line=$(load "$@")
	after=$(while read -r name rest; do echo "$name $(tr ' ' '\n' <<<"$rest" | ticks)"; done <<<"$groups")
	after+=$'\n'"idle $(awk '/^cpu / {print $5 + $6}' /proc/stat)"
	before+=$'\n'"idle $idle_before"
	rps=${line%% *}
	echo "$line"
	paste -d' ' <(echo "$before") <(echo "$after") | awk -v rps="$rps" -v d="$duration" -v hz="$(getconf CLK_TCK)" \
		'{ printf "%s %.0f\n", $1, ($4 - $2) / hz * 1e6 / (rps * d) }'
}

print_rss() {
	local pid
	for pid in "$@"; do
		printf '          RSS %-18s %5s MiB now, %5s MiB peak\n' "$(tr '\0' ' ' </proc/$pid/cmdline | awk '{print $1}' | xargs basename)" "$(rss "$pid")" "$(peak "$pid")"
	done
}

# Loads $2 with the API key while counting the CPU of the processes named after it; prints the
# load's line, labelled $1, and the CPU per request; leaves the figures in last_rps, last_p50,
# last_p99 and last_errors.
measure_route() {
	local label=$1 target=$2
	shift 2
	measure_pids=("$@")
	measured "$target" -H "Authorization: Bearer $key" >"$work/measured.txt"
	read -r last_rps last_p50 last_p99 last_errors <"$work/measured.txt"
	printf '%-9s %-34s %9s %8s %8s %7s %s\n' "$mode" "$label" "$last_rps" "$last_p50" "$last_p99" "$last_errors" \
		"$(python3 -c "print(f'{$last_rps/$base_rps:.2f}x')")"
	echo "          CPU µs per request: $(tail -n +2 "$work/measured.txt" | awk '$2 > 0 {printf "%s%s %s", sep, $1, $2; sep=", "}')"
}

# wrk for $duration s against $1 with extra arguments; prints "rps p50_ms p99_ms errors".
load() {
	local url=$1; shift
	wrk -t"$threads" -c"$connections" -d"${duration}s" --latency "$@" "$url" >"$work/wrk.txt"
	python3 - "$work/wrk.txt" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def ms(label):
    m = re.search(r"^\s*" + label + r"\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
socket = re.search(r"Socket errors: (.*)", text)
print(f"{rps:.0f} {ms('50%'):.2f} {ms('99%'):.2f} {int(errors.group(1)) if errors else 0}{' (' + socket.group(1) + ')' if socket else ''}")
PY
}

# perf of every SparkOps process (call graphs) through the middle of the load that follows.
profile() {
	[ -n "${PROFILE_DIR:-}" ] || return 0
	mkdir -p "$PROFILE_DIR"
	local pid name
	for pid in "$@"; do
		name=$(tr '\0' ' ' </proc/$pid/cmdline | awk '{print $1}' | xargs basename)
		(sleep 2; perf record -q -F 499 -g -p "$pid" -o "$PROFILE_DIR/$mode-$name.data" -- sleep $((duration / 2)) >/dev/null 2>&1) &
	done
}

wait_ready() {
	for _ in $(seq 1 240); do
		curl -fsS -o /dev/null http://127.0.0.1:19000/readyz 2>/dev/null && curl -fsS -o /dev/null http://127.0.0.1:19001/readyz 2>/dev/null && curl -fsS -o /dev/null http://127.0.0.1:19003/readyz 2>/dev/null && curl -fsS -o /dev/null http://127.0.0.1:19005/readyz 2>/dev/null && curl -fsS -o /dev/null http://127.0.0.1:19002/readyz 2>/dev/null && curl -fsS -o /dev/null http://127.0.0.1:19006/readyz 2>/dev/null && return 0
		sleep 0.25
	done
	echo "not ready; logs in $work" >&2; cat "$work"/*.log >&2; exit 1
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "wrk: $threads threads, $connections connections, ${duration}s per run, on the same cores; wire.leanUnary=${LEAN_UNARY:-true}"
echo "event loops per distributed SparkOps process: $([ "$event_loops" = 0 ] && echo "one per core" || echo "$event_loops")"
printf '\n%-9s %-34s %9s %8s %8s %7s %s\n' mode target "req/s" "p50 ms" "p99 ms" errors "vs baseline"

for mode in $modes; do
	rm -rf "$work/home"
	pids=()
	case $mode in
	dev)
		"$bin/sparkops" dev "${settings[@]}" >"$work/dev.log" 2>&1 &
		pids=($!)
		;;
	postgres)
		eval "$(deploy/local/services.sh)"
		base=${SPARKOPS_DATABASE_URL%/*}
		psql "$SPARKOPS_DATABASE_URL" -qc "DROP DATABASE IF EXISTS sparkops_bench" -c "CREATE DATABASE sparkops_bench" >/dev/null
		"$bin/sparkops" certs init --dir "$work/home/certs" --services gateway,project,workflow,tool,agent,policy,budget,run >/dev/null
		extra=(--set database.url="$base/sparkops_bench" --set redis.url="$SPARKOPS_REDIS_URL" --set redis.keyPrefix=bench)
		"${loops_env[@]}" "$bin/sparkops-project" "${settings[@]}" "${extra[@]}" >"$work/project.log" 2>&1 &
		pids=($!)
		"${loops_env[@]}" "$bin/sparkops-workflow" "${settings[@]}" "${extra[@]}" >"$work/workflow.log" 2>&1 &
		pids+=($!)
		"${loops_env[@]}" "$bin/sparkops-tool" "${settings[@]}" "${extra[@]}" >"$work/tool.log" 2>&1 &
		pids+=($!)
		"${loops_env[@]}" "$bin/sparkops-agent" "${settings[@]}" "${extra[@]}" >"$work/agent.log" 2>&1 &
		pids+=($!)
		"${loops_env[@]}" "$bin/sparkops-policy" "${settings[@]}" "${extra[@]}" >"$work/policy.log" 2>&1 &
		pids+=($!)
		"${loops_env[@]}" "$bin/sparkops-budget" "${settings[@]}" "${extra[@]}" >"$work/budget.log" 2>&1 &
		pids+=($!)
		"${loops_env[@]}" "$bin/sparkops-run" "${settings[@]}" "${extra[@]}" >"$work/run.log" 2>&1 &
		pids+=($!)
		"${loops_env[@]}" "$bin/sparkops-gateway" "${settings[@]}" "${extra[@]}" >"$work/gateway.log" 2>&1 &
		pids+=($!)
		;;
	*) echo "unknown mode $mode" >&2; exit 1 ;;
	esac
	wait_ready

	token=$(curl -fsS http://127.0.0.1:18000/api/v1/auth/login -H 'Content-Type: application/json' \
		-d "{\"email\":\"admin@sparkops.local\",\"password\":\"$password\"}" | json '["accessToken"]')
	project=$(curl -fsS http://127.0.0.1:18000/api/v1/projects -H "Authorization: Bearer $token" \
		-H 'Content-Type: application/json' -d '{"name":"bench"}' | json '["id"]')
	key=$(curl -fsS "http://127.0.0.1:18000/api/v1/projects/$project/api-keys" -H "Authorization: Bearer $token" \
		-H 'Content-Type: application/json' -d '{"name":"bench","role":"ROLE_VIEWER"}' | json '["key"]')
	url="http://127.0.0.1:18000/api/v1/projects/$project"
	curl -fsS -o /dev/null -H "Authorization: Bearer $key" "$url"

	# Warm-up, then the baseline and the measured route.
	wrk -t1 -c8 -d2s -H "Authorization: Bearer $key" "$url" >/dev/null
	read -r base_rps base_p50 base_p99 base_errors < <(load http://127.0.0.1:19000/healthz)
	if [ "$mode" = dev ]; then
		printf '%-9s %-34s %9s %8s %8s %7s\n' "$mode" "baseline: gateway GET /healthz" "$base_rps" "$base_p50" "$base_p99" "$base_errors"
		profile "${pids[@]}"
		measure_route "GET /api/v1/projects/{id}, API key" "$url" "${pids[@]}"
		rps=$last_rps p99=$last_p99
		print_rss "${pids[@]}"
		kill -TERM "${pids[@]}"
		wait "${pids[@]}" 2>/dev/null || true
		pids=()
		dev_rps=$rps dev_p99=$p99
		continue
	fi

	# The peer, on the same database, project and key, started beside SparkOps; each is idle
	# while the other is loaded.
	spark_pids=("${pids[@]}")
	(cd "$peer_dir" && DATABASE_URL="$base/sparkops_bench" exec .venv/bin/uvicorn app:app --workers 2 --host 127.0.0.1 --port 18100 \
		--no-access-log --log-level warning) >"$work/fastapi.log" 2>&1 &
	peer_pid=$!
	pids+=("$peer_pid")
	peer_url="http://127.0.0.1:18100/api/v1/projects/$project"
	for _ in $(seq 1 120); do curl -fsS -o /dev/null -H "Authorization: Bearer $key" "$peer_url" 2>/dev/null && break; sleep 0.25; done
	curl -fsS -o /dev/null -H "Authorization: Bearer $key" "$peer_url" || { echo "the FastAPI peer did not answer:" >&2; cat "$work/fastapi.log" >&2; exit 1; }
	wrk -t1 -c8 -d2s -H "Authorization: Bearer $key" "$peer_url" >/dev/null
	printf '%-9s %-34s %9s %8s %8s %7s\n' "$mode" "baseline: gateway GET /healthz" "$base_rps" "$base_p50" "$base_p99" "$base_errors"
	spark_lines=() peer_lines=()
	for round in $(seq 1 "$rounds"); do
		[ "$round" = 1 ] && profile "${spark_pids[@]}"
		measure_route "GET /api/v1/projects/{id}, API key" "$url" "${spark_pids[@]}"
		rps=$last_rps p99=$last_p99
		spark_lines+=("$last_rps $last_p50 $last_p99 $last_errors")
		measure_route "peer: FastAPI + asyncpg, 2 workers" "$peer_url" "$peer_pid"
		peer_rps=$last_rps peer_p99=$last_p99
		peer_lines+=("$last_rps $last_p50 $last_p99 $last_errors")
		python3 -c "print(f'          round $round: SparkOps distributed vs FastAPI + asyncpg: {$rps/$peer_rps:.2f}x the requests/s, p99 {$p99/$peer_p99:.2f}x')"
	done
	print_rss "${spark_pids[@]}"
	total_rss=0 total_peak=0
	for pid in $peer_pid $(pgrep -P "$peer_pid"); do
		total_rss=$((total_rss + $(rss "$pid"))) total_peak=$((total_peak + $(peak "$pid")))
	done
	printf '          RSS %-18s %5s MiB now, %5s MiB peak (the parent and its workers)\n' uvicorn "$total_rss" "$total_peak"
	# Over all rounds: requests/s from each one's requests in all its loads; p99 the median round's.
	python3 - "${dev_rps:-}" "${dev_p99:-}" <<PY
import statistics, sys
spark = [list(map(float, line.split()[:3])) for line in """$(printf '%s\n' "${spark_lines[@]}")""".splitlines()]
peer = [list(map(float, line.split()[:3])) for line in """$(printf '%s\n' "${peer_lines[@]}")""".splitlines()]
rps, peer_rps = statistics.mean(r[0] for r in spark), statistics.mean(r[0] for r in peer)
p99, peer_p99 = statistics.median(r[2] for r in spark), statistics.median(r[2] for r in peer)
rounds = ", ".join(f"{s[0] / p[0]:.2f}x" for s, p in zip(spark, peer))
print(f"          over {len(spark)} rounds: SparkOps {rps:.0f} req/s, peer {peer_rps:.0f} req/s (each round: {rounds})")
print(f"          SparkOps distributed vs FastAPI + asyncpg: {rps / peer_rps:.2f}x the requests/s, p99 {p99 / peer_p99:.2f}x; target >= 1.5x and <= 0.5x")
if sys.argv[1]:
    print(f"          SparkOps dev (SQLite) vs FastAPI + asyncpg: {float(sys.argv[1]) / peer_rps:.2f}x the requests/s, p99 {float(sys.argv[2]) / peer_p99:.2f}x; target >= 2x and <= 0.5x")
PY
	kill -TERM "${pids[@]}"
	wait "${pids[@]}" 2>/dev/null || true
	pids=()
done
