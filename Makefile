# mendmq — the two commands first: `make run` and `make test`.
GO      ?= go
BIN     := bin/mendmq
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo 0.1.0-dev)
LDFLAGS := -s -w -X github.com/mendmq/mendmq/broker.Version=$(VERSION)
# The whole suite must stay under 15 minutes on 2 cores (CI allows 90).
TEST_TIMEOUT ?= 14m

.PHONY: all build run test test-short test-partition vet fmt-check bench bench-cluster bench-netsplit bench-saturation bench-go bench-maps cluster policies policies-check clean

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./broker/cmd/mendmq

## run: one node on the embedded default config (MQTT :1883, admin 127.0.0.1:8080)
run: build
	./$(BIN) serve

## test: vet, formatting, and the whole suite with the race detector (the sdk is its own module: `./...` stops at sdk/go.mod, so it runs separately)
test: vet fmt-check
	$(GO) test -race -timeout $(TEST_TIMEOUT) ./...
	cd sdk && $(GO) test -race ./...

## test-partition: only the network-namespace partition tests, verbosely (root and iproute2, else they skip saying what is missing): real nodes in namespaces cut and healed, checked against the recorded history. MENDMQ_PARTITION_SEED=N replays the random schedules, MENDMQ_PARTITION_SOAK=10m adds a long random run
PARTITION_TIMEOUT ?= 30m
test-partition:
	$(GO) test -race -count=1 -v -timeout $(PARTITION_TIMEOUT) ./broker/partitiontests/

test-short:
	$(GO) test -short ./...
	cd sdk && $(GO) test -short ./...

vet:
	$(GO) vet ./...
	cd sdk && $(GO) vet ./... && GOOS=wasip1 GOARCH=wasm $(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

## bench: single-node QoS0/QoS1 throughput and latency, mendmq vs mosquitto vs upstream mochi (alternated rounds, medians, ratios), then the cluster figures (bench-cluster) and the netsplit figures (bench-netsplit)
BENCH_FLAGS ?=
bench: build
	$(GO) build -o bin/mqttbench ./broker/cmd/mqttbench
	./bin/mqttbench suite -mendmq $(BIN) $(BENCH_FLAGS)
	$(MAKE) --no-print-directory bench-cluster
	$(MAKE) --no-print-directory bench-netsplit

## bench-cluster: same-node vs cross-node throughput and latency on the example 3-node cluster, and replication convergence of 100k subscriptions after a join
bench-cluster: build
	$(GO) build -o bin/mqttbench ./broker/cmd/mqttbench
	./bin/mqttbench suite -cluster -mendmq $(BIN) -brokers mendmq $(BENCH_FLAGS)
	$(GO) test -run XXX -bench JoinConvergence -benchtime 1x -count 3 ./broker/clustertests/

## bench-netsplit: netsplit figures in process with production timings (BENCHMARKS.md, Netsplit): detection and window of uncertainty on closing and silent cuts, false detections with both CPUs saturated for 20 s, heal convergence of 100k subscriptions + 10k conflicting retained messages, a 50-node cluster split 49|1 and 25|25 (NETSPLIT_BIG_NODES=N changes its size, NETSPLIT_BIG_SILENT=1 makes its cuts silent, NETSPLIT_SATURATION_PERIOD=2m saturates longer; bench-saturation is the same question asked of real processes under mqttbench load). About 3 min plus 5-15 min for the big cluster
bench-netsplit:
	$(GO) test -run XXX -bench 'Netsplit(Detection|Saturation|HealConvergence)' -benchtime 1x -v -timeout 20m ./cluster/
	$(GO) test -run XXX -bench NetsplitBigCluster -benchtime 1x -v -timeout 45m ./cluster/

## bench-saturation: false netsplit detections under CPU starvation, on real processes: a 3-node cluster of bin/mendmq (examples/cluster/node{1,2,3}.yaml moved onto free ports) loaded by mqttbench with cross-node QoS 0 and QoS 1 pairs at once until both CPUs are saturated, every node's /api/v1/cluster sampled every 150 ms; prints netsplits entered, members seen unreachable / not alive / suspect, the node logs' detection lines, CPU use and delivered msgs/s. SATURATION_FLAGS='-period 5m -pairs 50' changes the load (mqttbench saturate -h). About 2.5 min
SATURATION_FLAGS ?=
bench-saturation: build
	$(GO) build -o bin/mqttbench ./broker/cmd/mqttbench
	./bin/mqttbench saturate -mendmq $(BIN) $(SATURATION_FLAGS)

## bench-maps: partitioned maps: put/get latency and throughput 1 vs 3 nodes, heap per entry, migration of 1M entries on a join, merge of 1M conflicting entries after a heal (C latestupdate), the metrics scrape
bench-maps:
	$(GO) test -run XXX -bench 'MapOps|MapHeapPerEntry|MapMigration|MapMerge' -benchtime 1x -count 3 -timeout 60m ./cluster/
	$(GO) test -run XXX -bench StoreStats -count 5 ./cluster/pmap/

## bench-go: Go micro-benchmarks (merge policies, data plane, routing, replication)
bench-go:
	$(GO) test -run XXX -bench . -benchtime 1s ./plugins/ ./cluster/dataplane/ ./cluster/routes/ ./cluster/replica/
	$(GO) test -run XXX -bench JoinConvergence -benchtime 1x -count 3 ./broker/clustertests/

## policies: rebuild the merge-policy modules (Go built-ins, C examples, hostile test modules, jsonmerge)
policies:
	sh plugins/build-policies.sh

## policies-check: check that the checked-in built-ins reproduce from source
policies-check:
	sh plugins/build-policies.sh check

## cluster: a local 3-node cluster (examples/cluster/node{1,2,3}.yaml; CLUSTER_DIR=D uses D/node{1,2,3}.yaml, a copy you may edit while it runs; CLUSTER_FLAGS='--set log.level=debug' adds serve flags); Ctrl-C stops all three
CLUSTER_DIR   ?= examples/cluster
CLUSTER_FLAGS ?=
cluster: build
	@trap 'kill 0' INT TERM EXIT; \
	for i in 1 2 3; do ./$(BIN) serve --config $(CLUSTER_DIR)/node$$i.yaml $(CLUSTER_FLAGS) & done; \
	echo "mendmq cluster: MQTT 127.0.0.1:1883/1884/1885, admin 127.0.0.1:8081/8082/8083 (Ctrl-C to stop)"; \
	wait

clean:
	rm -rf bin
