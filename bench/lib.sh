# Shared by the scripts in bench/ (sourced, never run): messages, installing tools, the
# kakuremichi binary, the temporary folder and its clean-up, free ports, nginx config pieces,
# and the CPU bookkeeping that keeps runs on a busy machine from passing unnoticed.
#
# The sourcing script sets ROOT (the repository), PROXY_CPU and LOAD_CPU first.

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- tools
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
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
need() { # need COMMAND PACKAGE: installs PACKAGE when COMMAND is missing
    command -v "$1" >/dev/null || apt_install "$2"
}
find_nginx() {
    command -v nginx 2>/dev/null || { [[ -x /usr/sbin/nginx ]] && echo /usr/sbin/nginx; } || true
}
require_nginx() { # sets NGINX
    if [[ -z $(find_nginx) ]]; then
        apt_install nginx-light || apt_install nginx
    fi
    NGINX=$(find_nginx)
    [[ -n $NGINX ]] || die "nginx is not installed"
}
kakuremichi_binary() { # sets KBIN: $KAKUREMICHI_BIN, or a fresh release build
    if [[ -n ${KAKUREMICHI_BIN:-} ]]; then
        KBIN=$KAKUREMICHI_BIN
    else
        log "cargo build --release -p kakuremichi"
        (cd "$ROOT" && cargo build --release -p kakuremichi)
        KBIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/kakuremichi
    fi
    [[ -x $KBIN ]] || die "no kakuremichi binary at $KBIN"
}
check_cpus() { # with one CPU, everything shares CPU 0
    local ncpu
    ncpu=$(nproc --all)
    if (( ncpu < 2 )); then
        log "warning: only $ncpu CPU; everything shares CPU 0"
        PROXY_CPU=0 LOAD_CPU=0
    fi
}

# ---------------------------------------------------------------- processes and cleanup
bench_tmp() { # bench_tmp NAME: sets TMP and PIDS; on exit stops PIDS and removes TMP
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/kakuremichi-$1.XXXXXX")
    chmod 755 "$TMP"
    PIDS=()
    trap cleanup EXIT
    trap 'exit 130' INT TERM
}
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

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
USED_PORTS=" "
free_port() {
    local p
    while :; do
        # Below the ephemeral range (32768-), so that no outgoing connection holds it.
        p=$(( 20000 + RANDOM % 12000 ))
        [[ $USED_PORTS == *" $p "* ]] && continue
        port_in_use "$p" && continue
        # Tunnel ports need the UDP port too: skip numbers with a UDP socket bound.
        grep -qi ":$(printf '%04X' "$p") " /proc/net/udp /proc/net/udp6 2>/dev/null && continue
        USED_PORTS+="$p "
        echo "$p"
        return
    done
}
wait_port() { # wait_port PORT PID
    local port=$1 pid=$2 i
    for i in $(seq 1 100); do
        port_in_use "$port" && return 0
        kill -0 "$pid" 2>/dev/null || die "process $pid exited before listening on $port"
        sleep 0.1
    done
    die "nothing listens on $port after 10 s"
}
wait_access_line() { # wait_access_line FILE: the first kakuremichi access-log line in FILE
    # Log lines are written in batches (within a few ms): give the first one a moment.
    for _ in {1..50}; do
        grep -q '"target":"kakuremichi::access"' "$1" && return 0
        sleep 0.1
    done
    grep -q '"target":"kakuremichi::access"' "$1"
}

# ---------------------------------------------------------------- nginx
# Workers run as the current user too (as root, nginx would otherwise switch to nobody).
NGINX_USER=""
if [[ $(id -u) -eq 0 ]]; then NGINX_USER="user $(id -un) $(id -gn);"; fi
nginx_common() { # nginx_common PREFIX [WORKER_CONNECTIONS]
    cat <<EOF
$NGINX_USER
daemon off;
worker_processes 1;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections ${2:-4096}; }
EOF
}
nginx_temp_paths() { # nginx_temp_paths PREFIX
    cat <<EOF
    client_body_temp_path $1/tmp/body;
    proxy_temp_path $1/tmp/proxy;
    fastcgi_temp_path $1/tmp/fastcgi;
    uwsgi_temp_path $1/tmp/uwsgi;
    scgi_temp_path $1/tmp/scgi;
EOF
}
small_file_origin_conf() { # small_file_origin_conf PREFIX PORT [WORKER_CONNECTIONS] [EXTRA_SERVER_LINES]
    # nginx.conf of the bench origin: static files from PREFIX/www on 127.0.0.1:PORT, kept-alive
    # connections, no access log (EXTRA_SERVER_LINES may add locations that log).
    nginx_common "$1" "${3:-4096}"
    cat <<EOF
http {
$(nginx_temp_paths "$1")
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    default_type application/octet-stream;
    server {
        listen 127.0.0.1:$2 backlog=4096;
        root $1/www;
        location / { }
${4:-}
    }
}
EOF
}
tls_gateway_toml() { # tls_gateway_toml HTTP_PORT HTTPS_PORT ORIGIN_PORT CERT KEY [EXTRA_GATEWAY_LINES]
    # gateway.toml of a kakuremichi TLS bench: both listeners (no redirect), one certificate,
    # one route to the origin.
    cat <<EOF
[gateway]
http = "127.0.0.1:$1"
https = "127.0.0.1:$2"
${6:-}
state_dir = "state"
redirect_https = false

[tls]
certificates = [{ cert = "$4", key = "$5" }]

[[routes]]
name = "bench"
upstream = "http://127.0.0.1:$3"
EOF
}
nginx_worker() { # nginx_worker MASTER_PID → the worker's pid
    local w
    w=$(cat "/proc/$1/task/$1/children" 2>/dev/null || true)
    w=${w%% *}
    [[ -n $w ]] || die "cannot find the worker process of nginx $1"
    echo "$w"
}

# ---------------------------------------------------------------- CPU bookkeeping
cpu_sample() { # "busy total" jiffies of the proxy CPU, then of the load CPU
    awk -v p="cpu$PROXY_CPU" -v l="cpu$LOAD_CPU" '$1 == p || $1 == l {
        t = 0; for (i = 2; i <= 9; i++) t += $i     # user .. steal (guest is inside user)
        v[$1] = (t - $5 - $6 - $9) " " t             # busy = not idle, iowait or steal
    } END { print v[p], v[l] }' /proc/stat
}
cpu_busy() { # cpu_busy BEFORE AFTER → "proxy% load%"
    awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " ")
        printf "%.0f %.0f\n", 100 * (y[1] - x[1]) / (y[2] - x[2] + 1e-9),
            100 * (y[3] - x[3]) / (y[4] - x[4] + 1e-9) }'
}
note_noisy() { echo x >>"$TMP/noisy"; }
noisy_count() { if [[ -f $TMP/noisy ]]; then wc -l <"$TMP/noisy"; else echo 0; fi; }
wait_quiet() { # waits up to QUIET_TIMEOUT seconds for both CPUs to be idle
    local start=$SECONDS a b busy
    while :; do
        a=$(cpu_sample); sleep 0.5; b=$(cpu_sample)
        busy=$(cpu_busy "$a" "$b" | awk '{ print ($1 > $2 ? $1 : $2) }')
        (( busy <= 10 )) && return 0
        if (( SECONDS - start >= QUIET_TIMEOUT )); then
            log "warning: the CPUs are still ${busy}% busy with other work; measuring anyway"
            note_noisy
            return 0
        fi
        if (( SECONDS - start == 0 )); then log "waiting for other work on the CPUs (${busy}% busy)"; fi
        sleep 2
    done
}
others_ticks() { # CPU ticks of every process but OURS (pids) and this script's ancestors
    local exclude=" $OURS " p=$BASHPID f
    while (( p > 1 )); do
        exclude+="$p "
        p=$(awk '{ sub(/^.*\) /, ""); print $2 }' "/proc/$p/stat" 2>/dev/null || echo 1)
    done
    for f in /proc/[0-9]*/stat; do
        p=${f#/proc/}; p=${p%/stat}
        [[ $exclude == *" $p "* ]] || cat "$f" 2>/dev/null || true
    done | awk '{ sub(/^.*\) /, ""); s += $12 + $13 + $14 + $15 } END { print s + 0 }'
}
duration_secs() { # wrk duration (10, 10s, 2m, 1h) → seconds
    awk -v d="$1" 'BEGIN { n = d + 0; u = substr(d, length(d))
        if (u == "m") n *= 60; else if (u == "h") n *= 3600; print n }'
}

# ---------------------------------------------------------------- figures
median() { sort -g | awk '{ v[NR] = $1 } END {
    if (NR == 0) { print "nan"; exit }
    if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 > 0) printf "%.2f", a / b; else print "n/a" }'; }
