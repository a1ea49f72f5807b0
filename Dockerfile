# syntax=docker/dockerfile:1
#
# Skiff's images, from one build:
#
#   docker build -t skiff .                       # the proxy: distroless, UID 1337
#   docker build --target init -t skiff-init .    # the pod's init container: + iptables
#   docker build --target shop -t skiff-shop .    # the demo shop's services (deploy/)
#
# The proxy image runs `skiff run --config /etc/skiff/skiff.yaml` by default;
# the init image runs `skiff iptables` (as root with NET_ADMIN, set by the pod
# spec) and exits. docs/kubernetes.md shows both in a pod.

ARG RUST_VERSION=1

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
# .dockerignore lets in only Cargo.toml, Cargo.lock, src/ and examples/.
COPY . .
# The registry and target/ live in BuildKit caches, so a rebuild compiles
# only what changed; the binary is copied out of the cache in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin skiff \
    && install -D -m 0755 target/release/skiff /out/skiff

# The init container. Debian's iptables is the nf_tables backend, which
# needs only CAP_NET_ADMIN. Root, since iptables must be: the pod spec gives
# it runAsUser: 0 and nothing else runs in this image.
FROM debian:bookworm-slim AS init
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/skiff /usr/local/bin/skiff
ENTRYPOINT ["skiff"]
CMD ["iptables"]

# The demo shop: order, catalog, inventory and payment (examples/shop/), one
# binary; each Deployment in deploy/ runs one of them by `command`
# (`shop order`, `shop catalog`, ...).
FROM build AS shop-build
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p shop \
    && install -D -m 0755 target/release/shop /out/shop/shop

FROM gcr.io/distroless/cc-debian12:nonroot AS shop
COPY --from=shop-build /out/shop/ /usr/local/bin/
USER 10001:10001

# The proxy, last so that it is the default target. distroless/cc has the
# glibc and libgcc the binary links against, and no shell.
FROM gcr.io/distroless/cc-debian12:nonroot AS proxy
COPY --from=build /out/skiff /usr/local/bin/skiff
# The UID `skiff iptables --proxy-uid` exempts from redirection (default 1337).
USER 1337:1337
# admin (/metrics, /ready, /live), outbound, inbound
EXPOSE 15000 15001 15006
ENTRYPOINT ["skiff"]
CMD ["run", "--config", "/etc/skiff/skiff.yaml"]
