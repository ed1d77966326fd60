#!/usr/bin/env bash
# A/B benchmark: two kakuremichi builds side by side in one run, to tell whether a change
# to the request path helps. Both gateways proxy the same origin (nginx serving a 13-byte
# file) and terminate TLS with the same certificate; each is pinned to PROXY_CPU, the origin
# and wrk share LOAD_CPU. Every round measures A then B on kept-alive HTTPS, then A then B
# on plain HTTP (wrk -t1), after a warm-up; medians of the rounds and B / A are printed,
# with how busy each CPU was.
#
# Usage: BIN_A=path/to/old BIN_B=path/to/new bench/ab.sh
# Environment:
#   BIN_A, BIN_B          the two kakuremichi binaries (required)
#   ROUNDS=3              measured rounds
#   DURATION=5s           wrk duration of each sample
#   CONNECTIONS=64        wrk connections
#   PROXY_CPU=1           CPU both gateways are pinned to
#   LOAD_CPU=0            CPU the origin and wrk are pinned to
#   QUIET_TIMEOUT=60      before each sample, wait up to this many seconds for idle CPUs
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-64}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
QUIET_TIMEOUT=${QUIET_TIMEOUT:-60}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

[[ -x ${BIN_A:-} && -x ${BIN_B:-} ]] || die "set BIN_A and BIN_B to two kakuremichi binaries"
need wrk wrk
need openssl openssl
need taskset util-linux
require_nginx
check_cpus
bench_tmp bench-ab

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
    -subj "/CN=bench.test" -addext "subjectAltName=DNS:bench.test,IP:127.0.0.1" \
    -keyout "$TMP/site.key" -out "$TMP/site.pem" 2>/dev/null || die "openssl req failed"

ORIGIN_PORT=$(free_port)
mkdir -p "$TMP/origin/www" "$TMP/origin/tmp"
printf 'Hello, world!' >"$TMP/origin/www/small"
small_file_origin_conf "$TMP/origin" "$ORIGIN_PORT" 8192 >"$TMP/origin/nginx.conf"
taskset -c "$LOAD_CPU" "$NGINX" -p "$TMP/origin" -e "$TMP/origin/error.log" -c "$TMP/origin/nginx.conf" &
PIDS+=($!)
wait_port "$ORIGIN_PORT" "$!"

declare -A HTTPS_PORT PLAIN_PORT
for build in A B; do
    bin_var=BIN_$build
    HTTPS_PORT[$build]=$(free_port)
    PLAIN_PORT[$build]=$(free_port)
    mkdir -p "$TMP/$build"
    tls_gateway_toml "${PLAIN_PORT[$build]}" "${HTTPS_PORT[$build]}" "$ORIGIN_PORT" \
        "$TMP/site.pem" "$TMP/site.key" >"$TMP/$build/gateway.toml"
    taskset -c "$PROXY_CPU" "${!bin_var}" gateway --config "$TMP/$build/gateway.toml" \
        --log-level "warn,kakuremichi::access=info" \
        >"$TMP/$build/access.log" 2>"$TMP/$build/stderr.log" &
    PIDS+=($!)
    wait_port "${HTTPS_PORT[$build]}" "$!"
done

# sample URL DURATION → "req/s proxy% load%"
sample() {
    local before after out
    wait_quiet
    before=$(cpu_sample)
    out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"$2" "$1" 2>&1) || die "wrk failed: $out"
    after=$(cpu_sample)
    echo "$(awk '/^Requests\/sec/ { print $2 }' <<<"$out") $(cpu_busy "$before" "$after")"
}
url() { # url BUILD TEST
    if [[ $2 == https ]]; then echo "https://127.0.0.1:${HTTPS_PORT[$1]}/small"
    else echo "http://127.0.0.1:${PLAIN_PORT[$1]}/small"; fi
}

log "warm-up"
for build in A B; do
    for test in https plain; do sample "$(url "$build" "$test")" 2s >/dev/null; done
done

RESULTS=$TMP/results.txt
printf '\n%-6s %-6s %-6s %12s %9s %9s\n' round test build "req/s" proxyCPU loadCPU
for round in $(seq 1 "$ROUNDS"); do
    for test in https plain; do
        for build in A B; do
            read -r rps pcpu lcpu <<<"$(sample "$(url "$build" "$test")" "$DURATION")"
            printf '%-6s %-6s %-6s %12s %8s%% %8s%%\n' "$round" "$test" "$build" "$rps" "$pcpu" "$lcpu"
            echo "$test $build $rps" >>"$RESULTS"
        done
    done
done

echo
printf '%-22s %12s %12s %8s\n' "median of $ROUNDS rounds" A B "B / A"
for test in https plain; do
    a=$(awk -v t="$test" '$1 == t && $2 == "A" { print $3 }' "$RESULTS" | median)
    b=$(awk -v t="$test" '$1 == t && $2 == "B" { print $3 }' "$RESULTS" | median)
    printf '%-22s %12s %12s %8s\n' "$test kept-alive req/s" "$a" "$b" "$(ratio "$b" "$a")"
done
echo "(samples started on a busy machine: $(noisy_count).)"
