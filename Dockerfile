# One image with aliasip-controller, aliasip-agent and aliasip-cni (the
# agent copies the plugin onto the node). Static binaries on distroless.
#   docker build -t aliasip:0.1.0 .
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=0.1.0
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/aliasip-controller ./controller/cmd/aliasip-controller && \
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/aliasip-agent ./node-agent/cmd/aliasip-agent && \
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/aliasip-cni ./node-agent/cmd/aliasip-cni

FROM gcr.io/distroless/static-debian12
COPY --from=build /out/ /
ENTRYPOINT ["/aliasip-controller"]
