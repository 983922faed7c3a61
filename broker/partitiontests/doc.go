// Package partitiontests runs real mendmq processes in Linux network
// namespaces, cuts and heals the links between them, and checks what
// clients saw against a recorded history (issue 15, "Tests (real parts)",
// item 2).
//
// The pieces are reusable by later multi-process tests (the partitioned
// map's among them):
//
//   - Lab (lab.go): a bridge in the root namespace with a host address, N
//     namespaces each with a veth into the bridge, and cuts made of routes
//     inside the namespaces: Block (one direction), Cut (both), Isolate,
//     Partition, Mend, Heal. CutMode Blackhole uses blackhole routes (the
//     sender's kernel answers EINVAL, the receiver sees nothing); Silent
//     routes through a next hop whose MAC nobody owns (neither kernel
//     notices, as when a real network fails). The test process in the
//     root namespace always reaches every node, so clients observe both
//     sides. Everything is removed by t.Cleanup, and leftovers of a
//     crashed earlier run are swept at start.
//   - Cluster (node.go): the mendmq binary, built once per test binary,
//     started in each namespace with `ip netns exec`, logs captured to
//     files, the admin API read with its bearer token.
//   - Workload (workload.go): QoS 1 publishers and persistent subscribers
//     on every node (paho.golang v5 clients from the root namespace) that
//     record each publish's outcome and each delivery into a History;
//     roaming publishers, subscribers that move between nodes, and one
//     client id connected on two nodes at once (Twin).
//   - Check (history.go): the checker over a History, pure and unit-tested
//     without namespaces; checks.go reads the nodes' admin APIs for the
//     rest (detection times, session tables, replicated tables, health).
//
// The tests need root, iproute2 and network-namespace support; Available
// probes for them by creating and deleting a throwaway namespace, and the
// tests skip with a message naming what is missing. `make test-partition`
// runs the package verbosely; MENDMQ_PARTITION_SOAK=10m adds a long
// randomized run, MENDMQ_PARTITION_SEED fixes the random schedules' seed.
package partitiontests
