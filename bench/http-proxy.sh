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
#   QUIET_TIMEOUT=300     before each run, wait up to this many seconds for both CPUs to be
#                         idle (other work on the machine, such as a compiler, skews results)
#   OTHERS_MAX=3          a run during which processes other than the benchmark's used more
#                         than this % of one CPU is repeated (up to RETRIES=5 times)
#   KEEP_TMP=1            keep the temporary directory (configs, logs) for inspection
set -euo pipefail

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
WARMUP=${WARMUP:-3s}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

# ---------------------------------------------------------------- tools
need wrk wrk
need curl curl
need taskset util-linux
require_nginx

kakuremichi_binary

check_cpus

# ---------------------------------------------------------------- processes and cleanup
bench_tmp bench

ORIGIN_PORT=$(free_port)
NGINX_PORT=$(free_port)
KAKU_PORT=$(free_port)
KAKU_ADMIN=$(free_port)

# ---------------------------------------------------------------- origin
mkdir -p "$TMP/origin/www" "$TMP/origin/tmp"
printf 'Hello, world!' >"$TMP/origin/www/small"
head -c 1048576 /dev/urandom >"$TMP/origin/www/large"
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
        listen 127.0.0.1:$ORIGIN_PORT backlog=4096;
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

NGINX_WORKER=$(nginx_worker "$NGINX_PID")

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
wait_access_line "$TMP/kakuremichi/access.log" ||
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

CLK_TCK=$(getconf CLK_TCK)
OURS="$ORIGIN_PID $NGINX_PID $KAKU_PID $(cat "/proc/$ORIGIN_PID/task/$ORIGIN_PID/children" \
    "/proc/$NGINX_PID/task/$NGINX_PID/children" 2>/dev/null | tr '\n' ' ')"

# Waits (up to QUIET_TIMEOUT s) until neither CPU is more than 10 % busy over half a second.
QUIET_TIMEOUT=${QUIET_TIMEOUT:-300}
# run_wrk runs in a subshell: runs kept although the machine was busy are counted in a file.

# CPU ticks used so far by every process outside the benchmark (with their reaped children,
# so that short-lived compiler processes count too). Outside = not the origin, the proxies,
# this script or its ancestors (wrk and curl are children of this script).
OTHERS_MAX=${OTHERS_MAX:-3}
RETRIES=${RETRIES:-5}

# run_wrk CANDIDATE PATH DURATION
#   → "rps p99_ms mib_s p50_ms errors proxy_cpu_busy% load_cpu_busy%"
# CPU busy is the whole CPU (user + system + softirq: loopback TCP work is mostly softirq,
# which per-process counters miss).
run_wrk() {
    local c=$1 path=$2 dur=$3 out before after o1 o2 try limit
    limit=$(awk -v s="$(duration_secs "$dur")" -v hz="$CLK_TCK" -v m="$OTHERS_MAX" \
        'BEGIN { printf "%d", s * hz * m / 100 }')
    for try in $(seq 0 "$RETRIES"); do
        wait_quiet
        o1=$(others_ticks)
        before=$(cpu_sample)
        out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"$dur" --latency \
            -s "$TMP/report.lua" "${URL[$c]}$path" 2>&1) || die "wrk failed: $out"
        after=$(cpu_sample)
        o2=$(others_ticks)
        (( o2 - o1 <= limit )) && break
        if (( try == RETRIES )); then
            log "warning: other processes used $((o2 - o1)) CPU ticks during $c $path; keeping it"
            note_noisy
        else
            log "other processes used $((o2 - o1)) CPU ticks during $c $path; repeating it"
        fi
    done
    awk -v b="$before" -v a="$after" '/^RESULT/ {
        split(b, x, " "); split(a, y, " ")
        secs = $5
        printf "%.1f %.3f %.2f %.3f %d %.0f %.0f\n", $2 / secs, $6 / 1000, $4 / secs / 1048576,
            $7 / 1000, $3, 100 * (y[1] - x[1]) / (y[2] - x[2]), 100 * (y[3] - x[3]) / (y[4] - x[4])
    }' <<<"$out"
}

RESULTS=$TMP/results.txt
: >"$RESULTS"

log "warm-up: ${WARMUP} per candidate and size"
for c in "${CANDIDATES[@]}"; do
    run_wrk "$c" /small "$WARMUP" >/dev/null
    run_wrk "$c" /large "$WARMUP" >/dev/null
done

printf '\n%-6s %-6s %-12s %10s %8s %8s %9s %6s %9s %9s\n' \
    round size candidate "req/s" "p50 ms" "p99 ms" "MiB/s" errors "proxyCPU" "loadCPU"
for round in $(seq 1 "$ROUNDS"); do
    if (( round % 2 )); then order=(nginx kakuremichi); else order=(kakuremichi nginx); fi
    for size in small large; do
        for c in "${order[@]}"; do
            line=$(run_wrk "$c" "/$size" "$DURATION")
            read -r rps p99 mib p50 errors pcpu lcpu <<<"$line"
            printf '%-6s %-6s %-12s %10s %8s %8s %9s %6s %8s%% %8s%%\n' \
                "$round" "$size" "$c" "$rps" "$p50" "$p99" "$mib" "$errors" "$pcpu" "$lcpu"
            echo "$size $c $rps $p99 $mib $p50 $errors $pcpu $lcpu" >>"$RESULTS"
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
    M[$c.small.lcpu]=$(field small "$c" 9)
    M[$c.large.rps]=$(field large "$c" 3)
    M[$c.large.p99]=$(field large "$c" 4)
    M[$c.large.mib]=$(field large "$c" 5)
    M[$c.large.cpu]=$(field large "$c" 8)
    M[$c.large.lcpu]=$(field large "$c" 9)
done
NOISY_RUNS=$(noisy_count)
errors_total=$(awk '{ n += $7 } END { print n + 0 }' "$RESULTS")

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
row "small p50 latency (ms)" "$(field small nginx 6)" "$(field small kakuremichi 6)"
row "small: proxy CPU busy (%)" "${M[nginx.small.cpu]}" "${M[kakuremichi.small.cpu]}"
row "small: load CPU busy (%)" "${M[nginx.small.lcpu]}" "${M[kakuremichi.small.lcpu]}"
row "large (1 MiB) MiB/s" "${M[nginx.large.mib]}" "${M[kakuremichi.large.mib]}"
row "large req/s" "${M[nginx.large.rps]}" "${M[kakuremichi.large.rps]}"
row "large p99 latency (ms)" "${M[nginx.large.p99]}" "${M[kakuremichi.large.p99]}"
row "large: proxy CPU busy (%)" "${M[nginx.large.cpu]}" "${M[kakuremichi.large.cpu]}"
row "large: load CPU busy (%)" "${M[nginx.large.lcpu]}" "${M[kakuremichi.large.lcpu]}"
row "peak RSS, VmHWM (MiB)" "$(kib_to_mib "$RSS_nginx")" "$(kib_to_mib "$RSS_kakuremichi")"
echo "(nginx RSS is its worker process; its master peaked at $(kib_to_mib "$RSS_nginx_master") MiB." \
    "wrk errors over all runs: $errors_total; runs kept although other processes were busy: $NOISY_RUNS.)"

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
