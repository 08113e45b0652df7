#!/bin/sh
# Every paired comparison of benches/, short versions, one line each at the end of the output:
#   ratio <bench>/<arm> <median ratio> (quartiles <q1>..<q3>)
# Usage: benches/summary.sh [chart]     (from the repository root; `chart` also rewrites
# benches/chart.svg from this run's peers and fleet benches, through benches/chart.py)
# The store and fleet benches need `redis-server` (and `redis-cli`) on the PATH and the store
# bench PostgreSQL's server programs (each starts its own servers on free loopback ports);
# without them their lines say `skipped`.
#
# The issue-22 goals, each a line of the last section:
#   ratio hot_path/bearer_auth                  ≤ 1.03 (quiet machine; also peers-hot/layer)
#   ratio peers-threads/{2,8}/layer             keep (CPU time per request / static headers)
#   ratio goal/storm-10000/layer_over_floor     ≤ 1.10; .../layer_over_fastest_peer ≤ 1
#   ratio goal/storm-100000/layer_over_floor    ≤ 1.10; .../layer_over_fastest_peer ≤ 1
#   ratio fleet/notified_written_to_last_ms/K   ≤ 5 (ms, K = 1, 4, 16, 64 replicas)
# Run it on a quiet machine (1-minute load below 1): the load average is printed beside them.
set -eu
cd "$(dirname "$0")/.."
out=$(mktemp)
trap 'rm -f "$out"' EXIT
export BENCH_QUICK=1
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
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
if command -v redis-server >/dev/null 2>&1; then
    run fleet
else
    echo "ratio fleet/notified_written_to_last_ms skipped: no redis-server" >>"$out"
fi
run peers
echo "load average before the benches: $load_before" >>"$out"
if [ "${1:-}" = chart ]; then
    grep '^chart ' "$out" | python3 benches/chart.py >benches/chart.svg
    echo "wrote benches/chart.svg"
fi
echo
echo "== every comparison (median ratio of interleaved rounds; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)) =="
grep '^ratio ' "$out"
echo
echo "== the issue-22 goals (load average before: $load_before) =="
grep -E '^ratio (hot_path/bearer_auth|peers-hot/layer|peers-threads/(2|8)/layer|goal/storm-|fleet/notified_written_to_last_ms/)' "$out"
