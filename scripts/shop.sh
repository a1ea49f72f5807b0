#!/usr/bin/env bash
# The demo shop (docs/shop.md): four gRPC services — order, catalog,
# inventory, payment — each behind its own Skiff (config/shop/), on this
# machine. Builds everything, starts the eight processes in the background,
# places one order with the client and prints what to try next. Ctrl-C (or
# the end of the script) stops them all.
#
#   scripts/shop.sh            # start, place an order, run until Ctrl-C
#   scripts/shop.sh --once     # start, place an order, stop
#
# SHOP_BUILD=debug builds without --release (quicker to build, slower to run).
set -euo pipefail
cd "$(dirname "$0")/.."

once=false
case "${1:-}" in
  --once) once=true ;;
  "") ;;
  *) echo "usage: scripts/shop.sh [--once]" >&2; exit 2 ;;
esac

if [[ ${SHOP_BUILD:-release} == debug ]]; then
  profile=(); dir=target/debug
else
  profile=(--release); dir=target/release
fi
cargo build "${profile[@]}" --bin skiff --example shop_order --example shop_catalog \
  --example shop_inventory --example shop_payment --example shop_client
skiff=$dir/skiff
client=$dir/examples/shop_client

# Service n: app 127.0.0.1:50n51, Skiff inbound 150n6, outbound 150n1, admin 150n0.
services=(order catalog inventory payment)
declare -A num=([order]=1 [catalog]=2 [inventory]=3 [payment]=4)

# True when something accepts connections on 127.0.0.1:$1.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# GET http://127.0.0.1:$1$2 and print the body (no curl needed).
get() {
  (
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$2" >&3
    timeout 5 cat <&3
  ) 2>/dev/null | sed '1,/^\r$/d'
}

# True when the Skiff with admin port $1 answers /ready with 200.
ready() {
  local status
  status=$( (exec 3<>"/dev/tcp/127.0.0.1/$1" &&
    printf 'GET /ready HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3 &&
    timeout 2 head -n1 <&3) 2>/dev/null) || return 1
  [[ $status == *" 200 "* ]]
}

for s in "${services[@]}"; do
  n=${num[$s]}
  for port in "50${n}51" "15${n}06" "15${n}00" $([[ $s == order ]] && echo 15101); do
    if listening "$port"; then
      echo "port $port ($s) is taken; is the shop running already?" >&2
      exit 1
    fi
  done
done

logs=$(mktemp -d "${TMPDIR:-/tmp}/skiff-shop.XXXXXX")
declare -A pid=()

stop() {
  trap - EXIT INT TERM
  echo
  echo "stopping the shop..."
  # The apps first, so that no call is left without its sidecar.
  for s in "${services[@]}"; do kill "${pid[$s]:-}" 2>/dev/null || true; done
  for s in "${services[@]}"; do kill "${pid[$s-skiff]:-}" 2>/dev/null || true; done
  for _ in $(seq 50); do
    alive=false
    for p in "${pid[@]}"; do kill -0 "$p" 2>/dev/null && alive=true; done
    $alive || break
    sleep 0.1
  done
  for p in "${pid[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped; logs are in $logs"
}
trap stop EXIT
trap 'exit 130' INT TERM

# The apps.
for s in "${services[@]}"; do
  n=${num[$s]}
  ADDR=127.0.0.1:50${n}51 "$dir/examples/shop_$s" >"$logs/$s.log" 2>&1 &
  pid[$s]=$!
done
# Their Skiffs: logs on stderr, the access log (one JSON line per call) on stdout.
for s in "${services[@]}"; do
  "$skiff" run --config "config/shop/$s.yaml" \
    >"$logs/$s-access.log" 2>"$logs/$s-skiff.log" &
  pid[$s-skiff]=$!
done

# Wait (bounded) until every app listens and every Skiff is ready.
for s in "${services[@]}"; do
  n=${num[$s]}
  for _ in $(seq 100); do
    listening "50${n}51" && ready "15${n}00" && continue 2
    for p in "${pid[$s]}" "${pid[$s-skiff]}"; do
      if ! kill -0 "$p" 2>/dev/null; then
        echo "$s did not start:" >&2
        tail -n 20 "$logs/$s.log" "$logs/$s-skiff.log" >&2
        exit 1
      fi
    done
    sleep 0.1
  done
  echo "$s is not ready after 10s; see $logs/$s.log and $logs/$s-skiff.log" >&2
  exit 1
done
echo "the shop is up: 4 services, 4 Skiffs (logs in $logs)"
echo

# One order, end to end: client -> order's Skiff -> order -> order's Skiff
# (outbound) -> the other services' Skiffs -> catalog, inventory, payment.
"$client" || true

echo
echo "what the order's Skiff did with the calls it sent on (non-zero counters):"
get 15100 /metrics | grep -E '^skiff_(upstream_attempts|retries)_total\{cluster="(catalog|inventory|payment)"' |
  grep -v ' 0$' | sed 's/^/  /' || true

if $once; then
  echo
  echo "(scripts/shop.sh without --once keeps the shop up and says what to try)"
  exit 0
fi

cat <<MSG

Try next, in another terminal:

  # Another order, watched until it is delivered:
  $client
  # 30 orders: payment's UNAVAILABLEs and inventory's slow calls are retried
  # by the order's Skiff, and most orders still go through:
  $client --orders 30
  # An error of the app itself (FAILED_PRECONDITION) passes through untouched:
  $client lamp:5
  # Stop payment: orders fail with "(skiff: connect_failure)":
  kill ${pid[payment]}

  # Metrics of the order's Skiff (catalog's on 15200, inventory's on 15300, payment's on 15400):
  curl -s http://127.0.0.1:15100/metrics | grep ^skiff_
  # Its endpoints, with health and ejections:
  curl -s http://127.0.0.1:15100/clusters
  # Which route, timeout and retry policy a call to payment gets, and why:
  $skiff route --config config/shop/order.yaml --authority payment --path /shop.Payment/Charge
  # One JSON line per call through the order's Skiff; one line per Charge:
  tail -f $logs/order-access.log $logs/payment.log

MSG
echo "the shop runs until Ctrl-C"
declare -A gone=()
while :; do
  for k in "${!pid[@]}"; do
    if [[ -z ${gone[$k]:-} ]] && ! kill -0 "${pid[$k]}" 2>/dev/null; then
      gone[$k]=1
      echo "$k exited; see $logs/$k.log"
    fi
  done
  sleep 1
done
