#!/usr/bin/env bash
# Tunnel benchmark: a private origin reached through kakuremichi's tunnel (gateway + agent),
# against kakuremichi as a direct proxy and against nginx in front of a rathole tunnel.
#
# One origin (nginx, static files: /small = "Hello, world!" (13 bytes), /large = 1 MiB), the
# same one bench/http-proxy.sh uses, is reached by these candidates:
#
#   direct        kakuremichi gateway → origin (no tunnel: the ceiling)
#   tunnel        kakuremichi gateway → QUIC tunnel → kakuremichi agent → origin
#   tunnel-tcp    the same over the TLS-on-TCP transport (--transport tcp)
#   rathole       nginx (1 worker, upstream keep-alive) → rathole server → rathole client →
#                 origin, rathole's Noise transport (encrypted, like kakuremichi's tunnel)
#   rathole-plain the same with rathole's default transport: plain TCP, no encryption
#
# Everything on the proxy side of a candidate (gateway and agent; nginx, rathole server and
# rathole client) is pinned to one CPU (PROXY_CPU, default 1), so every stack gets the same
# single core; the origin and wrk share the other (LOAD_CPU, default 0). kakuremichi and
# rathole size their tokio runtimes from the CPUs they may use, so each runs one worker.
# Candidates are interleaved: every round measures all of them on /small and on /large back
# to back (the order rotates between rounds), after a warm-up. Medians of the rounds, ratios
# and the peak RSS (VmHWM) of each process are printed at the end. kakuremichi and nginx
# write an access log to a file; rathole logs at its default level (info) to a file.
#
# Goal (issue 3): kakuremichi through its tunnel >= 1.0x nginx+rathole on requests/s (small)
# and on MiB/s (large).
#
# Usage: bench/tunnel.sh
# Environment:
#   DURATION=10s          wrk duration of each measured run
#   ROUNDS=3              measured rounds
#   CONNECTIONS=64        wrk connections (wrk runs with one thread)
#   WARMUP=3s             wrk duration of the warm-up run of each candidate and size
#   PROXY_CPU=1           CPU every candidate's proxy-side processes are pinned to
#   LOAD_CPU=0            CPU the origin and wrk are pinned to
#   CANDIDATES="direct tunnel tunnel-tcp rathole rathole-plain"
#   KAKUREMICHI_BIN=...   use this binary instead of building (cargo build --release)
#   RATHOLE_BIN=...       use this rathole instead of the one on PATH (or cargo install)
#   QUIET_TIMEOUT=300     before each run, wait up to this many seconds for both CPUs to be
#                         idle (other work on the machine, such as a compiler, skews results)
#   OTHERS_MAX=3          a run during which processes outside the benchmark used more than
#                         this % of one CPU is repeated (up to RETRIES=5 times)
#   KEEP_TMP=1            keep the temporary directory (configs, logs) for inspection
set -euo pipefail

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
WARMUP=${WARMUP:-3s}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
read -r -a CANDIDATES <<<"${CANDIDATES:-direct tunnel tunnel-tcp rathole rathole-plain}"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
export PATH="$PATH:$HOME/.cargo/bin"

has() { local c; for c in "${CANDIDATES[@]}"; do [[ $c == "$1" ]] && return 0; done; return 1; }

# ---------------------------------------------------------------- tools
need wrk wrk
need curl curl
need taskset util-linux
require_nginx

RATHOLE=${RATHOLE_BIN:-$(command -v rathole || true)}
if [[ -z $RATHOLE ]] && { has rathole || has rathole-plain; }; then
    # Without --locked: rathole 0.5.0's lock file pins a `time` that newer compilers reject.
    log "cargo install rathole"
    cargo install rathole
    RATHOLE=$(command -v rathole) || die "rathole is not on PATH after cargo install"
fi

kakuremichi_binary

check_cpus

# ---------------------------------------------------------------- processes and cleanup
bench_tmp bench-tunnel

# start NAME LOGFILE COMMAND... : runs COMMAND pinned to the proxy CPU, remembers its pid.
declare -A PID_OF
start() {
    local name=$1 logfile=$2
    shift 2
    taskset -c "$PROXY_CPU" "$@" >"$logfile" 2>&1 &
    PID_OF[$name]=$!
    PIDS+=("$!")
}

ORIGIN_PORT=$(free_port)

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
"$NGINX" -t -q -p "$TMP/origin" -e "$TMP/origin/error.log" -c "$TMP/origin/nginx.conf"
log "origin (nginx, CPU $LOAD_CPU) on :$ORIGIN_PORT"
taskset -c "$LOAD_CPU" "$NGINX" -p "$TMP/origin" -e "$TMP/origin/error.log" \
    -c "$TMP/origin/nginx.conf" &
ORIGIN_PID=$!
PIDS+=("$ORIGIN_PID")
wait_port "$ORIGIN_PORT" "$ORIGIN_PID"

declare -A URL
# Processes whose peak RSS is reported, per candidate: "label=pid ...".
declare -A RSS_PIDS

# ---------------------------------------------------------------- kakuremichi
TOKEN="agt_bench_$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
# kakuremichi_gateway NAME [via]: a gateway whose route reaches the origin, through agents
# named "bench" when a second argument is given (it then also gets a tunnel listener).
kakuremichi_gateway() {
    local name=$1 via=${2:-} dir="$TMP/$1" http admin tunnel=""
    http=$(free_port); admin=$(free_port)
    mkdir -p "$dir"
    {
        printf '[gateway]\nhttp = "127.0.0.1:%s"\nadmin = "127.0.0.1:%s"\nstate_dir = "%s/state"\n' \
            "$http" "$admin" "$dir"
        if [[ -n $via ]]; then
            tunnel=$(free_port)
            printf 'tunnel = "127.0.0.1:%s"\n\n[[agents]]\nname = "bench"\ntoken = "%s"\n' \
                "$tunnel" "$TOKEN"
        fi
        printf '\n[[routes]]\nname = "bench"\nupstream = "http://127.0.0.1:%s"\n' "$ORIGIN_PORT"
        if [[ -n $via ]]; then printf 'via = "bench"\n'; fi
    } >"$dir/gateway.toml"
    "$KBIN" check --config "$dir/gateway.toml" >/dev/null
    log "$name: kakuremichi gateway (CPU $PROXY_CPU) on :$http${tunnel:+, tunnel :$tunnel}"
    # Access lines are INFO under kakuremichi::access; everything else only from WARN up.
    taskset -c "$PROXY_CPU" "$KBIN" gateway --config "$dir/gateway.toml" \
        --log-level "warn,kakuremichi::access=info" >"$dir/access.log" 2>"$dir/stderr.log" &
    PID_OF[$name.gateway]=$!
    PIDS+=("$!")
    wait_port "$http" "${PID_OF[$name.gateway]}"
    URL[$name]="http://127.0.0.1:$http"
    RSS_PIDS[$name]="gateway=${PID_OF[$name.gateway]}"
    if [[ -n $via ]]; then
        local pin
        pin=$(cat "$dir/state/tunnel.pin")
        log "$name: kakuremichi agent (CPU $PROXY_CPU, --transport $via)"
        start "$name.agent" "$dir/agent.log" "$KBIN" agent --name bench --token "$TOKEN" \
            --gateway "127.0.0.1:$tunnel" --pin "$pin" --transport "$via" \
            --allow "127.0.0.1:$ORIGIN_PORT" --log-level warn
        RSS_PIDS[$name]+=" agent=${PID_OF[$name.agent]}"
        local i
        for i in $(seq 1 100); do
            curl -fsS -o /dev/null "http://127.0.0.1:$admin/metrics" 2>/dev/null &&
                curl -fsS "http://127.0.0.1:$admin/metrics" |
                grep -q '^kakuremichi_tunnel_agents_connected{agent="bench"} 1' && break
            kill -0 "${PID_OF[$name.agent]}" 2>/dev/null || die "$name: the agent exited"
            sleep 0.1
        done
        (( i < 100 )) || die "$name: the agent did not connect within 10 s"
    fi
}
has direct && kakuremichi_gateway direct
has tunnel && kakuremichi_gateway tunnel quic
has tunnel-tcp && kakuremichi_gateway tunnel-tcp tcp

# ---------------------------------------------------------------- nginx + rathole
# rathole_stack NAME TRANSPORT: rathole server and client (TRANSPORT "noise" or "tcp") and
# nginx proxying to the server's service port.
rathole_stack() {
    local name=$1 transport=$2 dir="$TMP/$1" control service front keys private public
    control=$(free_port); service=$(free_port); front=$(free_port)
    mkdir -p "$dir/tmp"
    local server_transport="" client_transport=""
    if [[ $transport == noise ]]; then
        keys=$("$RATHOLE" --genkey)
        private=$(awk '/^Private Key:/ { getline; print; exit }' <<<"$keys")
        public=$(awk '/^Public Key:/ { getline; print; exit }' <<<"$keys")
        [[ -n $private && -n $public ]] || die "cannot parse rathole --genkey: $keys"
        server_transport=$(printf '[server.transport]\ntype = "noise"\n[server.transport.noise]\nlocal_private_key = "%s"\n' "$private")
        client_transport=$(printf '[client.transport]\ntype = "noise"\n[client.transport.noise]\nremote_public_key = "%s"\n' "$public")
    fi
    cat >"$dir/server.toml" <<EOF
[server]
bind_addr = "127.0.0.1:$control"
default_token = "$TOKEN"
$server_transport
[server.services.web]
bind_addr = "127.0.0.1:$service"
EOF
    cat >"$dir/client.toml" <<EOF
[client]
remote_addr = "127.0.0.1:$control"
default_token = "$TOKEN"
$client_transport
[client.services.web]
local_addr = "127.0.0.1:$ORIGIN_PORT"
EOF
    {
        nginx_common "$dir"
        cat <<EOF
http {
$(nginx_temp_paths "$dir")
    access_log $dir/access.log;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    upstream tunnel {
        server 127.0.0.1:$service;
        keepalive 64;
        keepalive_requests 10000000;
    }
    server {
        listen 127.0.0.1:$front backlog=4096;
        location / {
            proxy_pass http://tunnel;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    } >"$dir/nginx.conf"
    "$NGINX" -t -q -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
    log "$name: rathole server + client ($transport) and nginx (CPU $PROXY_CPU) on :$front"
    start "$name.server" "$dir/server.log" "$RATHOLE" --server "$dir/server.toml"
    wait_port "$control" "${PID_OF[$name.server]}"
    start "$name.client" "$dir/client.log" "$RATHOLE" --client "$dir/client.toml"
    wait_port "$service" "${PID_OF[$name.server]}"
    start "$name.nginx" "$dir/nginx.out" "$NGINX" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
    wait_port "$front" "${PID_OF[$name.nginx]}"
    local worker
    worker=$(cat "/proc/${PID_OF[$name.nginx]}/task/${PID_OF[$name.nginx]}/children" 2>/dev/null || true)
    worker=${worker%% *}
    [[ -n $worker ]] || die "$name: cannot find the nginx worker process"
    URL[$name]="http://127.0.0.1:$front"
    RSS_PIDS[$name]="nginx-worker=$worker server=${PID_OF[$name.server]} client=${PID_OF[$name.client]}"
}
has rathole && rathole_stack rathole noise
has rathole-plain && rathole_stack rathole-plain tcp

# Every candidate must answer correctly before anything is measured (a rathole client needs a
# moment to register its service: retry for a few seconds).
for c in "${CANDIDATES[@]}"; do
    [[ -n ${URL[$c]:-} ]] || die "unknown candidate $c"
    ok=""
    for i in $(seq 1 50); do
        body=$(curl -fsS "${URL[$c]}/small" 2>/dev/null) && [[ $body == "Hello, world!" ]] && { ok=1; break; }
        sleep 0.2
    done
    [[ -n $ok ]] || die "$c: GET /small did not answer 'Hello, world!'"
    size=$(curl -fsS -o /dev/null -w '%{size_download}' "${URL[$c]}/large") || die "$c: GET /large failed"
    [[ $size == 1048576 ]] || die "$c: /large answered $size bytes"
done

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
OURS=" $ORIGIN_PID ${PIDS[*]} $(cat /proc/"$ORIGIN_PID"/task/"$ORIGIN_PID"/children 2>/dev/null) "
for c in "${CANDIDATES[@]}"; do
    for p in ${RSS_PIDS[$c]}; do OURS+="${p#*=} "; done
done

QUIET_TIMEOUT=${QUIET_TIMEOUT:-300}
# Waits (up to QUIET_TIMEOUT s) until neither CPU is more than 10 % busy over half a second.

# CPU ticks used so far by processes outside the benchmark (with their reaped children, so
# short-lived compiler processes count too).
OTHERS_MAX=${OTHERS_MAX:-3}
RETRIES=${RETRIES:-5}

# run_wrk CANDIDATE PATH DURATION
#   → "rps p99_ms mib_s p50_ms errors proxy_cpu_busy% load_cpu_busy%"
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

printf '\n%-6s %-6s %-14s %10s %8s %8s %9s %6s %9s %9s\n' \
    round size candidate "req/s" "p50 ms" "p99 ms" "MiB/s" errors "proxyCPU" "loadCPU"
n=${#CANDIDATES[@]}
for round in $(seq 1 "$ROUNDS"); do
    # Rotate the order so that no candidate always runs first or last.
    order=()
    for i in $(seq 0 $((n - 1))); do order+=("${CANDIDATES[$(( (i + round - 1) % n ))]}"); done
    for size in small large; do
        for c in "${order[@]}"; do
            line=$(run_wrk "$c" "/$size" "$DURATION")
            read -r rps p99 mib p50 errors pcpu lcpu <<<"$line"
            printf '%-6s %-6s %-14s %10s %8s %8s %9s %6s %8s%% %8s%%\n' \
                "$round" "$size" "$c" "$rps" "$p50" "$p99" "$mib" "$errors" "$pcpu" "$lcpu"
            echo "$size $c $rps $p99 $mib $p50 $errors $pcpu $lcpu" >>"$RESULTS"
        done
    done
done

field() { # field SIZE CANDIDATE COLUMN → median over rounds
    awk -v s="$1" -v c="$2" -v k="$3" '$1 == s && $2 == c { print $k }' "$RESULTS" | median
}
hwm_mib() { awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo "?"; }
errors_total=$(awk '{ n += $7 } END { print n + 0 }' "$RESULTS")
noisy=$(noisy_count)

echo
echo "median of $ROUNDS rounds, wrk -t1 -c$CONNECTIONS -d$DURATION; every candidate's proxy" \
    "side on CPU $PROXY_CPU, origin + wrk on CPU $LOAD_CPU"
printf '%-14s %10s %9s %9s %9s %9s %9s  %s\n' candidate "small r/s" "p50 ms" "p99 ms" \
    "large MiB/s" "p99 ms" "proxyCPU" "peak RSS MiB"
for c in "${CANDIDATES[@]}"; do
    rss=""
    for p in ${RSS_PIDS[$c]}; do rss+="${p%%=*} $(hwm_mib "${p#*=}"), "; done
    printf '%-14s %10s %9s %9s %11s %9s %8s%%  %s\n' "$c" "$(field small "$c" 3)" \
        "$(field small "$c" 6)" "$(field small "$c" 4)" "$(field large "$c" 5)" \
        "$(field large "$c" 4)" "$(field small "$c" 8)" "${rss%, }"
done
echo "(wrk errors over all runs: $errors_total; runs kept although other work was running: $noisy)"

echo
verdict() { if [[ $1 == 1 ]]; then echo met; else echo "NOT met"; fi; }
compare() { # compare A B → ratio lines of A against B
    printf '%-28s small req/s %5sx   small p99 %5sx   large MiB/s %5sx\n' "$1 / $2" \
        "$(ratio "$(field small "$1" 3)" "$(field small "$2" 3)")" \
        "$(ratio "$(field small "$1" 4)" "$(field small "$2" 4)")" \
        "$(ratio "$(field large "$1" 5)" "$(field large "$2" 5)")"
}
for pair in "tunnel direct" "tunnel rathole" "tunnel rathole-plain" "tunnel-tcp rathole" \
    "tunnel-tcp direct" "rathole direct"; do
    read -r a b <<<"$pair"
    if has "$a" && has "$b"; then compare "$a" "$b"; fi
done
if has tunnel && has rathole; then
    rps_ok=$(awk -v k="$(field small tunnel 3)" -v n="$(field small rathole 3)" 'BEGIN { print (k >= n) ? 1 : 0 }')
    mib_ok=$(awk -v k="$(field large tunnel 5)" -v n="$(field large rathole 5)" 'BEGIN { print (k >= n) ? 1 : 0 }')
    echo
    echo "goal: tunnel small req/s >= 1.0x nginx+rathole: $(verdict "$rps_ok")" \
        "($(ratio "$(field small tunnel 3)" "$(field small rathole 3)")x)"
    echo "goal: tunnel large MiB/s >= 1.0x nginx+rathole: $(verdict "$mib_ok")" \
        "($(ratio "$(field large tunnel 5)" "$(field large rathole 5)")x)"
fi
