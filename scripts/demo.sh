#!/usr/bin/env bash
# Run Skiff in front of a demo app: builds both, starts the app on
# 127.0.0.1:8080 and `skiff run --config config/demo.yaml` in the foreground.
# Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --bin skiff --example demo_app
export DEMO_APP_ADDR=${DEMO_APP_ADDR:-127.0.0.1:8080}
target/release/examples/demo_app &
app=$!
trap 'kill $app 2>/dev/null || true' EXIT

cat <<MSG

Skiff is starting in front of the demo app ($DEMO_APP_ADDR). In another terminal:

  curl -i -H 'Host: demo' http://127.0.0.1:15001/hello            # app -> outbound -> inbound -> app
  curl -i --http2-prior-knowledge http://127.0.0.1:15006/hello      # HTTP/2 straight to the inbound side
  curl -i -H 'Host: nowhere' http://127.0.0.1:15001/                # 404 with x-skiff-error: no_route
  curl -s http://127.0.0.1:15000/metrics | grep '^skiff_requests_total'
  curl -s http://127.0.0.1:15000/clusters
  target/release/skiff route --config config/demo.yaml --authority demo --path /hello

MSG
target/release/skiff --log-format text run --config config/demo.yaml
