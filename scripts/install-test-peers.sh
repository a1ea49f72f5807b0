#!/usr/bin/env bash
# Install the peers the tests talk to: curl and h2load (nghttp2-client),
# Python's grpcio and kubernetes-validate, iptables and iproute2, redis-server
# (shared rate limits). Skips what is already there.
set -euo pipefail

need=()
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
# Only the binary is used: the tests start their own on a loopback port.
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v python3 >/dev/null 2>&1 || need+=(python3 python3-pip)
# Peers of the benchmark harness's quick mode.
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)

if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing test peers: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    echo "installing test peers with sudo: ${need[*]}"
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "warning: cannot install ${need[*]}; the tests that need them will be skipped" >&2
  fi
fi

if ! python3 -c 'import grpc' >/dev/null 2>&1; then
  echo "installing Python grpcio"
  python3 -m pip install --quiet --disable-pip-version-check grpcio \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages grpcio \
    || echo "warning: cannot install grpcio; the grpcio tests will be skipped" >&2
fi

if ! python3 -c 'import kubernetes_validate' >/dev/null 2>&1; then
  echo "installing Python kubernetes-validate (the manifests' schema check)"
  python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages kubernetes-validate \
    || echo "warning: cannot install kubernetes-validate; the manifest schema test will be skipped" >&2
fi
