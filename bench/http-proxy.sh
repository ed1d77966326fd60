#!/usr/bin/env bash
# HTTP reverse-proxy benchmark: kakuremichi against nginx (Debian package), side by side.
#
# One origin (nginx, static files: /small = "Hello, world!" (13 bytes), /large = 1 MiB) is
# proxied by nginx (1 worker, upstream keep-alive) and by kakuremichi. Both proxies are pinned
# to the same CPU (PROXY_CPU, default 1); the origin and wrk share the other (LOAD_CPU,
# default 0). The candidates are interleaved: every round measures nginx and kakuremichi on
# /small and on /large back to back (the order alternates between rounds), after a warm-up.
# The medians of the rounds, the ratios kakuremichi / nginx and the peak RSS (VmHWM) of each
# proxy (nginx: its worker process) are printed at the end. Both proxies write an access log
# to a file.
#
# Usage: bench/http-proxy.sh
# Environment:
#   DURATION=10s          wrk duration of each measured run
#   ROUNDS=3              measured rounds
#   CONNECTIONS=64        wrk connections (wrk runs with one thread)
#   WARMUP=3s             wrk duration of the warm-up run of each candidate and size
#   PROXY_CPU=1           CPU both proxies are pinned to
#   LOAD_CPU=0            CPU the origin and wrk are pinned to
#   KAKUREMICHI_BIN=...   use this binary instead of building (cargo build --release)
#   KEEP_TMP=1            keep the temporary directory (configs, logs) for inspection
set -euo pipefail

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
WARMUP=${WARMUP:-3s}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- tools
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
find_nginx() {
    command -v nginx 2>/dev/null || { [[ -x /usr/sbin/nginx ]] && echo /usr/sbin/nginx; } || true
}
apt_updated=""
apt_install() {
    if [[ -z $apt_updated ]]; then
        log "apt-get update"
        $SUDO apt-get update -qq
        apt_updated=1
    fi
    log "apt-get install -y $*"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}
command -v wrk >/dev/null || apt_install wrk
if [[ -z $(find_nginx) ]]; then
    apt_install nginx-light || apt_install nginx
fi
command -v curl >/dev/null || apt_install curl
command -v taskset >/dev/null || apt_install util-linux
NGINX=$(find_nginx)
[[ -n $NGINX ]] || die "nginx is not installed"

if [[ -n ${KAKUREMICHI_BIN:-} ]]; then
    KBIN=$KAKUREMICHI_BIN
else
    log "cargo build --release -p kakuremichi"
    (cd "$ROOT" && cargo build --release -p kakuremichi)
    KBIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/kakuremichi
fi
[[ -x $KBIN ]] || die "no kakuremichi binary at $KBIN"

ncpu=$(nproc --all)
if (( ncpu < 2 )); then
    log "warning: only $ncpu CPU; everything shares CPU 0"
    PROXY_CPU=0 LOAD_CPU=0
fi

# ---------------------------------------------------------------- processes and cleanup
TMP=$(mktemp -d "${TMPDIR:-/tmp}/kakuremichi-bench.XXXXXX")
chmod 755 "$TMP"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n ${KEEP_TMP:-} ]]; then
        log "kept $TMP"
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
USED_PORTS=" "
free_port() {
    local p
    while :; do
        p=$(( 20000 + RANDOM % 30000 ))
        [[ $USED_PORTS == *" $p "* ]] && continue
        port_in_use "$p" && continue
        USED_PORTS+="$p "
        echo "$p"
        return
    done
}
wait_port() {
    local port=$1 pid=$2 i
    for i in $(seq 1 100); do
        port_in_use "$port" && return 0
        kill -0 "$pid" 2>/dev/null || die "process $pid exited before listening on $port"
        sleep 0.1
    done
    die "nothing listens on $port after 10 s"
}

ORIGIN_PORT=$(free_port)
NGINX_PORT=$(free_port)
KAKU_PORT=$(free_port)
KAKU_ADMIN=$(free_port)

# ---------------------------------------------------------------- origin
mkdir -p "$TMP/origin/www" "$TMP/origin/tmp"
printf 'Hello, world!' >"$TMP/origin/www/small"
head -c 1048576 /dev/urandom >"$TMP/origin/www/large"
# Workers run as the current user too (as root, nginx would otherwise switch to nobody).
NGINX_USER=""
if [[ $(id -u) -eq 0 ]]; then NGINX_USER="user $(id -un) $(id -gn);"; fi
nginx_common() { # $1 = prefix dir
    cat <<EOF
$NGINX_USER
daemon off;
worker_processes 1;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
EOF
}
nginx_temp_paths() { # $1 = prefix dir
    cat <<EOF
    client_body_temp_path $1/tmp/body;
    proxy_temp_path $1/tmp/proxy;
    fastcgi_temp_path $1/tmp/fastcgi;
    uwsgi_temp_path $1/tmp/uwsgi;
    scgi_temp_path $1/tmp/scgi;
EOF
}
{
    nginx_common "$TMP/origin"
    cat <<EOF
http {
$(nginx_temp_paths "$TMP/origin")
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    default_type application/octet-stream;
    server {
        listen 127.0.0.1:$ORIGIN_PORT reuseport backlog=4096;
        root $TMP/origin/www;
        location / { }
    }
}
EOF
} >"$TMP/origin/nginx.conf"

# ---------------------------------------------------------------- nginx as a proxy
mkdir -p "$TMP/nginx/tmp"
{
    nginx_common "$TMP/nginx"
    cat <<EOF
http {
$(nginx_temp_paths "$TMP/nginx")
    access_log $TMP/nginx/access.log;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    upstream origin {
        server 127.0.0.1:$ORIGIN_PORT;
        keepalive 64;
        keepalive_requests 10000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT backlog=4096;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
} >"$TMP/nginx/nginx.conf"

# ---------------------------------------------------------------- kakuremichi
mkdir -p "$TMP/kakuremichi"
cat >"$TMP/kakuremichi/gateway.toml" <<EOF
[gateway]
http = "127.0.0.1:$KAKU_PORT"
admin = "127.0.0.1:$KAKU_ADMIN"

[[routes]]
name = "bench"
upstream = "http://127.0.0.1:$ORIGIN_PORT"
EOF

"$NGINX" -t -q -p "$TMP/origin" -e "$TMP/origin/error.log" -c "$TMP/origin/nginx.conf"
"$NGINX" -t -q -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf"

log "origin (nginx, CPU $LOAD_CPU) on :$ORIGIN_PORT"
taskset -c "$LOAD_CPU" "$NGINX" -p "$TMP/origin" -e "$TMP/origin/error.log" -c "$TMP/origin/nginx.conf" &
ORIGIN_PID=$!
PIDS+=("$ORIGIN_PID")
log "nginx proxy (CPU $PROXY_CPU) on :$NGINX_PORT"
taskset -c "$PROXY_CPU" "$NGINX" -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
log "kakuremichi proxy (CPU $PROXY_CPU) on :$KAKU_PORT"
# Access lines are INFO under kakuremichi::access; everything else only from WARN up.
taskset -c "$PROXY_CPU" "$KBIN" gateway --config "$TMP/kakuremichi/gateway.toml" \
    --log-level "warn,kakuremichi::access=info" \
    >"$TMP/kakuremichi/access.log" 2>"$TMP/kakuremichi/stderr.log" &
KAKU_PID=$!
PIDS+=("$KAKU_PID")

wait_port "$ORIGIN_PORT" "$ORIGIN_PID"
wait_port "$NGINX_PORT" "$NGINX_PID"
wait_port "$KAKU_PORT" "$KAKU_PID"

nginx_worker() {
    local w
    w=$(cat "/proc/$NGINX_PID/task/$NGINX_PID/children" 2>/dev/null || true)
    w=${w%% *}
    [[ -n $w ]] || die "cannot find the nginx proxy's worker process"
    echo "$w"
}
NGINX_WORKER=$(nginx_worker)

declare -A URL PID_OF
URL[nginx]="http://127.0.0.1:$NGINX_PORT"
URL[kakuremichi]="http://127.0.0.1:$KAKU_PORT"
PID_OF[nginx]=$NGINX_WORKER
PID_OF[kakuremichi]=$KAKU_PID
CANDIDATES=(nginx kakuremichi)

# Both proxies must answer correctly before anything is measured.
for c in "${CANDIDATES[@]}"; do
    body=$(curl -fsS "${URL[$c]}/small") || die "$c: GET /small failed"
    [[ $body == "Hello, world!" ]] || die "$c: /small answered '$body'"
    size=$(curl -fsS -o /dev/null -w '%{size_download}' "${URL[$c]}/large") || die "$c: GET /large failed"
    [[ $size == 1048576 ]] || die "$c: /large answered $size bytes"
done
grep -q '"target":"kakuremichi::access"' "$TMP/kakuremichi/access.log" ||
    die "kakuremichi wrote no access-log line (see $TMP/kakuremichi/access.log)"
[[ -s $TMP/nginx/access.log ]] || die "nginx wrote no access-log line"

# ---------------------------------------------------------------- measuring
# wrk reports exact figures through a Lua done() hook: requests, errors, bytes, seconds, p99.
cat >"$TMP/report.lua" <<'EOF'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %.6f %.1f %.1f %d\n",
    summary.requests, e.connect + e.read + e.write + e.timeout + e.status,
    summary.bytes, summary.duration / 1e6, latency:percentile(99), latency:percentile(50),
    e.status))
end
EOF

cpu_ticks() { # utime + stime of a process (all its threads), in clock ticks
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}
CLK_TCK=$(getconf CLK_TCK)

# run_wrk CANDIDATE PATH DURATION → "rps p99_ms mib_s p50_ms errors cpu%"
run_wrk() {
    local c=$1 path=$2 dur=$3 out t0 t1
    t0=$(cpu_ticks "${PID_OF[$c]}")
    out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"$dur" --latency \
        -s "$TMP/report.lua" "${URL[$c]}$path" 2>&1) || die "wrk failed: $out"
    t1=$(cpu_ticks "${PID_OF[$c]}")
    awk -v t="$((t1 - t0))" -v hz="$CLK_TCK" '/^RESULT/ {
        secs = $5
        printf "%.1f %.3f %.2f %.3f %d %.0f\n", $2 / secs, $6 / 1000, $4 / secs / 1048576,
            $7 / 1000, $3, 100 * t / hz / secs
    }' <<<"$out"
}

median() { sort -g | awk '{ v[NR] = $1 } END {
    if (NR == 0) { print "nan"; exit }
    if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

RESULTS=$TMP/results.txt
: >"$RESULTS"

log "warm-up: ${WARMUP} per candidate and size"
for c in "${CANDIDATES[@]}"; do
    run_wrk "$c" /small "$WARMUP" >/dev/null
    run_wrk "$c" /large "$WARMUP" >/dev/null
done

printf '\n%-6s %-6s %-12s %12s %9s %9s %10s %7s %6s\n' \
    round size candidate "req/s" "p50 ms" "p99 ms" "MiB/s" errors "cpu%"
for round in $(seq 1 "$ROUNDS"); do
    if (( round % 2 )); then order=(nginx kakuremichi); else order=(kakuremichi nginx); fi
    for size in small large; do
        for c in "${order[@]}"; do
            line=$(run_wrk "$c" "/$size" "$DURATION")
            read -r rps p99 mib p50 errors cpu <<<"$line"
            printf '%-6s %-6s %-12s %12s %9s %9s %10s %7s %6s\n' \
                "$round" "$size" "$c" "$rps" "$p50" "$p99" "$mib" "$errors" "$cpu"
            echo "$size $c $rps $p99 $mib $p50 $errors $cpu" >>"$RESULTS"
        done
    done
done

hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }
RSS_nginx=$(hwm_kib "$NGINX_WORKER")
RSS_kakuremichi=$(hwm_kib "$KAKU_PID")
RSS_nginx_master=$(hwm_kib "$NGINX_PID")

field() { # field SIZE CANDIDATE COLUMN → median over rounds
    awk -v s="$1" -v c="$2" -v k="$3" '$1 == s && $2 == c { print $k }' "$RESULTS" | median
}
declare -A M
for c in "${CANDIDATES[@]}"; do
    M[$c.small.rps]=$(field small "$c" 3)
    M[$c.small.p99]=$(field small "$c" 4)
    M[$c.small.mib]=$(field small "$c" 5)
    M[$c.small.cpu]=$(field small "$c" 8)
    M[$c.large.rps]=$(field large "$c" 3)
    M[$c.large.p99]=$(field large "$c" 4)
    M[$c.large.mib]=$(field large "$c" 5)
    M[$c.large.cpu]=$(field large "$c" 8)
done
errors_total=$(awk '{ n += $7 } END { print n + 0 }' "$RESULTS")

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
row() { # label nginx kakuremichi
    printf '%-30s %14s %14s %10s\n' "$1" "$2" "$3" "$(ratio "$3" "$2")"
}
kib_to_mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

echo
echo "kakuremichi vs nginx: median of $ROUNDS rounds, wrk -t1 -c$CONNECTIONS -d$DURATION," \
    "proxies on CPU $PROXY_CPU, origin + wrk on CPU $LOAD_CPU"
printf '%-30s %14s %14s %10s\n' "" nginx kakuremichi "k / n"
row "small (13 B) req/s" "${M[nginx.small.rps]}" "${M[kakuremichi.small.rps]}"
row "small p99 latency (ms)" "${M[nginx.small.p99]}" "${M[kakuremichi.small.p99]}"
row "small proxy CPU (%)" "${M[nginx.small.cpu]}" "${M[kakuremichi.small.cpu]}"
row "large (1 MiB) MiB/s" "${M[nginx.large.mib]}" "${M[kakuremichi.large.mib]}"
row "large req/s" "${M[nginx.large.rps]}" "${M[kakuremichi.large.rps]}"
row "large p99 latency (ms)" "${M[nginx.large.p99]}" "${M[kakuremichi.large.p99]}"
row "large proxy CPU (%)" "${M[nginx.large.cpu]}" "${M[kakuremichi.large.cpu]}"
row "peak RSS, VmHWM (MiB)" "$(kib_to_mib "$RSS_nginx")" "$(kib_to_mib "$RSS_kakuremichi")"
echo "(nginx RSS is its worker process; its master peaked at $(kib_to_mib "$RSS_nginx_master") MiB." \
    "wrk errors over all runs: $errors_total.)"

echo
verdict() { if [[ $1 == 1 ]]; then echo met; else echo "NOT met"; fi; }
small_ok=$(awk -v k="${M[kakuremichi.small.rps]}" -v n="${M[nginx.small.rps]}" \
    -v kp="${M[kakuremichi.small.p99]}" -v np="${M[nginx.small.p99]}" \
    'BEGIN { print (k >= n && kp <= np) ? 1 : 0 }')
large_ok=$(awk -v k="${M[kakuremichi.large.mib]}" -v n="${M[nginx.large.mib]}" \
    'BEGIN { print (k >= 1.8 * n) ? 1 : 0 }')
echo "goal: small req/s >= 1.0x nginx with p99 <= nginx's: $(verdict "$small_ok")" \
    "($(ratio "${M[kakuremichi.small.rps]}" "${M[nginx.small.rps]}")x," \
    "p99 ${M[kakuremichi.small.p99]} vs ${M[nginx.small.p99]} ms)"
echo "goal: large MiB/s >= 1.8x nginx: $(verdict "$large_ok")" \
    "($(ratio "${M[kakuremichi.large.mib]}" "${M[nginx.large.mib]}")x)"
