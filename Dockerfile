# deepeverest on Debian 12: builds the daemon and serves it on 0.0.0.0:8080
# with the data dir on a volume.
#   docker build -t deepeverest .
#   docker run -p 8080:8080 -v de-data:/data deepeverest
FROM debian:12
WORKDIR /src
COPY scripts/install-deps.sh scripts/install-deps.sh
RUN bash scripts/install-deps.sh && rm -rf /var/lib/apt/lists/*
COPY . .
RUN make -j"$(nproc)" && install -m 0755 build/deepeverestd /usr/local/bin/deepeverestd
VOLUME /data
EXPOSE 8080
ENTRYPOINT ["deepeverestd", "--data", "/data", "--listen", "0.0.0.0:8080", "--static", "/src/server/static"]
