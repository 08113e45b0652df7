#!/bin/sh
# Every paired comparison of benches/, short versions, one line each at the end of the output:
#   ratio <bench>/<arm> <median ratio> (quartiles <q1>..<q3>)
# Usage: benches/summary.sh [chart]     (from the repository root; `chart` also rewrites
# benches/chart.svg from this run's peers bench, through benches/chart.py)
# The store comparison needs `redis-server` on the PATH and PostgreSQL's server programs (the
# bench starts its own servers on free loopback ports); without them its lines say `skipped`.
set -eu
cd "$(dirname "$0")/.."
out=$(mktemp)
trap 'rm -f "$out"' EXIT
export BENCH_QUICK=1
run() {
    # A criterion filter that matches nothing: only the paired comparisons run.
    cargo bench --all-features --bench "$1" -- skip-criterion-benches 2>&1 | tee -a "$out"
}
run hot_path
run contention
run end_to_end
run dpop
if command -v redis-server >/dev/null 2>&1 && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    run store
else
    echo "ratio store/cold_start_from_redis skipped: no redis-server or PostgreSQL" >>"$out"
    echo "ratio store/cold_start_from_postgres skipped: no redis-server or PostgreSQL" >>"$out"
fi
run peers
if [ "${1:-}" = chart ]; then
    grep '^chart ' "$out" | python3 benches/chart.py >benches/chart.svg
    echo "wrote benches/chart.svg"
fi
echo
echo "== every comparison (median ratio of interleaved rounds; load average: $(cut -d' ' -f1-3 /proc/loadavg)) =="
grep '^ratio ' "$out"
