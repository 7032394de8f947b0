#!/usr/bin/env bash
# The peer benchmark: appserver against uWSGI, php-fpm and Go's net/http/fcgi, all behind one
# nginx on loopback, serving the same three pages. See docs/performance.md, "Against peers".
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    cat <<'USAGE'
usage: benches/peers.sh [--duration SECONDS] [--rounds N] [--json PATH] [--markdown PATH]
                        [--only BACKEND,...]

Starts one nginx (2 workers) on a free loopback port and, in turn, each backend behind it:
nginx alone (the ceiling), uWSGI 2.0 (python3, 2 processes) over FastCGI and over SCGI,
php-fpm (static pool of 2), Go net/http/fcgi, and appserver's examples/bench.rs threaded and
prefork (2 workers, one request each at a time, and 25 each: worker_requests=25), over
FastCGI with and without fastcgi_keep_conn, and over SCGI. Each
serves `/` (13 bytes), `/big` (10 MiB) and `/upload` (reads a 10 MiB body, answers its
length), and so does the floor (benches/peers/floor.c, the least a FastCGI responder can do,
with and without keep-conn, and an SCGI one: what any backend can reach here; and as two
processes with keep-conn: what a pool of two, like the prefork one, can reach, also with one
answer in flight per process, as a prefork worker serves one request at a time). Each page
gets `wrk -t2 -c50 -d SECONDS`, in interleaved rounds (every backend in round 1, then every
backend in round 2, ...). Backend CPU per request and RSS come from /proc.

Options (environment variables in brackets):
  --duration SECONDS   wrk's run per page and backend [DURATION]; default 5
  --rounds N           interleaved rounds; the table shows medians [ROUNDS]; default 3
  --json PATH          every run, medians and ratios; default target/peers.json
  --markdown PATH      the table; default target/peers.md (also printed)
  --only LIST          comma-separated backends, e.g. uwsgi-fcgi,appserver-threaded-fcgi
                       (nginx-direct, uwsgi-fcgi, uwsgi-scgi, php-fpm, go-fcgi,
                       fcgi-floor, fcgi-floor-kc, fcgi-floor-kc-2, scgi-floor,
                       scgi-floor-2, fcgi-floor-kc-2-serial,
                       appserver-{threaded,prefork,prefork-wr25}-{fcgi,fcgi-kc,scgi})
  -h, --help           this text

Installs what is missing with apt-get (nginx-light wrk uwsgi uwsgi-plugin-python3 php-fpm
golang-go gcc python3; no service is started) and builds the example with cargo --release.
Run it on a quiet machine: the ratios, not the absolute figures, carry over. Exit status:
0, 1 if a backend failed its contract check or to start, 2 for a bad option.
USAGE
}

bad() {
    echo "peers.sh: $1" >&2
    echo "Try 'benches/peers.sh --help'." >&2
    exit 2
}

duration=${DURATION:-5}
rounds=${ROUNDS:-3}
json=target/peers.json
markdown=target/peers.md
only=""
while (($#)); do
    case $1 in
        -h | --help) usage; exit 0 ;;
        --duration | --rounds | --json | --markdown | --only)
            (($# >= 2)) || bad "$1 needs a value"
            case $1 in
                --duration) duration=$2 ;;
                --rounds) rounds=$2 ;;
                --json) json=$2 ;;
                --markdown) markdown=$2 ;;
                --only) only=$2 ;;
            esac
            shift 2
            ;;
        *) bad "unknown option '$1'" ;;
    esac
done
[[ $duration =~ ^[1-9][0-9]*$ ]] || bad "--duration (DURATION) must be a whole number of seconds >= 1, not '$duration'"
[[ $rounds =~ ^[1-9][0-9]*$ ]] || bad "--rounds (ROUNDS) must be a whole number >= 1, not '$rounds'"
known=" nginx-direct uwsgi-fcgi uwsgi-scgi php-fpm go-fcgi fcgi-floor fcgi-floor-kc fcgi-floor-kc-2 scgi-floor
scgi-floor-2 fcgi-floor-kc-2-serial
appserver-threaded-fcgi
appserver-threaded-fcgi-kc appserver-prefork-fcgi appserver-prefork-fcgi-kc
appserver-threaded-scgi appserver-prefork-scgi
appserver-prefork-wr25-fcgi appserver-prefork-wr25-fcgi-kc appserver-prefork-wr25-scgi "
IFS=, read -ra wanted <<<"$only"
for name in "${wanted[@]}"; do
    [[ $known == *[[:space:]]$name[[:space:]]* ]] || bad "--only: no backend '$name'; the backends:$(echo $known | sed 's/^/ /')"
done

# Debian package -> a file it installs.
declare -A packages=(
    [nginx-light]=/usr/sbin/nginx
    [wrk]=/usr/bin/wrk
    [uwsgi]=/usr/bin/uwsgi
    [uwsgi-plugin-python3]=/usr/lib/uwsgi/plugins/python3_plugin.so
    [golang-go]=/usr/bin/go
    [gcc]=/usr/bin/gcc
    [python3]=/usr/bin/python3
)
missing=()
for pkg in "${!packages[@]}"; do
    [[ -e ${packages[$pkg]} ]] || missing+=("$pkg")
done
compgen -G '/usr/sbin/php-fpm*' >/dev/null || missing+=(php-fpm)
if ((${#missing[@]})); then
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    echo "peers.sh: installing ${missing[*]}" >&2
    # Keep the packages' system services (nginx on port 80, php-fpm, uwsgi) from starting.
    policy=/usr/sbin/policy-rc.d
    made_policy=false
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
        "${sudo[@]}" chmod 0755 "$policy"
        made_policy=true
    fi
    trap '[[ $made_policy == true ]] && "${sudo[@]}" rm -f "$policy"' EXIT
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
fi
PATH=$PATH:/usr/sbin

cargo build --release --quiet --example bench
exec python3 benches/peers/run.py --duration "$duration" --rounds "$rounds" \
    --json "$json" --markdown "$markdown" --only "$only"
