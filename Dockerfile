# syntax=docker/dockerfile:1
# Multi-stage build: a static keytrail binary (CGO off) on distroless/static,
# which carries CA certificates and runs as the non-root user 65532.
# Run with a read-only root filesystem; the audit log goes to a mounted volume.
# No configuration or policy is baked in: mount config.yaml and the policy
# (the example policies trust `keytrail dev`'s demo issuer and must not ship).
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY broker ./broker
COPY adapters ./adapters
COPY policies ./policies
COPY cmd ./cmd
ARG VERSION=dev
RUN CGO_ENABLED=0 GOOS=linux go build -trimpath -ldflags="-s -w -X main.version=${VERSION}" -o /out/keytrail ./cmd/keytrail
# The audit log's directory, for the final stage to own: Docker makes a
# VOLUME path the image lacks a root-owned directory user 65532 cannot write.
RUN install -d -m 0750 /out/state

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/keytrail /usr/local/bin/keytrail
COPY --from=build --chown=65532:65532 /out/state /var/lib/keytrail
USER 65532:65532
EXPOSE 7700
VOLUME ["/var/lib/keytrail"]
ENTRYPOINT ["/usr/local/bin/keytrail", "server"]
CMD ["--config", "/etc/keytrail/config.yaml"]
