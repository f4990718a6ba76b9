#!/usr/bin/env bash
# CPU time per request of `lb run`'s L7 proxy, for comparing builds on a loaded machine:
# whole-run requests/s move with whatever else runs, the proxy's own CPU per request much
# less. lb runs alone on CPU 0, wrk (one thread) and an nginx backend on CPU 1; for each
# round and each binary in turn: 1 s of warm-up, then lb's utime+stime (/proc/PID/stat)
# around DURATION seconds of wrk. Root (lb run is the root agent).
#
#   scripts/l7-cpu-per-request.sh CONNECTIONS ROUNDS LB_BINARY...
#   e.g. scripts/l7-cpu-per-request.sh 1000 5 /tmp/lb-main target/release/lb
# CLOSE=1: a new connection per request (wrk -H 'Connection: close', bench-l7's h1-close).
# H2C=1: h2c with 10 streams per connection (h2load -m10, bench-l7's h2c).
# BODY_KIB=64: responses of that many KiB (a file from the backend, bench-l7's h1-64k)
# instead of 100 bytes.
set -euo pipefail
conns=$1 rounds=$2
shift 2
duration=${DURATION:-5}
close=()
[ -n "${CLOSE:-}" ] && close=(-H 'Connection: close')
dir=$(mktemp -d /tmp/lb-cpu-per-request.XXXXXX)
backend=28080 listen=28081
location='return 200 "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789";'
path=/
if [ -n "${BODY_KIB:-}" ]; then
  chmod a+rx "$dir" # nginx workers run as nobody
  mkdir "$dir/www"
  head -c $((BODY_KIB * 1024)) /dev/zero >"$dir/www/body"
  location="root $dir/www;"
  path=/body
fi
cat >"$dir/backend.conf" <<EOF
daemon off;
worker_processes 1;
pid $dir/backend.pid;
error_log $dir/backend.err;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/cb; proxy_temp_path $dir/pt; fastcgi_temp_path $dir/ft;
  uwsgi_temp_path $dir/ut; scgi_temp_path $dir/st;
  server {
    listen 127.0.0.1:$backend;
    keepalive_requests 1000000;
    location / { $location }
  }
}
EOF
cat >"$dir/lb.toml" <<EOF
[admin]
socket = "$dir/admin.sock"

[l7]
max_connections_per_listener = 100000

[forwarding_rules.bench]
ip_address = "127.0.0.1"
ports = [$listen]
target = "bench"

[target_http_proxies.bench]
url_map = "bench"

[url_maps.bench]
default_service = "be"

[backend_services.be]
protocol = "HTTP"

[[backend_services.be.backends]]
address = "127.0.0.1"
port = $backend
EOF
taskset -c 1 nginx -c "$dir/backend.conf" &
nginx_pid=$!
lb_pid=
cleanup() {
  [ -n "$lb_pid" ] && kill "$lb_pid" 2>/dev/null || true
  kill "$nginx_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
bins=("$@")
for r in $(seq 1 "$rounds"); do
  # Every other round in reverse order: the first binary of a round measured a few
  # percent worse in A/A runs (the same build twice).
  order=("${bins[@]}")
  if [ $((r % 2)) -eq 0 ]; then
    order=()
    for ((i = ${#bins[@]} - 1; i >= 0; i--)); do order+=("${bins[$i]}"); done
  fi
  for bin in "${order[@]}"; do
    taskset -c 0 "$bin" run --config "$dir/lb.toml" >"$dir/lb.log" 2>&1 &
    lb_pid=$!
    for _ in $(seq 1 100); do
      curl -s -o /dev/null "http://127.0.0.1:$listen/" && break
      sleep 0.1
    done
    p99=
    if [ -n "${H2C:-}" ]; then
      url="http://127.0.0.1:$listen$path"
      taskset -c 1 h2load -c"$conns" -m10 -D1 "$url" >/dev/null 2>&1
      t0=$(cpu_ticks "$lb_pid")
      out=$(taskset -c 1 h2load -c"$conns" -m10 -D"$duration" "$url" 2>&1)
      t1=$(cpu_ticks "$lb_pid")
      n=$(echo "$out" | awk '/^requests:/ {print $8}')
      rps=$(echo "$out" | awk -F', ' '/^finished in/ {print $2}' | awk '{print $1}')
    else
      taskset -c 1 wrk -t1 -c"$conns" -d1s "${close[@]}" "http://127.0.0.1:$listen$path" >/dev/null 2>&1
      t0=$(cpu_ticks "$lb_pid")
      out=$(taskset -c 1 wrk -t1 -c"$conns" -d"${duration}s" --latency "${close[@]}" "http://127.0.0.1:$listen$path" 2>&1)
      t1=$(cpu_ticks "$lb_pid")
      n=$(echo "$out" | awk '/requests in/ {print $1}')
      rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
      p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
    fi
    us=$(echo "scale=2; ($t1 - $t0) * 1000000 / $hz / $n" | bc)
    echo "round $r $bin: -c$conns $rps req/s${p99:+ (p99 $p99)}, lb $us µs of CPU per request"
    kill "$lb_pid"
    wait "$lb_pid" 2>/dev/null || true
    lb_pid=
  done
done
