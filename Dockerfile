# syntax=docker/dockerfile:1
# fuseproxy: a static binary in a minimal, non-root image. The image has no config of
# its own: mount yours (start from config.example.yaml and README's reference).
#   docker build --build-arg VERSION=$(git describe --always --dirty) \
#     --build-arg REVISION=$(git rev-parse HEAD) -t fuseproxy .
#   docker run -p 8080:8080 -v $PWD/config.yaml:/etc/fuseproxy/config.yaml:ro fuseproxy

# The Go release go.mod names (e2e TestDockerfileBuilderIsGoModsGo checks they agree).
FROM golang:1.26.8-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
# Exactly the build that e2e tests as a process (see README "Container").
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" \
      -o /out/fuseproxy ./cmd/fuseproxy

FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="fuseproxy" \
      org.opencontainers.image.description="Reverse proxy with a circuit breaker per upstream, shared by replicas through Redis" \
      org.opencontainers.image.source="https://github.com/fuseproxy/fuseproxy" \
      org.opencontainers.image.url="https://github.com/fuseproxy/fuseproxy" \
      org.opencontainers.image.documentation="https://github.com/fuseproxy/fuseproxy#readme" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=build /out/fuseproxy /usr/local/bin/fuseproxy
USER 65532:65532
# No config is baked in: without one mounted here, fuseproxy exits 1 saying so.
ENV FUSE_CONFIG=/etc/fuseproxy/config.yaml \
    FUSE_ADMIN_URL=http://127.0.0.1:8084
# 8080: proxy; 8084: admin API and /metrics.
EXPOSE 8080 8084
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/fuseproxy", "health"]
ENTRYPOINT ["/usr/local/bin/fuseproxy"]
CMD ["serve"]
