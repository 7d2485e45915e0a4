# One image with aliasip-controller, aliasip-agent and aliasip-cni (the
# agent copies the plugin onto the node): static binaries FROM scratch, plus
# the CA bundle for the GCE API. hack/images builds the same image without
# Docker (make images); hack/images/images_test.go keeps the two in step.
#   docker build -t aliasip:0.1.0 .
#   docker build --target netcheck -t aliasip-netcheck:0.1.0 .   # test workload
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=0.1.0
ENV CGO_ENABLED=0
RUN go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/aliasip-controller ./controller/cmd/aliasip-controller && \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/aliasip-agent ./node-agent/cmd/aliasip-agent && \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/aliasip-cni ./node-agent/cmd/aliasip-cni && \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/netcheck ./test/netcheck

FROM scratch AS netcheck
COPY --from=build /out/netcheck /netcheck
ENTRYPOINT ["/netcheck"]
CMD ["serve"]

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/aliasip-controller /aliasip-controller
COPY --from=build /out/aliasip-agent /aliasip-agent
COPY --from=build /out/aliasip-cni /aliasip-cni
ENTRYPOINT ["/aliasip-controller"]
