# syntax=docker/dockerfile:1
# Build: the same commands .ci/run uses outside Docker.
FROM rust:1.95-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake g++ make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY examples ./examples
COPY config ./config
RUN cargo build --locked --release --bin sidestream \
 && ./target/release/sidestream --check-config --config config/example.toml

# Runtime: slim, non-root, just the binary and the configs.
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home sidestream
COPY --from=build /src/target/release/sidestream /usr/local/bin/sidestream
COPY config /etc/sidestream
USER 10001
ENV SIDESTREAM_CONFIG=/etc/sidestream/sidestream.toml
# Clients (topics and pass-through).
EXPOSE 8080
# Mount your config at /etc/sidestream/sidestream.toml (e.g. from a ConfigMap).
ENTRYPOINT ["/usr/local/bin/sidestream"]
