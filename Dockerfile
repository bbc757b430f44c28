# Multi-stage build: a static-enough release binary on a distroless, non-root base.
# The chart (helm/anomaly-sidecar) expects exactly: port 9477, user 65532, rules at
# /etc/anomaly-sidecar/rules.yaml, data in /var/lib/anomaly-sidecar (tests/it/deploy.rs checks).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY rules.yaml ./
RUN cargo build --release --locked && mkdir -p /out/data

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/anomaly-sidecar /usr/local/bin/anomaly-sidecar
COPY rules.yaml /etc/anomaly-sidecar/rules.yaml
COPY --from=build --chown=65532:65532 /out/data /var/lib/anomaly-sidecar
USER 65532:65532
EXPOSE 9477
ENTRYPOINT ["/usr/local/bin/anomaly-sidecar"]
CMD ["run", "--rules=/etc/anomaly-sidecar/rules.yaml", "--data-dir=/var/lib/anomaly-sidecar", "--listen=0.0.0.0:9477", "--target=http://127.0.0.1:8080/metrics"]
