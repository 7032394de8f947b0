#!/usr/bin/env bash
# Load test against a real peer: nginx in front of appserver's hello example and, in the
# same run, of php-fpm serving the same hello page, so the figure is a ratio measured on
# one machine at one moment (this machine is shared and noisy; absolute numbers are not).
#
#   benches/load.sh                 # 5 s per target, 8 connections
#   DURATION=10 CONNECTIONS=64 benches/load.sh
#
# Needs nginx, wrk and php-fpm (apt-get install nginx-light wrk php-fpm). Everything runs
# from a temporary directory on loopback and is stopped by pid at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-8}
WORKERS=${WORKERS:-4}
php_fpm=$(command -v php-fpm || ls /usr/sbin/php-fpm* 2>/dev/null | head -n1)
for tool in nginx wrk; do
    command -v "$tool" >/dev/null || [[ -x /usr/sbin/$tool ]] || { echo "load.sh: $tool is missing" >&2; exit 1; }
done
[[ -n $php_fpm ]] || { echo "load.sh: php-fpm is missing" >&2; exit 1; }

cargo build --release --quiet --example hello
dir=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

# appserver: prefork, the default method, WORKERS workers.
target/release/examples/hello runfcgi daemonize=false socket="$dir/app.sock" \
    minspare="$WORKERS" maxspare="$WORKERS" maxchildren="$WORKERS" 2>"$dir/app.log" &
pids+=($!)

# php-fpm: a static pool of the same size.
printf '<?php header("Content-Type: text/plain"); echo "Hello, world\\n";\n' >"$dir/hello.php"
user_line=""
[[ $(id -u) -eq 0 ]] && user_line="user = root
group = root"
cat >"$dir/fpm.conf" <<CONF
[global]
pid = $dir/fpm.pid
error_log = $dir/fpm.log
daemonize = no
[www]
$user_line
listen = $dir/php.sock
pm = static
pm.max_children = $WORKERS
CONF
fpm_flags=(-y "$dir/fpm.conf" -F)
[[ $(id -u) -eq 0 ]] && fpm_flags+=(-R)
"$php_fpm" "${fpm_flags[@]}" &
pids+=($!)

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$dir/nginx.conf" <<CONF
daemon off;
master_process off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/nginx.log;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $dir/cb; fastcgi_temp_path $dir/fc; proxy_temp_path $dir/px;
    scgi_temp_path $dir/sc; uwsgi_temp_path $dir/uw;
    upstream app { server unix:$dir/app.sock; keepalive 16; }
    upstream php { server unix:$dir/php.sock; }
    server {
        listen 127.0.0.1:$port;
        location /app { include /etc/nginx/fastcgi_params; fastcgi_keep_conn on; fastcgi_pass app; }
        location /php {
            include /etc/nginx/fastcgi_params;
            fastcgi_param SCRIPT_FILENAME $dir/hello.php;
            fastcgi_pass php;
        }
    }
}
CONF
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
"$nginx_bin" -p "$dir" -c "$dir/nginx.conf" -e "$dir/nginx.log" &
pids+=($!)

# Readiness: both backends answer through nginx.
for _ in $(seq 100); do
    if curl -fs "http://127.0.0.1:$port/app" >/dev/null && curl -fs "http://127.0.0.1:$port/php" >/dev/null; then
        break
    fi
    sleep 0.1
done

rps() {
    wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" "http://127.0.0.1:$port/$1" | awk '/Requests\/sec/ {print $2}'
}
curl -fs "http://127.0.0.1:$port/app" | grep -q "Hello, world" || { echo "load.sh: appserver did not answer" >&2; exit 1; }
curl -fs "http://127.0.0.1:$port/php" | grep -q "Hello, world" || { echo "load.sh: php-fpm did not answer" >&2; exit 1; }
app=$(rps app)
php=$(rps php)
app2=$(rps app)
php2=$(rps php)
echo "nginx → appserver hello (prefork, $WORKERS workers): $app, $app2 requests/s"
echo "nginx → php-fpm hello.php (static, $WORKERS children): $php, $php2 requests/s"
python3 -c "a=($app+$app2)/2; p=($php+$php2)/2; print(f'ratio appserver / php-fpm: {a/p:.2f}')"
