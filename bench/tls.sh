#!/usr/bin/env bash
# TLS benchmark: kakuremichi against nginx (Debian package) terminating HTTPS with the same
# certificate (ECDSA P-256, made by this script) and proxying to the same origin.
#
# Two measurements, both against nginx and kakuremichi (plus a plain-HTTP reference):
#   handshakes  full TLS handshakes per second, no resumption: h2load --h1 opens HS_CONNS
#               connections at once, each does a full handshake (TLS 1.3, X25519, ECDSA
#               P-256) and one GET /small, then closes; no client ever offers a session to
#               resume. A sample is HS_BATCHES such runs: handshakes done / seconds taken.
#   keep-alive  HTTPS requests per second on kept-alive connections: wrk -t1 -c CONNECTIONS
#               for DURATION on GET /small (13 bytes) over TLS 1.3.
#   plain       the same wrk run over plain HTTP to the same proxies (kakuremichi with
#               redirect_https = false), to tell the cost of TLS from that of proxying.
# The origin is nginx serving a static file. Both proxies are pinned to the same CPU
# (PROXY_CPU, default 1) with one worker (nginx: worker_processes 1; kakuremichi: it sees one
# CPU, so it runs one serving thread); the origin and the load generators share the other (LOAD_CPU, default 0).
# Candidates are interleaved: each round measures nginx and kakuremichi back to back (the
# order alternates between rounds) after a warm-up. Medians of the rounds and the ratios
# kakuremichi / nginx are printed, with how busy each CPU was (to see which side was the
# bottleneck). With two CPUs the handshake test is usually bound by the load generator's
# CPU (h2load does its half of every handshake there), so handshakes per second of busy
# proxy CPU are printed too. Both proxies write an access log to a file.
#
# Usage: bench/tls.sh
# Environment:
#   ROUNDS=3              measured rounds
#   HS_CONNS=500          connections opened at once by one h2load run
#   HS_BATCHES=6          h2load runs per handshake sample
#   DURATION=10s          wrk duration of each kept-alive sample
#   CONNECTIONS=64        wrk connections (one thread)
#   WARMUP=3s             wrk warm-up per candidate (plus one h2load run)
#   PROXY_CPU=1           CPU both proxies are pinned to
#   LOAD_CPU=0            CPU the origin, h2load and wrk are pinned to
#   KAKUREMICHI_BIN=...   use this binary instead of building (cargo build --release)
#   QUIET_TIMEOUT=300     before each sample, wait up to this many seconds for both CPUs to
#                         be idle (a compiler running on the machine skews results)
#   KEEP_TMP=1            keep the temporary directory (configs, certificate, logs)
set -euo pipefail

ROUNDS=${ROUNDS:-3}
HS_CONNS=${HS_CONNS:-500}
HS_BATCHES=${HS_BATCHES:-6}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
WARMUP=${WARMUP:-3s}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

# ---------------------------------------------------------------- tools
need wrk wrk
need h2load nghttp2-client
need curl curl
need openssl openssl
need taskset util-linux
require_nginx

kakuremichi_binary

check_cpus

# ---------------------------------------------------------------- processes and cleanup
bench_tmp bench-tls

ORIGIN_PORT=$(free_port)
NGINX_PORT=$(free_port)
NGINX_PLAIN=$(free_port)
KAKU_PORT=$(free_port)
KAKU_HTTP=$(free_port)
KAKU_ADMIN=$(free_port)
NAME=bench.test

# ---------------------------------------------------------------- certificate
# One ECDSA P-256 certificate (self-signed, names bench.test and 127.0.0.1) for both.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
    -subj "/CN=$NAME" -addext "subjectAltName=DNS:$NAME,IP:127.0.0.1" \
    -keyout "$TMP/site.key" -out "$TMP/site.pem" 2>/dev/null || die "openssl req failed"
chmod 644 "$TMP/site.key"

# ---------------------------------------------------------------- origin
mkdir -p "$TMP/origin/www" "$TMP/origin/tmp"
printf 'Hello, world!' >"$TMP/origin/www/small"
small_file_origin_conf "$TMP/origin" "$ORIGIN_PORT" 8192 >"$TMP/origin/nginx.conf"

# ---------------------------------------------------------------- nginx terminating TLS
# Session cache and tickets stay at nginx's defaults (no cache, tickets on); no client here
# resumes a session either way.
mkdir -p "$TMP/nginx/tmp"
{
    nginx_common "$TMP/nginx" 8192
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
        listen 127.0.0.1:$NGINX_PORT ssl http2 backlog=4096;
        listen 127.0.0.1:$NGINX_PLAIN backlog=4096;
        server_name $NAME;
        ssl_certificate $TMP/site.pem;
        ssl_certificate_key $TMP/site.key;
        ssl_protocols TLSv1.2 TLSv1.3;
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
tls_gateway_toml "$KAKU_HTTP" "$KAKU_PORT" "$ORIGIN_PORT" "$TMP/site.pem" "$TMP/site.key" \
    "admin = \"127.0.0.1:$KAKU_ADMIN\"" >"$TMP/kakuremichi/gateway.toml"
"$KBIN" check --config "$TMP/kakuremichi/gateway.toml" >/dev/null ||
    die "kakuremichi check refused $TMP/kakuremichi/gateway.toml"

"$NGINX" -t -q -p "$TMP/origin" -e "$TMP/origin/error.log" -c "$TMP/origin/nginx.conf"
"$NGINX" -t -q -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" 2>/dev/null ||
    "$NGINX" -t -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf"

log "origin (nginx, CPU $LOAD_CPU) on :$ORIGIN_PORT"
taskset -c "$LOAD_CPU" "$NGINX" -p "$TMP/origin" -e "$TMP/origin/error.log" -c "$TMP/origin/nginx.conf" &
ORIGIN_PID=$!
PIDS+=("$ORIGIN_PID")
log "nginx TLS proxy (CPU $PROXY_CPU) on :$NGINX_PORT"
taskset -c "$PROXY_CPU" "$NGINX" -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" 2>/dev/null &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
log "kakuremichi TLS proxy (CPU $PROXY_CPU) on :$KAKU_PORT"
# Access lines are INFO under kakuremichi::access; everything else only from WARN up.
taskset -c "$PROXY_CPU" "$KBIN" gateway --config "$TMP/kakuremichi/gateway.toml" \
    --log-level "warn,kakuremichi::access=info" \
    >"$TMP/kakuremichi/access.log" 2>"$TMP/kakuremichi/stderr.log" &
KAKU_PID=$!
PIDS+=("$KAKU_PID")

wait_port "$ORIGIN_PORT" "$ORIGIN_PID"
wait_port "$NGINX_PORT" "$NGINX_PID"
if ! (wait_port "$KAKU_PORT" "$KAKU_PID"); then
    tail -n 5 "$TMP/kakuremichi/stderr.log" "$TMP/kakuremichi/access.log" >&2 || true
    die "kakuremichi did not start"
fi

NGINX_WORKER=$(nginx_worker "$NGINX_PID")

declare -A PORT_OF PLAIN_OF
PORT_OF[nginx]=$NGINX_PORT
PORT_OF[kakuremichi]=$KAKU_PORT
PLAIN_OF[nginx]=$NGINX_PLAIN
PLAIN_OF[kakuremichi]=$KAKU_HTTP
CANDIDATES=(nginx kakuremichi)

# Both must answer correctly, verified against the certificate, over HTTP/1.1 and HTTP/2.
for c in "${CANDIDATES[@]}"; do
    p=${PORT_OF[$c]}
    for v in --http1.1 --http2; do
        body=$(curl -fsS $v --cacert "$TMP/site.pem" --resolve "$NAME:$p:127.0.0.1" \
            "https://$NAME:$p/small") || die "$c: GET /small ($v) failed"
        [[ $body == "Hello, world!" ]] || die "$c: /small answered '$body'"
    done
    body=$(curl -fsS "http://127.0.0.1:${PLAIN_OF[$c]}/small") || die "$c: plain GET /small failed"
    [[ $body == "Hello, world!" ]] || die "$c: plain /small answered '$body'"
    tls=$(openssl s_client -connect "127.0.0.1:$p" -servername "$NAME" -alpn http/1.1 \
        </dev/null 2>/dev/null | awk '/^New, / { v = $2 " " $5 } /Server Temp Key/ { sub(/.*: /, ""); k = $0 }
            END { print v ", key exchange " k }')
    log "$c: $tls"
done
wait_access_line "$TMP/kakuremichi/access.log" ||
    die "kakuremichi wrote no access-log line (see $TMP/kakuremichi/access.log)"
[[ -s $TMP/nginx/access.log ]] || die "nginx wrote no access-log line"

# ---------------------------------------------------------------- measuring
cat >"$TMP/report.lua" <<'EOF'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %.6f %.1f\n",
    summary.requests, e.connect + e.read + e.write + e.timeout + e.status,
    summary.duration / 1e6, latency:percentile(99)))
end
EOF

QUIET_TIMEOUT=${QUIET_TIMEOUT:-300}

# run_handshakes CANDIDATE BATCHES → "handshakes_per_s failed proxy_cpu% load_cpu%"
run_handshakes() {
    local c=$1 batches=$2 p=${PORT_OF[$1]} i out secs done_n failed before after
    local total_done=0 total_failed=0 total_secs=0
    wait_quiet
    before=$(cpu_sample)
    for i in $(seq 1 "$batches"); do
        out=$(taskset -c "$LOAD_CPU" h2load --h1 -t1 -c "$HS_CONNS" -n "$HS_CONNS" \
            --connect-to="127.0.0.1:$p" "https://$NAME:$p/small" 2>&1) || die "h2load failed: $out"
        # "finished in 512.34ms, ..." or "finished in 1.02s, ..."
        secs=$(awk '/^finished in/ { v = $3; sub(/,$/, "", v)
            if (v ~ /ms$/) { sub(/ms$/, "", v); v /= 1000 } else if (v ~ /us$/) { sub(/us$/, "", v); v /= 1e6 } else { sub(/s$/, "", v) }
            print v }' <<<"$out")
        done_n=$(awk '/^requests:/ { for (i = 1; i <= NF; i++) if ($(i + 1) ~ /^succeeded/) print $i }' <<<"$out")
        failed=$(awk '/^requests:/ { for (i = 1; i <= NF; i++) if ($(i + 1) ~ /^failed/) print $i }' <<<"$out")
        [[ -n $secs && -n $done_n ]] || die "cannot read h2load's output: $out"
        total_done=$((total_done + done_n))
        total_failed=$((total_failed + failed))
        total_secs=$(awk -v a="$total_secs" -v b="$secs" 'BEGIN { print a + b }')
    done
    after=$(cpu_sample)
    printf '%s %d %s\n' "$(awk -v n="$total_done" -v s="$total_secs" 'BEGIN { printf "%.1f", n / s }')" \
        "$total_failed" "$(cpu_busy "$before" "$after")"
}

# run_wrk CANDIDATE DURATION [plain] → "rps p99_ms errors proxy_cpu% load_cpu%"
run_wrk() {
    local c=$1 dur=$2 out before after url="https://127.0.0.1:${PORT_OF[$1]}/small"
    if [[ ${3:-} == plain ]]; then url="http://127.0.0.1:${PLAIN_OF[$1]}/small"; fi
    wait_quiet
    before=$(cpu_sample)
    out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"$dur" --latency \
        -s "$TMP/report.lua" "$url" 2>&1) || die "wrk failed: $out"
    after=$(cpu_sample)
    awk -v busy="$(cpu_busy "$before" "$after")" '/^RESULT/ {
        printf "%.1f %.3f %d %s\n", $2 / $4, $5 / 1000, $3, busy }' <<<"$out"
}

RESULTS=$TMP/results.txt
: >"$RESULTS"

log "warm-up"
for c in "${CANDIDATES[@]}"; do
    run_handshakes "$c" 1 >/dev/null
    run_wrk "$c" "$WARMUP" >/dev/null
    run_wrk "$c" "$WARMUP" plain >/dev/null
done

printf '\n%-6s %-11s %-12s %12s %8s %7s %9s %9s\n' \
    round test candidate "per second" "p99 ms" errors proxyCPU loadCPU
for round in $(seq 1 "$ROUNDS"); do
    if (( round % 2 )); then order=(nginx kakuremichi); else order=(kakuremichi nginx); fi
    for c in "${order[@]}"; do
        read -r rate failed pcpu lcpu <<<"$(run_handshakes "$c" "$HS_BATCHES")"
        printf '%-6s %-11s %-12s %12s %8s %7s %8s%% %8s%%\n' \
            "$round" handshakes "$c" "$rate" - "$failed" "$pcpu" "$lcpu"
        echo "handshakes $c $rate 0 $failed $pcpu $lcpu" >>"$RESULTS"
    done
    for c in "${order[@]}"; do
        read -r rps p99 errors pcpu lcpu <<<"$(run_wrk "$c" "$DURATION")"
        printf '%-6s %-11s %-12s %12s %8s %7s %8s%% %8s%%\n' \
            "$round" keep-alive "$c" "$rps" "$p99" "$errors" "$pcpu" "$lcpu"
        echo "keepalive $c $rps $p99 $errors $pcpu $lcpu" >>"$RESULTS"
    done
    for c in "${order[@]}"; do
        read -r rps p99 errors pcpu lcpu <<<"$(run_wrk "$c" "$DURATION" plain)"
        printf '%-6s %-11s %-12s %12s %8s %7s %8s%% %8s%%\n' \
            "$round" plain "$c" "$rps" "$p99" "$errors" "$pcpu" "$lcpu"
        echo "plain $c $rps $p99 $errors $pcpu $lcpu" >>"$RESULTS"
    done
done

field() { # field TEST CANDIDATE COLUMN → median over rounds
    awk -v t="$1" -v c="$2" -v k="$3" '$1 == t && $2 == c { print $k }' "$RESULTS" | median
}
row() { printf '%-34s %12s %12s %8s\n' "$1" "$2" "$3" "$(ratio "$3" "$2")"; }
errors_total=$(awk '{ n += $5 } END { print n + 0 }' "$RESULTS")

HS_N=$(field handshakes nginx 3)
HS_K=$(field handshakes kakuremichi 3)
KA_N=$(field keepalive nginx 3)
KA_K=$(field keepalive kakuremichi 3)
PL_N=$(field plain nginx 3)
PL_K=$(field plain kakuremichi 3)
per_cpu() { # handshakes/s per busy proxy CPU, from the per-sample figures
    awk -v c="$1" '$1 == "handshakes" && $2 == c && $6 > 0 { print $3 * 100 / $6 }' "$RESULTS" | median |
        awk '{ printf "%.1f", $1 }'
}

echo
echo "kakuremichi vs nginx over TLS 1.3 (ECDSA P-256, X25519): median of $ROUNDS rounds," \
    "proxies on CPU $PROXY_CPU, origin + load generator on CPU $LOAD_CPU"
printf '%-34s %12s %12s %8s\n' "" nginx kakuremichi "k / n"
row "full handshakes/s (h2load, c=$HS_CONNS)" "$HS_N" "$HS_K"
row "  proxy CPU busy (%)" "$(field handshakes nginx 6)" "$(field handshakes kakuremichi 6)"
row "  load CPU busy (%)" "$(field handshakes nginx 7)" "$(field handshakes kakuremichi 7)"
row "  per busy proxy CPU (/s)" "$(per_cpu nginx)" "$(per_cpu kakuremichi)"
row "kept-alive req/s (wrk, c=$CONNECTIONS)" "$KA_N" "$KA_K"
row "  p99 latency (ms)" "$(field keepalive nginx 4)" "$(field keepalive kakuremichi 4)"
row "  proxy CPU busy (%)" "$(field keepalive nginx 6)" "$(field keepalive kakuremichi 6)"
row "  load CPU busy (%)" "$(field keepalive nginx 7)" "$(field keepalive kakuremichi 7)"
row "plain HTTP req/s (reference)" "$PL_N" "$PL_K"
row "  proxy CPU busy (%)" "$(field plain nginx 6)" "$(field plain kakuremichi 6)"
row "HTTPS / plain req/s" "$(ratio "$KA_N" "$PL_N")" "$(ratio "$KA_K" "$PL_K")"
echo "(failed requests/errors over all runs: $errors_total; samples started on a busy machine: $(noisy_count).)"

echo
verdict() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 <= 0) print "n/a"; else print (a >= b) ? "met" : "NOT met" }'; }
echo "goal: full handshakes/s >= 1.0x nginx: $(verdict "$HS_K" "$HS_N") ($(ratio "$HS_K" "$HS_N")x)"
echo "goal: kept-alive HTTPS req/s >= 1.0x nginx: $(verdict "$KA_K" "$KA_N") ($(ratio "$KA_K" "$KA_N")x)"
