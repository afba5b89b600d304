# syntax=docker/dockerfile:1
# Multi-stage build: a static keytrail binary (CGO off) on distroless/static,
# which carries CA certificates and runs as the non-root user 65532.
# Run with a read-only root filesystem; the audit log goes to a mounted volume.
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

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/keytrail /usr/local/bin/keytrail
COPY policies/examples /etc/keytrail/policies
USER 65532:65532
EXPOSE 7700
VOLUME ["/var/lib/keytrail"]
ENTRYPOINT ["/usr/local/bin/keytrail", "server"]
CMD ["--config", "/etc/keytrail/config.yaml"]
