package partitiontests

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// cmdTimeout bounds every ip(8) command.
const cmdTimeout = 10 * time.Second

// Names of what a Lab creates. The pid of the test process is part of
// every name, so a later run can tell its own objects from those of a run
// that crashed (the pid is gone) and from those of a concurrent run (it
// is alive). Interface names are at most 15 bytes: "mmq" + pid (up to 7
// digits) + "b" or "v" + a per-process sequence number (up to 4 digits).
const (
	nsPrefix = "mendmq-t" // namespaces: mendmq-t<pid>-<lab>-<i>
	ifPrefix = "mmq"      // bridge mmq<pid>b<seq>, veth mmq<pid>v<seq>
)

var (
	nsName = regexp.MustCompile(`^` + nsPrefix + `(\d+)-`)
	ifName = regexp.MustCompile(`^` + ifPrefix + `(\d+)[bv]\d+$`)
	// labSeq and ifSeq number the labs and interfaces of this process.
	labSeq, ifSeq atomic.Int64
)

// Subnets a lab may use: 10.77.<k>.0/24 for k in [0, subnetCount). The
// first one that no address or route of the root namespace overlaps is
// taken, under a file lock, so concurrent runs on one machine (two
// worktrees running make test) get different ones.
const (
	subnetBase  = "10.77"
	subnetCount = 64
	hostOctet   = 254
	// sinkOctet is the next hop of silent cuts: an address no interface
	// has, with a permanent neighbour entry for a MAC no interface has.
	sinkOctet = 253
	sinkMAC   = "02:00:00:6d:6d:71"
)

// CutMode is how a Lab drops packets.
type CutMode uint8

const (
	// Blackhole cuts are blackhole routes: the receiving side sees
	// nothing, but the sending side's kernel refuses the packets (EINVAL
	// on sendto and connect), so the blocking node learns at once that
	// it cannot send, though no reset or ICMP reaches anyone.
	Blackhole CutMode = iota
	// Silent cuts route the peer's address through a next hop whose MAC
	// nobody owns: the frames leave and vanish in the bridge, so neither
	// side's kernel reports anything (UDP sends succeed, TCP
	// retransmits and connects time out), as when a real network fails.
	Silent
)

func (m CutMode) String() string {
	if m == Silent {
		return "silent next hop"
	}
	return "blackhole route"
}

// lockPath serializes subnet choice between processes.
var lockPath = filepath.Join(os.TempDir(), "mendmq-partitiontests.lock")

var (
	probeOnce sync.Once
	probeErr  error
)

// Available reports whether this machine can run a Lab: root, the ip
// command, and network namespaces, veth pairs and bridges in the kernel.
// It finds out by making a throwaway namespace with a veth pair and a
// bridge, and deleting them. The error names what is missing.
func Available() error {
	probeOnce.Do(func() { probeErr = probe() })
	return probeErr
}

func probe() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("not root (uid %d): ip netns needs CAP_SYS_ADMIN and CAP_NET_ADMIN", os.Geteuid())
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return errors.New("the ip command (iproute2) is not installed: apt-get install -y iproute2")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*cmdTimeout)
	defer cancel()
	pid := os.Getpid()
	ns := fmt.Sprintf("%s%d-probe-0", nsPrefix, pid)
	br := fmt.Sprintf("%s%db%d", ifPrefix, pid, ifSeq.Add(1))
	veth := fmt.Sprintf("%s%dv%d", ifPrefix, pid, ifSeq.Add(1))
	peer := fmt.Sprintf("%s%dv%d", ifPrefix, pid, ifSeq.Add(1))
	if _, err := ipCmd(ctx, "netns", "add", ns); err != nil {
		return fmt.Errorf("cannot create a network namespace: %w", err)
	}
	defer func() { _, _ = ipCmd(ctx, "netns", "del", ns) }()
	if _, err := ipCmd(ctx, "link", "add", veth, "type", "veth", "peer", "name", peer, "netns", ns); err != nil {
		return fmt.Errorf("veth pairs unavailable: %w", err)
	}
	defer func() { _, _ = ipCmd(ctx, "link", "del", veth) }()
	if _, err := ipCmd(ctx, "link", "add", br, "type", "bridge"); err != nil {
		return fmt.Errorf("bridges unavailable: %w", err)
	}
	defer func() { _, _ = ipCmd(ctx, "link", "del", br) }()
	if _, err := ipCmd(ctx, "-n", ns, "route", "add", "blackhole", "10.77.255.1/32"); err != nil {
		return fmt.Errorf("blackhole routes in a namespace unavailable: %w", err)
	}
	if _, err := ipCmd(ctx, "netns", "exec", ns, "true"); err != nil {
		return fmt.Errorf("ip netns exec unavailable: %w", err)
	}
	return nil
}

// ipCmd runs ip(8) with args and returns its standard output; an error
// carries the command and its standard error.
func ipCmd(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// Lab is a bridge in the root namespace and N network namespaces, each
// with a veth into the bridge: namespace i (1-based) has address
// <subnet>.i/24 on its eth0, the root namespace <subnet>.254/24 on the
// bridge. Cuts are routes inside the namespaces (CutMode), so packets are
// dropped without a reset and the root namespace keeps reaching every
// namespace. Methods are safe for concurrent use.
type Lab struct {
	t      testing.TB
	subnet string // "10.77.3"
	bridge string
	ns     []string // ns[i-1] is namespace i
	veths  []string // root-namespace ends of the veth pairs

	mu      sync.Mutex
	mode    CutMode
	blocked map[[2]int]bool // from, to: a cut route in from's namespace
}

// NewLab builds the topology for n namespaces (1 <= n <= 252) and
// registers its removal with t.Cleanup. It sweeps what crashed earlier
// runs left first. Any failure fails the test (after removing what was
// made).
func NewLab(t testing.TB, n int) *Lab {
	t.Helper()
	if n < 1 || n >= sinkOctet {
		t.Fatalf("lab of %d namespaces: want 1..%d", n, sinkOctet-1)
	}
	if err := Available(); err != nil {
		t.Skipf("network namespaces unavailable, partition tests skipped: %v", err)
	}
	ctx := context.Background()
	if swept := Sweep(ctx); len(swept) > 0 {
		t.Logf("swept leftovers of crashed runs: %s", strings.Join(swept, ", "))
	}
	pid := os.Getpid()
	lab := &Lab{t: t, blocked: map[[2]int]bool{}}
	k := labSeq.Add(1)
	for i := 1; i <= n; i++ {
		lab.ns = append(lab.ns, fmt.Sprintf("%s%d-%d-%d", nsPrefix, pid, k, i))
	}
	lab.bridge = fmt.Sprintf("%s%db%d", ifPrefix, pid, ifSeq.Add(1))
	t.Cleanup(lab.remove)
	if err := lab.build(ctx); err != nil {
		t.Fatalf("build the lab: %v", err)
	}
	return lab
}

func (l *Lab) build(ctx context.Context) error {
	if err := l.makeBridge(ctx); err != nil {
		return err
	}
	for i, ns := range l.ns {
		if _, err := ipCmd(ctx, "netns", "add", ns); err != nil {
			return err
		}
		veth := fmt.Sprintf("%s%dv%d", ifPrefix, os.Getpid(), ifSeq.Add(1))
		peer := fmt.Sprintf("%s%dv%d", ifPrefix, os.Getpid(), ifSeq.Add(1))
		l.veths = append(l.veths, veth)
		steps := [][]string{
			{"link", "add", veth, "type", "veth", "peer", "name", peer, "netns", ns},
			{"link", "set", veth, "master", l.bridge},
			{"link", "set", veth, "up"},
			{"-n", ns, "link", "set", peer, "name", "eth0"},
			{"-n", ns, "addr", "add", l.Addr(i+1) + "/24", "dev", "eth0"},
			{"-n", ns, "link", "set", "eth0", "up"},
			{"-n", ns, "link", "set", "lo", "up"},
			{"-n", ns, "neigh", "add", l.sinkAddr(), "lladdr", sinkMAC, "dev", "eth0", "nud", "permanent"},
		}
		for _, s := range steps {
			if _, err := ipCmd(ctx, s...); err != nil {
				return err
			}
		}
	}
	return nil
}

// makeBridge creates the bridge and gives it the host address of the
// first free subnet, holding the lock file so that a concurrent run does
// not take the same one.
func (l *Lab) makeBridge(ctx context.Context) error {
	f, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("open lock %s: %w", lockPath, err)
	}
	defer f.Close()
	if err := flockTimeout(f, cmdTimeout); err != nil {
		return fmt.Errorf("lock %s: %w", lockPath, err)
	}
	defer func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN) }()
	used, err := rootNetworks(ctx)
	if err != nil {
		return err
	}
	for k := range subnetCount {
		subnet := fmt.Sprintf("%s.%d", subnetBase, k)
		_, cand, _ := net.ParseCIDR(subnet + ".0/24")
		if slices.ContainsFunc(used, func(u *net.IPNet) bool { return u.Contains(cand.IP) || cand.Contains(u.IP) }) {
			continue
		}
		l.subnet = subnet
		break
	}
	if l.subnet == "" {
		return fmt.Errorf("no free subnet among %s.0.0/24 .. %s.%d.0/24 (addresses and routes of the root namespace overlap all)", subnetBase, subnetBase, subnetCount-1)
	}
	for _, s := range [][]string{
		{"link", "add", l.bridge, "type", "bridge"},
		{"addr", "add", l.HostAddr() + "/24", "dev", l.bridge},
		{"link", "set", l.bridge, "up"},
	} {
		if _, err := ipCmd(ctx, s...); err != nil {
			return err
		}
	}
	return nil
}

// flockTimeout takes an exclusive lock on f, giving up after d.
func flockTimeout(f *os.File, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil || !errors.Is(err, syscall.EWOULDBLOCK) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("still held by another process after %v", d)
		}
		time.Sleep(20 * time.Millisecond) // another process holds it for a few ip commands
	}
}

// rootNetworks lists the IPv4 networks of the root namespace's addresses
// and non-default routes.
func rootNetworks(ctx context.Context) ([]*net.IPNet, error) {
	var out []*net.IPNet
	addrs, err := ipCmd(ctx, "-4", "-o", "addr", "show")
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(addrs, "\n") {
		f := strings.Fields(line)
		if i := slices.Index(f, "inet"); i >= 0 && i+1 < len(f) {
			if _, n, err := net.ParseCIDR(f[i+1]); err == nil {
				out = append(out, n)
			}
		}
	}
	routes, err := ipCmd(ctx, "-4", "route", "show", "table", "all")
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(routes, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		dst := f[0]
		if slices.Contains([]string{"broadcast", "local", "unicast", "blackhole", "unreachable", "prohibit", "multicast"}, dst) && len(f) > 1 {
			dst = f[1]
		}
		if dst == "default" {
			continue
		}
		if !strings.Contains(dst, "/") {
			dst += "/32"
		}
		if _, n, err := net.ParseCIDR(dst); err == nil {
			out = append(out, n)
		}
	}
	return out, nil
}

// remove deletes the namespaces (killing what still runs in them), the
// veth pairs (the kernel would remove them with their namespaces, but
// asynchronously) and the bridge. Errors are reported, and every object
// is tried.
func (l *Lab) remove() {
	ctx := context.Background()
	var errs []error
	for _, ns := range l.ns {
		if err := deleteNamespace(ctx, ns); err != nil {
			errs = append(errs, err)
		}
	}
	for _, link := range append(slices.Clone(l.veths), l.bridge) {
		if _, err := ipCmd(ctx, "link", "del", link); err != nil && !strings.Contains(err.Error(), "Cannot find device") {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		l.t.Errorf("remove the lab: %v", err)
	}
}

// deleteNamespace kills the processes left in ns and deletes it; a
// namespace that does not exist is not an error.
func deleteNamespace(ctx context.Context, ns string) error {
	pids, err := ipCmd(ctx, "netns", "pids", ns)
	if err != nil {
		if strings.Contains(err.Error(), "No such file") || strings.Contains(err.Error(), "Invalid") {
			return nil
		}
	}
	for _, p := range strings.Fields(pids) {
		if pid, err := strconv.Atoi(p); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if _, err := ipCmd(ctx, "netns", "del", ns); err != nil && !strings.Contains(err.Error(), "No such file") {
		return err
	}
	return nil
}

// Sweep removes the namespaces, bridges and veths that a test process
// which no longer runs left behind (it crashed or was killed before its
// cleanup), and returns their names. Objects of live test processes (a
// concurrent run) are left alone.
func Sweep(ctx context.Context) []string {
	var swept []string
	if out, err := ipCmd(ctx, "netns", "list"); err == nil {
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			if len(f) == 0 {
				continue
			}
			if m := nsName.FindStringSubmatch(f[0]); m != nil && stale(m[1]) {
				if deleteNamespace(ctx, f[0]) == nil {
					swept = append(swept, f[0])
				}
			}
		}
	}
	if out, err := ipCmd(ctx, "-o", "link", "show"); err == nil {
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			if m := ifName.FindStringSubmatch(name); m != nil && stale(m[1]) {
				if _, err := ipCmd(ctx, "link", "del", name); err == nil {
					swept = append(swept, name)
				}
			}
		}
	}
	return swept
}

// stale reports whether pid names no running test binary (Go test
// binaries are called *.test).
func stale(pid string) bool {
	if pid == strconv.Itoa(os.Getpid()) {
		return false
	}
	b, err := os.ReadFile(filepath.Join("/proc", pid, "cmdline"))
	if err != nil {
		return true
	}
	argv0, _, _ := bytes.Cut(b, []byte{0})
	return !strings.HasSuffix(string(argv0), ".test")
}

// N is the number of namespaces.
func (l *Lab) N() int { return len(l.ns) }

// Namespace returns the name of namespace i (1-based).
func (l *Lab) Namespace(i int) string { return l.ns[i-1] }

// Addr returns namespace i's address.
func (l *Lab) Addr(i int) string { return fmt.Sprintf("%s.%d", l.subnet, i) }

// HostAddr returns the root namespace's address on the bridge.
func (l *Lab) HostAddr() string { return fmt.Sprintf("%s.%d", l.subnet, hostOctet) }

func (l *Lab) sinkAddr() string { return fmt.Sprintf("%s.%d", l.subnet, sinkOctet) }

// SetCutMode chooses how the next cuts drop packets (default Blackhole);
// it fails while cuts are in place.
func (l *Lab) SetCutMode(m CutMode) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.blocked) > 0 {
		return errors.New("change the cut mode with cuts in place: heal first")
	}
	l.mode = m
	return nil
}

// CutMode returns how cuts drop packets.
func (l *Lab) CutMode() CutMode {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.mode
}

// route is the ip route arguments of a cut of to's address.
func (l *Lab) route(to int) []string {
	if l.mode == Silent {
		return []string{l.Addr(to) + "/32", "via", l.sinkAddr(), "dev", "eth0"}
	}
	return []string{"blackhole", l.Addr(to) + "/32"}
}

// Block makes namespace from drop what it sends to namespace to: a route
// for to's address inside from (see CutMode). Packets from to still
// arrive, but nothing from answers them (a one-way, asymmetric cut).
// Blocking a blocked direction does nothing.
func (l *Lab) Block(from, to int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.block(from, to)
}

func (l *Lab) block(from, to int) error {
	if from == to || l.blocked[[2]int{from, to}] {
		return nil
	}
	if _, err := ipCmd(context.Background(), append([]string{"-n", l.Namespace(from), "route", "add"}, l.route(to)...)...); err != nil {
		return err
	}
	l.blocked[[2]int{from, to}] = true
	return nil
}

// Unblock removes the route Block added.
func (l *Lab) Unblock(from, to int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.unblock(from, to)
}

func (l *Lab) unblock(from, to int) error {
	if !l.blocked[[2]int{from, to}] {
		return nil
	}
	if _, err := ipCmd(context.Background(), append([]string{"-n", l.Namespace(from), "route", "del"}, l.route(to)...)...); err != nil {
		return err
	}
	delete(l.blocked, [2]int{from, to})
	return nil
}

// Cut blocks both directions between a and b (a symmetric cut of one
// link).
func (l *Lab) Cut(a, b int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return errors.Join(l.block(a, b), l.block(b, a))
}

// Mend unblocks both directions between a and b.
func (l *Lab) Mend(a, b int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return errors.Join(l.unblock(a, b), l.unblock(b, a))
}

// Isolate cuts namespace i from every other namespace (not from the root
// namespace).
func (l *Lab) Isolate(i int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var errs []error
	for j := 1; j <= l.N(); j++ {
		if j != i {
			errs = append(errs, l.block(i, j), l.block(j, i))
		}
	}
	return errors.Join(errs...)
}

// Partition cuts every link between namespaces of different groups;
// namespaces in no group form a group of their own.
func (l *Lab) Partition(groups ...[]int) error {
	side := map[int]int{}
	for g, ns := range groups {
		for _, i := range ns {
			side[i] = g + 1
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var errs []error
	for a := 1; a <= l.N(); a++ {
		for b := 1; b <= l.N(); b++ {
			if a != b && side[a] != side[b] {
				errs = append(errs, l.block(a, b))
			}
		}
	}
	return errors.Join(errs...)
}

// Heal removes every cut.
func (l *Lab) Heal() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var errs []error
	for k := range l.blocked {
		errs = append(errs, l.unblock(k[0], k[1]))
	}
	return errors.Join(errs...)
}

// Blocked lists the blocked directions (from, to), sorted.
func (l *Lab) Blocked() [][2]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([][2]int, 0, len(l.blocked))
	for k := range l.blocked {
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, b [2]int) int {
		if a[0] != b[0] {
			return a[0] - b[0]
		}
		return a[1] - b[1]
	})
	return out
}

// CutOff reports, for each namespace, the namespaces it cannot exchange
// packets with in at least one direction: what its node should find
// unreachable.
func (l *Lab) CutOff() map[int][]int {
	out := map[int][]int{}
	for _, b := range l.Blocked() {
		for _, p := range [][2]int{{b[0], b[1]}, {b[1], b[0]}} {
			if !slices.Contains(out[p[0]], p[1]) {
				out[p[0]] = append(out[p[0]], p[1])
			}
		}
	}
	for k := range out {
		slices.Sort(out[k])
	}
	return out
}
