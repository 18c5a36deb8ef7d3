# paperpost in a container. Build: docker build -t paperpost .
# Run:   docker run -d --name paperpost -v paperpost-data:/data -p 8080:8080 \
#          -e PAPERPOST__MAIL__TRANSPORT=smtp -e PAPERPOST__MAIL__SMTP__HOST=mail.example.org \
#          -e PAPERPOST__MAIL__SMTP__PASSWORD=... \
#          -e PAPERPOST__PAPERS__SOURCE_URL='https://huggingface.co/api/daily_papers?date={date}' paperpost
# The database, the link secret and the file outbox live in /data. Settings come
# from the environment (PAPERPOST__SECTION__KEY), or mount a file and set
# PAPERPOST_CONFIG=/config/paperpost.toml. `docker kill -s HUP` reloads.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin paperpost && strip target/release/paperpost

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
# `paperpost healthcheck` GETs /healthz on PAPERPOST__HTTP__BIND (the slim
# image has no curl): unhealthy when the database, the scheduler or the lock is.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["paperpost", "healthcheck"]
# SIGTERM (docker stop) is a graceful stop; give it time to finish the
# messages in flight: docker stop -t 60.
STOPSIGNAL SIGTERM
ENTRYPOINT ["paperpost"]
CMD ["run"]
