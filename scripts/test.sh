#!/usr/bin/env bash
# Runs the built test suite within a time limit, so that a test that never returns fails the run
# instead of stalling it. When the run fails, it ends by listing the tests that failed and those
# that started and never finished, where the last lines of a long log show them.
#
#   scripts/test.sh [swift test options]     SPARKOPS_TEST_TIME_LIMIT=seconds (default 2400)
set -uo pipefail
cd "$(dirname "$0")/.."
limit="${SPARKOPS_TEST_TIME_LIMIT:-2400}"
log="$(mktemp)"
# Every process the tests start is listed here (its id and start time), so that what a failed run
# leaves behind is stopped by id: never by name, which would reach a `make run` beside the tests.
export SPARKOPS_TEST_PIDS="$(mktemp)"
trap 'rm -f "$log" "$SPARKOPS_TEST_PIDS"' EXIT

# Stops the listed processes that still run with the start time they were listed with.
stop_started() {
    local pid start stat
    while read -r pid start; do
        stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || continue
        # Field 22 (the start time) counted after the command name's closing parenthesis.
        [ "$(echo "${stat##*)}" | awk '{print $20}')" = "$start" ] && kill -KILL "$pid" 2>/dev/null
    done < "$SPARKOPS_TEST_PIDS"
}

# timeout signals its whole process group: the test runner and the servers the tests started.
# stdbuf keeps the output line-buffered through a pipe, so that a killed run still shows it.
timeout --kill-after=30 "$limit" stdbuf -oL -eL "${SWIFT:-swift}" test --skip-build "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
[ "$status" -eq 0 ] && exit 0
# The test runner has a process group of its own, and the services it started outlive it: stop
# those, by id.
stop_started

echo
[ "$status" -eq 124 ] || [ "$status" -eq 137 ] && echo "The tests did not finish within $limit s."
echo "Tests that failed:"
grep -E '^✘ Test .* failed' "$log" | sed 's/^/  /' || echo "  (none reported)"
echo "Tests that started and did not finish:"
# Display names can repeat across suites, so starts and ends are counted per name.
awk '
    /^◇ Test ".*" started\.$/ { name = $0; sub(/^◇ Test "/, "", name); sub(/" started\.$/, "", name); open[name]++ }
    /^(✔|✘) Test ".*" (passed|failed)/ { name = $0; sub(/^[^"]*"/, "", name); sub(/" (passed|failed).*$/, "", name); open[name]-- }
    END { found = 0; for (name in open) if (open[name] > 0) { print "  " name; found = 1 }; if (!found) print "  (none)" }
' "$log"
exit "$status"
