#!/usr/bin/env bash
# A Docker engine for `make run` on a machine that has none running.
#   deploy/dev-engine.sh env   prints the environment (DOCKER_HOST, ...) the daemon should use,
#                              starting a private engine under $FOG_DEV_ENGINE_DIR if needed
#   deploy/dev-engine.sh stop  stops that private engine
# A machine whose own Docker answers (DOCKER_HOST or /var/run/docker.sock) is used as it is.
set -euo pipefail
dir=${FOG_DEV_ENGINE_DIR:-/tmp/fog-dev-engine}
sock="unix://$dir/docker.sock"

answers() { command -v docker >/dev/null && docker -H "$1" version >/dev/null 2>&1; }

case "${1:-env}" in
env)
  if [ -n "${DOCKER_HOST:-}" ] && answers "$DOCKER_HOST"; then
    echo "export DOCKER_HOST=$DOCKER_HOST"; exit 0
  fi
  if answers unix:///var/run/docker.sock; then
    echo "export DOCKER_HOST=unix:///var/run/docker.sock"; exit 0
  fi
  if ! answers "$sock"; then
    if ! command -v dockerd >/dev/null; then
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "dev-engine: installing docker.io" >&2
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >&2
      else
        echo "dev-engine: no Docker engine answers and dockerd is not installed" >&2; exit 1
      fi
    fi
    mkdir -p "$dir"
    echo "dev-engine: starting a private engine at $sock (log: $dir/dockerd.log)" >&2
    setsid dockerd --bridge=none --iptables=false --ip-masq=false \
      -H "$sock" --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$dir/docker.pid" \
      >"$dir/dockerd.log" 2>&1 < /dev/null &
    for _ in $(seq 1 100); do answers "$sock" && break; sleep 0.2; done
    answers "$sock" || { echo "dev-engine: engine did not start; see $dir/dockerd.log" >&2; exit 1; }
  fi
  # The private engine has no bridge network (no iptables here): containers get none.
  echo "export DOCKER_HOST=$sock FOG_CONTAINER_NETWORK=\${FOG_CONTAINER_NETWORK:-none}"
  ;;
stop)
  if [ -f "$dir/docker.pid" ]; then
    kill "$(cat "$dir/docker.pid")" 2>/dev/null || true
    for _ in $(seq 1 100); do [ -f "$dir/docker.pid" ] || break; sleep 0.2; done
  fi
  ;;
*) echo "usage: $0 env|stop" >&2; exit 2 ;;
esac
