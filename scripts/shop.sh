#!/usr/bin/env bash
# The demo shop (examples/shop/README.md): the same as
# `cargo run --release -p shop -- ARGS`, which builds the shop and Skiff,
# starts every replica and sidecar and the gateway, and places orders until
# Ctrl-C (or `--requests N`, then prints the summary and stops).
#
#   scripts/shop.sh                            # until Ctrl-C
#   scripts/shop.sh --requests 500 --chaos     # 500 orders with a replica killed
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --release -p shop -- "$@"
