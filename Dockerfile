# syntax=docker/dockerfile:1
# fuseproxy: a static binary in a minimal, non-root image.
#   docker build --build-arg VERSION=$(git describe --always --dirty) -t fuseproxy .
#   docker run -p 8080:8080 -v $PWD/config.yaml:/etc/fuseproxy/config.yaml:ro fuseproxy

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
# Exactly the build that e2e tests as a process (see README "Container").
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" \
      -o /out/fuseproxy ./cmd/fuseproxy

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/fuseproxy /usr/local/bin/fuseproxy
COPY config.example.yaml /etc/fuseproxy/config.yaml
USER 65532:65532
ENV FUSE_CONFIG=/etc/fuseproxy/config.yaml \
    FUSE_ADMIN_URL=http://127.0.0.1:9090
# 8080: proxy; 9090: admin API and /metrics.
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/fuseproxy", "health"]
ENTRYPOINT ["/usr/local/bin/fuseproxy"]
CMD ["serve"]
