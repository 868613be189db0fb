#!/usr/bin/env bash
# Publish→deliver latency across instances sharing Redis, next to one instance (README
# "Scaling out"). Starts a redis-server and two release sigrelay instances on loopback, runs
# benches/load/'s `latency` scenario three ways, prints one table, stops what it started.
#
#   benches/cluster.sh            # 1,000 rooms × 2 subscribers, 5,000 msg/s for 10 s
#
# Env: ROOMS (1000), RATE (5000), DURATION (10), CLUSTER_PORT (18090: redis on it, the
# instances on +1 and +2).
set -euo pipefail
cd "$(dirname "$0")/.."

ROOMS=${ROOMS:-1000}
RATE=${RATE:-5000}
DURATION=${DURATION:-10}
BASE=${CLUSTER_PORT:-18090}
REDIS_PORT=$BASE
A_PORT=$((BASE + 1))
B_PORT=$((BASE + 2))
PIDS=()

stop() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop EXIT

wait_port() { # port, bounded to ~10 s
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "cluster: nothing listening on 127.0.0.1:$1" >&2
    return 1
}

command -v redis-server >/dev/null || { echo "cluster: needs redis-server (apt-get install redis-server)" >&2; exit 1; }
cargo build --release -q
cargo bench --bench load --no-run -q 2>/dev/null

redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no >/dev/null &
PIDS+=($!)
wait_port "$REDIS_PORT"
for port in "$A_PORT" "$B_PORT"; do
    target/release/sigrelay --bind "127.0.0.1:$port" --no-qr --log warn \
        --redis "redis://127.0.0.1:$REDIS_PORT/" \
        --max-connections 1000000 --max-connections-per-ip 1000000 \
        --post-rate 1e9 --post-burst 1e9 >/dev/null &
    PIDS+=($!)
    wait_port "$port"
done
A_PID=${PIDS[1]}
B_PID=${PIDS[2]}

run() { # label, then load's flags; prints "label | figures"
    local label=$1
    shift
    local out latency lost
    out=$(cargo bench -q --bench load -- latency --rooms "$ROOMS" --rate "$RATE" \
        --duration "$DURATION" "$@" 2>&1)
    latency=$(echo "$out" | grep -E '^\| latency .*p50' | awk -F'|' '{print $3}' | xargs)
    lost=$(echo "$out" | grep -E '^\| latency .*lost' | grep -oE 'lost [0-9]+' | head -1)
    printf '| %s | %s | %s |\n' "$label" "${latency:-failed}" "${lost:-?}"
}

sub() { echo "http://127.0.0.1:$1/stream?channel={room}"; }
pub() { echo "http://127.0.0.1:$1/channel/send/{room}/{type}"; }

echo "| setup | latency ($ROOMS rooms × 2 subscribers, $RATE msg/s, ${DURATION} s) | lost |"
echo "|---|---|---|"
run "one instance, in-memory hub"
run "one instance, --redis (subscriber and publisher on A)" \
    --sub-url "$(sub "$A_PORT")" --pub-url "$(pub "$A_PORT")" --server-pid "$A_PID"
run "two instances, --redis (subscribers on A, publishes on B)" \
    --sub-url "$(sub "$A_PORT")" --pub-url "$(pub "$B_PORT")" --server-pid "$A_PID,$B_PID"
