#!/usr/bin/env bash
# The two anchors of issue 5 on loopback, for benches/load/ to measure next to sigrelay:
#   nginx + Debian's libnginx-mod-nchan   (/pub?id=ROOM, /sub?id=ROOM as EventSource)
#   the seed stack: flask + flask-sse + gunicorn (gevent worker) + redis-server, in a venv
#
#   benches/anchors.sh start   # install what is missing, start both, print the load commands
#   benches/anchors.sh stop    # stop what `start` started (by the PIDs it recorded)
#   benches/anchors.sh compare # start, run `load all` on sigrelay, nchan and the seed, then
#                              # two more latency, throughput and nosub rounds on sigrelay
#                              # and nchan (medians of three printed at the end), stop.
#                              # The seed runs at small sizes (~300-500 publishes/s). ~8 min.
#
# Env: ANCHORS_DIR (state, default /tmp/sigrelay-anchors), NCHAN_PORT (18081),
# SEED_PORT (18082), REDIS_PORT (18079), SEED_WORKERS (1).
set -euo pipefail

DIR=${ANCHORS_DIR:-/tmp/sigrelay-anchors}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
NCHAN_PORT=${NCHAN_PORT:-18081}
SEED_PORT=${SEED_PORT:-18082}
REDIS_PORT=${REDIS_PORT:-18079}
SEED_WORKERS=${SEED_WORKERS:-1}
NCHAN_SO=/usr/lib/nginx/modules/ngx_nchan_module.so

wait_port() { # host:port, bounded to ~10 s
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "anchors: nothing listening on $1" >&2
    return 1
}

install() {
    if [ ! -e "$NCHAN_SO" ] || ! command -v nginx >/dev/null || ! command -v redis-server >/dev/null; then
        apt-get update -qq
        # No service start in a container; the nginx we run uses its own config below.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            nginx libnginx-mod-nchan redis-server >/dev/null
    fi
    "$ROOT/tests/seed/venv.sh" "$DIR/venv"
}

start_nchan() {
    mkdir -p "$DIR/nginx"
    cat >"$DIR/nginx/nginx.conf" <<EOF
load_module $NCHAN_SO;
worker_processes auto;
worker_rlimit_nofile 20000;
pid $DIR/nginx/nginx.pid;
error_log $DIR/nginx/error.log warn;
events { worker_connections 19900; }
http {
    access_log off;
    # Room for what the benchmark keeps (64 messages in each of thousands of rooms, several
    # rounds): with the default 32 MiB nchan answers 500 after a few rounds.
    nchan_max_reserved_memory 512M;
    keepalive_requests 100000000;
    client_body_temp_path $DIR/nginx;
    server {
        listen 127.0.0.1:$NCHAN_PORT backlog=4096;
        location = /sub {
            nchan_subscriber eventsource;
            nchan_channel_id \$arg_id;
        }
        location = /pub {
            nchan_publisher;
            nchan_channel_id \$arg_id;
            nchan_message_buffer_length 64;
        }
    }
}
EOF
    nginx -c "$DIR/nginx/nginx.conf" -p "$DIR/nginx"
    wait_port "127.0.0.1:$NCHAN_PORT"
}

start_seed() {
    mkdir -p "$DIR/seed"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --maxclients 19000 --daemonize yes --pidfile "$DIR/seed/redis.pid" \
        --logfile "$DIR/seed/redis.log"
    wait_port "127.0.0.1:$REDIS_PORT"
    # The seed's app as the migration tests run it (tests/seed/app.py).
    (cd "$DIR/seed" && ulimit -n 20000 && REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
        "$DIR/venv/bin/gunicorn" -k gevent --chdir "$ROOT/tests/seed" --no-control-socket \
        -w "$SEED_WORKERS" --worker-connections 19000 -b "127.0.0.1:$SEED_PORT" \
        --daemon --pid "$DIR/seed/gunicorn.pid" --log-file "$DIR/seed/gunicorn.log" app:app)
    wait_port "127.0.0.1:$SEED_PORT"
}

restart_nchan() { # a fresh nginx: nchan keeps every room's messages for an hour
    local m
    m=$(cat "$DIR/nginx/nginx.pid")
    kill "$m"
    for _ in $(seq 100); do kill -0 "$m" 2>/dev/null || break; sleep 0.1; done
    start_nchan
}

pids_of() { # master pid file -> master,children
    local m
    m=$(cat "$1")
    echo "$m$(ps --ppid "$m" -o pid= | tr -d ' ' | sed 's/^/,/' | tr -d '\n')"
}

NCHAN_URLS=(--sub-url "http://127.0.0.1:$NCHAN_PORT/sub?id={room}" --pub-url "http://127.0.0.1:$NCHAN_PORT/pub?id={room}")
SEED_URLS=(--sub-url "http://127.0.0.1:$SEED_PORT/stream?channel={room}" --pub-url "http://127.0.0.1:$SEED_PORT/channel/send/{room}/{type}")

start() {
    mkdir -p "$DIR"
    install
    start_nchan
    start_seed
    sleep 1
    nginx_pids=$(pids_of "$DIR/nginx/nginx.pid")
    seed_pids="$(pids_of "$DIR/seed/gunicorn.pid"),$(cat "$DIR/seed/redis.pid")"
}

stop() {
    for f in "$DIR/nginx/nginx.pid" "$DIR/seed/gunicorn.pid" "$DIR/seed/redis.pid"; do
        if [ -s "$f" ]; then kill "$(cat "$f")" 2>/dev/null || true; fi
    done
}

load() { # label, load args...; also appended to $DIR/compare.log
    echo "== $1" | tee -a "$DIR/compare.log"
    shift
    cargo bench -q --bench load -- "$@" 2>&1 | sed -n '/^target:/,$p' | tee -a "$DIR/compare.log"
}

# The median over the rounds in compare.log of each throughput and latency figure and of the
# no-subscriber publish / hyper hello ratio, per server, next to sigrelay / nchan. A throughput
# round with errors or lost messages counts as 0 pub/s; latency rounds' losses are summed.
medians() {
    python3 - "$DIR/compare.log" <<'PY'
import re, statistics, sys
tput, lat, lost, nosub, server = {}, {}, {}, {}, None
for line in open(sys.argv[1]):
    if line.startswith("== "):
        server = line[3:].split()[0]
        continue
    m = re.match(r"\| (throughput \d+ rooms) x 2, \d+ publishers\s*\| (\d+) pub/s, .*errors (\d+), .*lost (\d+)", line)
    if m and server:
        clean = m.group(3) == "0" and m.group(4) == "0"
        tput.setdefault((m.group(1), server), []).append(int(m.group(2)) if clean else 0)
    m = re.match(r"\| latency (\d+) rooms .*\| p50 ([\d.]+) / p99 ([\d.]+) / p99.9 ([\d.]+) / max ([\d.]+) ms", line)
    if m and server:
        lat.setdefault((m.group(1), server), []).append([float(x) for x in m.groups()[1:]])
    m = re.match(r"\| no-subscriber publish / hyper hello\s*\| ([\d.]+)x", line)
    if m and server:
        nosub.setdefault(server, []).append(float(m.group(1)))
    m = re.match(r"\| latency (\d+) rooms .*lost (\d+)", line)
    if m and server:
        lost[(m.group(1), server)] = lost.get((m.group(1), server), 0) + int(m.group(2))
def med(xs):
    return statistics.median(xs)
print("\nmedians of the rounds (64 publishers, 2 subscribers per room):")
print("| figure | sigrelay | nchan | sigrelay / nchan | rounds (sigrelay; nchan) |")
print("|---|---|---|---|---|")
for fig in sorted({f for f, _ in tput}, key=lambda f: int(f.split()[1])):
    s, n = tput.get((fig, "sigrelay"), []), tput.get((fig, "nchan"), [])
    if s and n:
        ms, mn = med(s), med(n)
        ratio = f"{ms / mn:.2f}x" if mn else "-"
        print(f"| {fig}, pub/s | {ms:.0f} | {mn:.0f} | {ratio} | {', '.join(map(str, s))}; {', '.join(map(str, n))} |")
for rooms in sorted({r for r, _ in lat}, key=int):
    s, n = lat.get((rooms, "sigrelay"), []), lat.get((rooms, "nchan"), [])
    if not (s and n):
        continue
    for i, name in enumerate(["p50", "p99", "p99.9", "max"]):
        ms, mn = med([r[i] for r in s]), med([r[i] for r in n])
        ratio = f"{ms / mn:.2f}x" if mn else "-"
        rounds = f"{', '.join(str(r[i]) for r in s)}; {', '.join(str(r[i]) for r in n)}"
        print(f"| latency {rooms} rooms, {name} ms | {ms:.2f} | {mn:.2f} | {ratio} | {rounds} |")
    print(f"| latency {rooms} rooms, lost in all rounds | {lost.get((rooms, 'sigrelay'), '?')} | {lost.get((rooms, 'nchan'), '?')} | | |")
s, n = nosub.get("sigrelay", []), nosub.get("nchan", [])
if s and n:
    print(f"| publish, no subscribers, / hyper hello | {med(s):.2f}x | {med(n):.2f}x | | {', '.join(map(str, s))}; {', '.join(map(str, n))} |")
PY
}

case "${1:-}" in
compare)
    cd "$(dirname "$0")/.."
    cargo build --release  # a no-op when fresh; never measure a stale binary
    cargo bench -q --bench load --no-run
    start
    trap stop EXIT
    : >"$DIR/compare.log"
    echo "machine: $(nproc) cores, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
    load sigrelay all
    load nchan all "${NCHAN_URLS[@]}" --server-pid "$nginx_pids"
    load seed all --rooms 100 --rate 200 --duration 5 --publishers 16 --n 1000 \
        "${SEED_URLS[@]}" --server-pid "$seed_pids"
    # Throughput, tail latency and the hello ratio move by a quarter from one run to the next
    # on a shared 2-core machine: two more rounds, the servers taking turns, median of three.
    # Each round on a fresh server, as sigrelay's are (`load` starts one per run).
    for round in 2 3; do
        restart_nchan
        load "nchan round $round" latency "${NCHAN_URLS[@]}"
        load "nchan round $round" throughput "${NCHAN_URLS[@]}"
        load "nchan round $round" nosub "${NCHAN_URLS[@]}"
        load "sigrelay round $round" latency
        load "sigrelay round $round" throughput
        load "sigrelay round $round" nosub
    done
    medians
    ;;
start)
    start
    cat <<EOF
anchors up. Measure them with:
  cargo bench --bench load -- all --sub-url 'http://127.0.0.1:$NCHAN_PORT/sub?id={room}' --pub-url 'http://127.0.0.1:$NCHAN_PORT/pub?id={room}' --server-pid $nginx_pids
  cargo bench --bench load -- all --sub-url 'http://127.0.0.1:$SEED_PORT/stream?channel={room}' --pub-url 'http://127.0.0.1:$SEED_PORT/channel/send/{room}/{type}' --server-pid $seed_pids
EOF
    ;;
stop)
    stop
    ;;
*)
    echo "usage: $0 start|stop|compare" >&2
    exit 2
    ;;
esac
