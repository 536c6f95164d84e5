#!/usr/bin/env bash
# make bench-wire-counts: what one unary call costs each side, counted exactly rather than timed.
# For each transport, a server child and a client child of WireBenchmarks run under `perf stat`
# while the client makes CALLS (default 20000) calls one at a time; the counts are divided by the
# number of calls:
#   task enqueues   swift_task_enqueue: a task scheduled to run (a resume, a hop, a new task)
#   tasks created   swift_task_create: tasks and child tasks
#   mallocs         libc malloc: heap allocations (Swift objects, closures, buffers)
#   syscalls        every system call (reads, writes, epoll, futex wake-ups)
#   switches        context switches: a thread that slept and was woken
#   CPU µs          task-clock
# Needs root (uprobes) and perf; results go to stdout as a Markdown table.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/Benchmarks/.build/release/WireBenchmarks"
calls=${CALLS:-20000}
transports=${TRANSPORTS:-"lean sparkwire inprocess"}
concurrency=/opt/swift/usr/lib/swift/linux/libswift_Concurrency.so
[ -f "$concurrency" ] || concurrency=$(ldd "$bin" | awk '/libswift_Concurrency/ {print $3}')
libc=$(ldd "$bin" | awk '/libc.so.6/ {print $3}')

perf probe -l 2>/dev/null | grep -q 'swift_task_enqueue' || perf probe -q -x "$concurrency" --add swift_task_enqueue
perf probe -l 2>/dev/null | grep -q 'swift_task_create' || perf probe -q -x "$concurrency" --add swift_task_create
perf probe -l 2>/dev/null | grep -q 'probe_libc:malloc' || perf probe -q -x "$libc" --add malloc
events=task-clock,context-switches,raw_syscalls:sys_enter,probe_libswift_Concurrency:swift_task_enqueue,probe_libswift_Concurrency:swift_task_create,probe_libc:malloc

work=$(mktemp -d)
trap 'rm -rf "$work"; jobs -p | xargs -r kill 2>/dev/null || true' EXIT
"$bin" certs "$work/certs"

# Prints "enqueues creates mallocs syscalls switches cpu_us" per call from a perf stat -x, file.
per_call() {
    awk -F, -v n="$calls" '
        $3 ~ /task-clock/ { cpu = $1 }
        $3 ~ /context-switches/ { cs = $1 }
        $3 ~ /sys_enter/ { sc = $1 }
        $3 ~ /swift_task_enqueue/ { en = $1 }
        $3 ~ /swift_task_create/ { cr = $1 }
        $3 ~ /malloc/ { ma = $1 }
        END { printf "%.1f | %.2f | %.1f | %.1f | %.2f | %.1f", en / n, cr / n, ma / n, sc / n, cs / n, cpu * 1000 / n }' "$1"
}

echo "| transport | side | task enqueues | tasks created | mallocs | syscalls | context switches | CPU µs |"
echo "|---|---|---:|---:|---:|---:|---:|---:|"
for transport in $transports; do
    mkfifo "$work/server.in" "$work/client.in"
    "$bin" serve "$transport" "$work/certs" < "$work/server.in" > "$work/server.out" &
    server=$!
    exec 3> "$work/server.in"
    until grep -q '^PORT ' "$work/server.out" 2>/dev/null; do sleep 0.1; done
    port=$(awk '/^PORT / {print $2}' "$work/server.out")
    "$bin" count "$transport" "$port" "$calls" "$work/certs" < "$work/client.in" > "$work/client.out" &
    client=$!
    exec 4> "$work/client.in"
    until grep -q '^READY' "$work/client.out" 2>/dev/null; do sleep 0.1; done
    perf stat -x, -e "$events" -p "$client" -o "$work/client.stat" &
    client_perf=$!
    server_perf=""
    if [ "$transport" != inprocess ]; then
        perf stat -x, -e "$events" -p "$server" -o "$work/server.stat" &
        server_perf=$!
    fi
    sleep 1
    echo >&4
    until grep -q '^DONE' "$work/client.out" 2>/dev/null; do sleep 0.1; done
    kill -INT "$client_perf" $server_perf
    wait "$client_perf" $server_perf || true
    echo >&4; exec 4>&-
    wait "$client" || true
    echo stop >&3; exec 3>&-
    wait "$server" || true
    if [ "$transport" = inprocess ]; then
        echo "| $transport | client and server | $(per_call "$work/client.stat") |"
    else
        echo "| $transport | client | $(per_call "$work/client.stat") |"
        echo "| $transport | server | $(per_call "$work/server.stat") |"
    fi
    rm -f "$work/server.in" "$work/client.in" "$work/"*.out "$work/"*.stat
done
