# One image serves as DaemonSet agent, initContainer and CLI: a static binary on distroless.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/precache ./cmd/precache

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/precache /usr/local/bin/precache
# Talking to containerd's socket needs root on a node; the DaemonSet sets runAsUser: 0.
ENTRYPOINT ["/usr/local/bin/precache"]
