#!/usr/bin/env bash
# Makes sure the brokers the tests use are installed and running on this
# machine: Redis on 127.0.0.1:6379 and RabbitMQ on 127.0.0.1:5672
# (guest/guest). Installs Debian's packages when missing (as root, or with
# sudo), starts what is not running, and waits until both answer.
set -euo pipefail

sudo=""
[[ "$(id -u)" -ne 0 ]] && sudo="sudo"
apt_updated=""
install() {
  if [[ -z "$apt_updated" ]]; then
    $sudo apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

wait_port() {
  local port=$1 what=$2 tries=${3:-120}
  for _ in $(seq "$tries"); do
    port_open "$port" && return 0
    sleep 0.5
  done
  echo "services: $what did not start listening on 127.0.0.1:$port" >&2
  return 1
}

# Redis (the tests also start private redis-server instances for outage tests).
command -v redis-server >/dev/null || { echo "services: installing redis-server"; install redis-server; }
if ! port_open 6379; then
  echo "services: starting Redis on 127.0.0.1:6379"
  $sudo redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  wait_port 6379 Redis
fi

# RabbitMQ (the tests use rabbitmqctl to inspect bindings and close connections).
command -v rabbitmq-server >/dev/null || { echo "services: installing rabbitmq-server"; install rabbitmq-server; }
if ! port_open 5672; then
  echo "services: starting RabbitMQ on 127.0.0.1:5672"
  $sudo rabbitmq-server -detached
  wait_port 5672 RabbitMQ 240
fi
$sudo rabbitmqctl await_startup >/dev/null
echo "services: Redis and RabbitMQ are up"
