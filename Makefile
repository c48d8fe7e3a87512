# Keyhole — the two commands that matter: `make demo` and `make test`.
GO      ?= go
BIN     ?= bin/keyhole
PKGS    ?= ./...
# Packages with concurrency, run under the race detector in `make test`.
RACE_PKGS ?= ./...
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: all build test test-race test-e2e demo bench bench-lab lint fuzz clean

all: build

build:
	$(GO) build -trimpath -o $(BIN) ./cmd/keyhole

# The full suite: unit, in-process integration, and (as root with
# KEYHOLE_E2E=1) the network-namespace lab; then the race detector on the
# concurrent packages.
test:
	$(GO) test -count=1 -timeout 15m $(PKGS)
	$(GO) test -count=1 -race -timeout 15m $(RACE_PKGS)

demo: build
	$(BIN) demo

# Performance figures as ratios against a reference measured in the same run.
# KEYHOLE_BENCH_POSTGRES=postgres://… (an empty database) adds PostgreSQL to
# the grant rate; the cluster figures start a throwaway PostgreSQL (or use
# KEYHOLE_TEST_POSTGRES_URL).
bench: build
	$(GO) test -run '^$$' -bench . -benchtime 3x -timeout 20m ./cmd/keyhole/internal/onebox/
	$(BIN) bench
	$(BIN) bench control $(if $(KEYHOLE_BENCH_POSTGRES),--store $(KEYHOLE_BENCH_POSTGRES))
	KEYHOLE_BENCH=1 $(GO) test -count=1 -run TestClusterFigures -v -timeout 10m ./controller/

# Figures in the network-namespace lab (root): NAT traversal (first byte and
# throughput, direct vs relayed vs the lab's plain routed path) and TUN mode
# (throughput through the TUN-mode and the userspace gateway vs stock
# wireguard-go in the same lab, resolver latency).
bench-lab:
	KEYHOLE_E2E=1 KEYHOLE_LAB_BENCH=1 $(GO) test -count=1 -v -run '^TestLab(TUN)?Figures$$' -timeout 20m ./cmd/keyhole/

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); exit 1)
	$(GO) vet $(PKGS)
	$(GO) run $(STATICCHECK) $(PKGS)

# A short run of every fuzz target (each keeps its seed corpus in the test).
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzDecodeRequest -fuzztime 30s ./controller/
	$(GO) test -run '^$$' -fuzz FuzzGrantMessage -fuzztime 30s ./gateway/
	$(GO) test -run '^$$' -fuzz FuzzPacketFilter -fuzztime 30s ./gateway/
	$(GO) test -run '^$$' -fuzz FuzzClassify -fuzztime 30s ./internal/nat/
	$(GO) test -run '^$$' -fuzz FuzzParseUsername -fuzztime 30s ./internal/relay/
	$(GO) test -run '^$$' -fuzz FuzzHandle -fuzztime 30s ./client/splitdns/
	$(GO) test -run '^$$' -fuzz FuzzHostName -fuzztime 30s ./controller/
	$(GO) test -run '^$$' -fuzz FuzzPostureReport -fuzztime 30s ./controller/
	$(GO) test -run '^$$' -fuzz FuzzEchoRequest4 -fuzztime 30s ./internal/wg/
	$(GO) test -run '^$$' -fuzz FuzzInitiation -fuzztime 30s ./internal/wg/
	$(GO) test -run '^$$' -fuzz FuzzDecodeEvent -fuzztime 30s ./controller/cluster/
	$(GO) test -run '^$$' -fuzz FuzzDecodeState -fuzztime 30s ./controller/cluster/
	$(GO) test -run '^$$' -fuzz FuzzMountinfo -fuzztime 30s ./client/posture/
	$(GO) test -run '^$$' -fuzz FuzzOSRelease -fuzztime 30s ./client/posture/
	$(GO) test -run '^$$' -fuzz FuzzDecodeVerdict -fuzztime 30s ./client/posture/

clean:
	rm -rf bin
