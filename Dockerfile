# paperpost in a container. Build: docker build -t paperpost .
# Run:   docker run -d --name paperpost -v paperpost-data:/data \
#          -e PAPERPOST__MAIL__TRANSPORT=smtp -e PAPERPOST__MAIL__SMTP__HOST=mail.example.org \
#          -e PAPERPOST__MAIL__SMTP__PASSWORD=... paperpost
# The database, the link secret and the file outbox live in /data.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked && strip target/release/paperpost

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates tzdata \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /data paperpost \
    && mkdir -p /data /config && chown paperpost /data
COPY --from=build /src/target/release/paperpost /usr/local/bin/paperpost
COPY config/subscribers.example.toml /config/subscribers.example.toml
USER paperpost
WORKDIR /data
ENV PAPERPOST__DATABASE__PATH=/data/paperpost.db \
    PAPERPOST__SECURITY__SECRET_FILE=/data/secret.key \
    PAPERPOST__MAIL__OUTBOX_DIR=/data/outbox \
    PAPERPOST__SUBSCRIBERS__FILE=/config/subscribers.toml \
    PAPERPOST__HTTP__BIND=0.0.0.0:8080
VOLUME ["/data"]
# The web endpoint (links in mail, subscribe form, /healthz, /metrics).
EXPOSE 8080
# SIGTERM (docker stop) is a graceful stop.
STOPSIGNAL SIGTERM
ENTRYPOINT ["paperpost"]
CMD ["run"]
