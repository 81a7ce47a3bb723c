# deepeverest on Debian 12: one image for both roles of the daemon, run as
# the non-root user deepeverest (uid/gid 10001).
#   docker build -t deepeverest .
#   docker run -p 8080:8080 -v de-data:/data deepeverest          # one daemon (CMD)
#   docker run -p 8080:8080 deepeverest --coordinator \
#       --shards http://shard0:8080,http://shard1:8080 --listen 0.0.0.0:8080
# The entrypoint is the daemon; the arguments choose the role (the Kubernetes
# manifests in deploy/k8s give the shard and coordinator arguments). A bind
# mount at /data must be writable by uid 10001; a named volume already is.
#
# GPU: Debian's LibTorch is CPU only, so this image computes on the CPU
# (--device auto finds no CUDA). For CUDA, put a CUDA LibTorch (a directory
# with include/ and lib/, whose lib/ holds the CUDA runtime libraries it
# needs, as PyTorch's libtorch archives do) in the build context as
# libtorch/, and build with
#   docker build --build-arg TORCH_DIR=/src/libtorch -t deepeverest:cuda .
# Its lib/ is copied into the image (/opt/deepeverest/lib); the GPU driver
# comes from the node (NVIDIA container toolkit).
#
# Layout: /opt/deepeverest/bin/deepeverestd and /opt/deepeverest/server/static,
# where the daemon looks for the explorer page by default (<exe>/../server/static).

# ---- build: the toolchain and -dev packages (scripts/install-deps.sh) ----
FROM debian:12 AS build
ARG TORCH_DIR=
WORKDIR /src
COPY scripts/install-deps.sh scripts/install-deps.sh
RUN bash scripts/install-deps.sh && rm -rf /var/lib/apt/lists/*
COPY . .
# Objects go to a directory of their own: a build/ that came with the
# context is never reused.
RUN make -j"$(nproc)" BUILD=/tmp/build TORCH_DIR="$TORCH_DIR" \
 && install -D -m 0755 /tmp/build/deepeverestd /opt/deepeverest/bin/deepeverestd \
 && mkdir -p /opt/deepeverest/server /opt/deepeverest/lib \
 && cp -R server/static /opt/deepeverest/server/static \
 && if [ -n "$TORCH_DIR" ]; then cp -a "$TORCH_DIR"/lib/*.so* /opt/deepeverest/lib/; fi

# ---- runtime: the shared libraries the binary links, nothing else ----
# (libtorch_cpu/libc10: libtorch1.13; libmicrohttpd12, libjansson4, liblmdb0,
# libpng16-16, zlib1g; OpenBLAS as LibTorch's BLAS, the one shim.cpp pins to
# one thread; libgomp1 for LibTorch's OpenMP.)
FROM debian:12
ARG TORCH_DIR=
RUN set -eux; \
    pkgs="libmicrohttpd12 libjansson4 liblmdb0 libpng16-16 zlib1g libstdc++6 libgcc-s1 libgomp1"; \
    if [ -z "$TORCH_DIR" ]; then pkgs="$pkgs libtorch1.13 libopenblas0-pthread"; fi; \
    apt-get update -q; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $pkgs; \
    rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 deepeverest \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin deepeverest \
 && install -d -o 10001 -g 10001 -m 0750 /data \
 && install -d -m 0755 /shared
COPY --from=build /opt/deepeverest /opt/deepeverest
ENV PATH=/opt/deepeverest/bin:$PATH \
    LD_LIBRARY_PATH=/opt/deepeverest/lib \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
# Every library the binary needs resolves (--routes loads no model and opens
# no store), and the explorer page is where the daemon looks. Skipped for a
# CUDA LibTorch, whose libraries may want the driver, absent at build time.
RUN test -f /opt/deepeverest/server/static/index.html \
 && if [ -z "$TORCH_DIR" ]; then deepeverestd --routes >/dev/null; fi
USER 10001:10001
VOLUME /data
EXPOSE 8080
ENTRYPOINT ["deepeverestd"]
CMD ["--data", "/data", "--listen", "0.0.0.0:8080"]
