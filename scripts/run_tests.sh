#!/usr/bin/env bash
# make test's pytest runs: the tests that boot guests (the `guests` marker: QEMU under TCG, mostly
# one busy process waiting on cloud-init) run as a second pytest process beside the rest, at a
# lower priority, so that the rest keeps its speed and the guests use the time it leaves. The
# guests' output goes to build/test-guests.log and is printed after the rest's. Exit status: the
# first failing run's (pytest's 5, no test collected, included).
#
#   scripts/run_tests.sh [PYTEST-ARGS...]     (extra arguments go to both runs)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
mkdir -p build
LOG=build/test-guests.log
GUEST_NICE=${GUEST_NICE:-5}

export VROUTER_REQUIRE_GUESTS=1
nice -n "$GUEST_NICE" "$PY" -m pytest -q -ra --durations=10 -m guests "$@" tests >"$LOG" 2>&1 &
guests=$!
trap 'kill -INT $guests 2>/dev/null; wait $guests 2>/dev/null; exit 130' INT TERM
echo "the guests' tests run beside the others (pid $guests, output in $LOG when they end)"

start=$(date +%s)
"$PY" -m pytest -q -ra --durations=25 -m "not guests" "$@" tests
rest=$?
echo "the other tests ended after $(($(date +%s) - start)) s (exit $rest); waiting for the guests' tests"
wait $guests
guest_rc=$?
trap - INT TERM
echo "---- the guests' tests ($LOG) ----"
cat "$LOG"
echo "the guests' tests ended after $(($(date +%s) - start)) s (exit $guest_rc)"
if [ "$rest" -ne 0 ]; then exit "$rest"; fi
exit "$guest_rc"
