package main

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Result is what one run measured. Rates are per second of wall time; latencies are
// end-to-end (publisher hands the message to its client -> subscriber callback).
type Result struct {
	Client      string   `json:"client"`
	Version     byte     `json:"mqtt_version"`
	QoS         byte     `json:"qos"`
	Pairs       int      `json:"pairs"`
	PayloadSize int      `json:"payload_bytes"`
	Inflight    int      `json:"inflight"`
	Rate        float64  `json:"rate_per_publisher"`
	PubURLs     []string `json:"pub_urls"`
	SubURLs     []string `json:"sub_urls"`
	StoppedBy   string   `json:"stopped_by"` // "duration", "count" or "error"

	Published  uint64 `json:"published"`    // messages handed to the publishers' clients
	Delivered  uint64 `json:"delivered"`    // distinct messages received
	Lost       uint64 `json:"lost"`         // published but never received
	Duplicates uint64 `json:"duplicates"`   // received more than once
	OutOfOrder uint64 `json:"out_of_order"` // received after a higher sequence number of the same publisher
	Foreign    uint64 `json:"foreign"`      // not a payload of this run and pair
	Window     int    `json:"window"`
	// WindowStalls counts waits on a full end-to-end window that timed out
	// (outstanding messages written off as lost).
	WindowStalls uint64 `json:"window_stalls"`

	PublishSeconds  float64 `json:"publish_seconds"` // start -> last publish
	DeliverSeconds  float64 `json:"deliver_seconds"` // start -> last delivery
	PublishedPerSec float64 `json:"published_per_sec"`
	DeliveredPerSec float64 `json:"delivered_per_sec"`

	LatencyP50US  float64 `json:"latency_p50_us"`
	LatencyP90US  float64 `json:"latency_p90_us"`
	LatencyP99US  float64 `json:"latency_p99_us"`
	LatencyMaxUS  float64 `json:"latency_max_us"`
	LatencyMeanUS float64 `json:"latency_mean_us"`

	// CPU over the measured phase (first publish -> end of drain). Cores = CPU
	// seconds / wall seconds; per-message figures divide by delivered messages.
	WallSeconds       float64 `json:"wall_seconds"`
	GenCPUSeconds     float64 `json:"generator_cpu_seconds"`
	GenCores          float64 `json:"generator_cores"`
	GenCPUPerMsgUS    float64 `json:"generator_cpu_per_msg_us"`
	BrokerCPUSeconds  float64 `json:"broker_cpu_seconds,omitempty"`
	BrokerCores       float64 `json:"broker_cores,omitempty"`
	BrokerCPUPerMsgUS float64 `json:"broker_cpu_per_msg_us,omitempty"`
	// OtherCores is the CPU other processes used meanwhile (all busy CPU minus the
	// generator and the given broker PIDs; without -broker-pid it includes the broker).
	// Anything well above 0 means a shared machine disturbed the figures.
	OtherCores float64 `json:"other_cores"`

	ErrorCount int      `json:"error_count"`
	Errors     []string `json:"errors,omitempty"` // the first few
}

// maxKeptErrors bounds Result.Errors.
const maxKeptErrors = 10

// pair is one publisher/subscriber pair and everything measured about it.
type pair struct {
	idx   int
	topic string
	pub   publisher
	sub   subscriber

	// Publisher side, written by the pair's publishing goroutine.
	published atomic.Uint64
	lastPubNs atomic.Int64

	// Subscriber side, written only by the subscriber's callback (callbacks of one
	// subscriber never overlap) and read after the subscriber is closed.
	hist      histogram
	seq       seqTracker
	foreign   uint64
	probed    bool
	probeSeen chan struct{}
	delivered atomic.Uint64 // distinct data messages, read live for drain progress
	lastRcvNs atomic.Int64

	// End-to-end window (RunConfig.Window): the subscriber publishes the highest
	// sequence number received + 1 and wakes a waiting publisher.
	highest atomic.Uint64
	waiting atomic.Bool
	credit  chan struct{}
	stalls  atomic.Uint64
}

// runner holds the state of one Run.
type runner struct {
	cfg   RunConfig
	log   *slog.Logger
	eng   engine
	runID uint32
	base  time.Time // monotonic origin of payload timestamps
	pairs []*pair

	errMu  sync.Mutex
	errs   []string
	errCnt int
}

// Run connects cfg.Pairs publisher/subscriber pairs, checks every pair's path,
// publishes for cfg.Duration (or cfg.Count messages each), drains, and reports.
// Setup failures return an error; failures during the measured phase are counted
// in Result.ErrorCount (the numbers of such a run should not be trusted).
func Run(ctx context.Context, cfg RunConfig, log *slog.Logger) (Result, error) {
	if err := cfg.Validate(); err != nil {
		return Result{}, fmt.Errorf("invalid run config: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	eng, err := newEngine(cfg.Client, engineOptions{Version: cfg.Version, QoS: cfg.QoS, Inflight: cfg.Inflight, FlushEvery: cfg.FlushEvery, ReceiveMax: uint16(cfg.ReceiveMaximum)})
	if err != nil {
		return Result{}, fmt.Errorf("set up client: %w", err)
	}
	var idb [4]byte
	if _, err := rand.Read(idb[:]); err != nil {
		return Result{}, fmt.Errorf("draw run id: %w", err)
	}
	r := &runner{cfg: cfg, log: log, eng: eng, runID: binary.LittleEndian.Uint32(idb[:]), base: time.Now()}
	r.pairs = make([]*pair, cfg.Pairs)
	for i := range r.pairs {
		r.pairs[i] = &pair{
			idx:       i,
			topic:     fmt.Sprintf("%s/%08x/%d", cfg.ClientIDPrefix, r.runID, i),
			probeSeen: make(chan struct{}),
			credit:    make(chan struct{}, 1),
		}
	}
	defer r.closeAll()

	if err := r.connect(ctx); err != nil {
		return Result{}, err
	}
	if err := r.probe(ctx); err != nil {
		return Result{}, err
	}
	return r.measure(ctx)
}

// nowNs is the monotonic time since the run's base, as carried in payloads.
func (r *runner) nowNs() int64 { return int64(time.Since(r.base)) }

// recordErr keeps the first few errors and counts all.
func (r *runner) recordErr(err error) {
	r.errMu.Lock()
	defer r.errMu.Unlock()
	r.errCnt++
	if len(r.errs) < maxKeptErrors {
		r.errs = append(r.errs, err.Error())
	}
}

// dialConcurrency bounds simultaneous connection attempts: a burst of hundreds of
// CONNECTs measures the broker's accept queue, not what we want to wait on.
const dialConcurrency = 16

// connect dials all subscribers (and subscribes), then all publishers.
func (r *runner) connect(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.ConnectTimeout)
	defer cancel()
	subURLs, pubURLs := r.cfg.subURLs(), r.cfg.PubURLs
	if err := r.forEachPair(ctx, func(ctx context.Context, p *pair) error {
		addr, err := brokerAddr(subURLs[p.idx%len(subURLs)])
		if err != nil {
			return err
		}
		id := fmt.Sprintf("%s-%08x-s%d", r.cfg.ClientIDPrefix, r.runID, p.idx)
		s, err := r.eng.DialSubscriber(ctx, addr, id, p.topic, func(b []byte) { r.onMessage(p, b) }, func(err error) {
			r.recordErr(fmt.Errorf("subscriber %d: %w", p.idx, err))
		})
		if err != nil {
			return fmt.Errorf("subscriber %d at %s: %w", p.idx, addr, err)
		}
		p.sub = s
		return nil
	}); err != nil {
		return err
	}
	return r.forEachPair(ctx, func(ctx context.Context, p *pair) error {
		addr, err := brokerAddr(pubURLs[p.idx%len(pubURLs)])
		if err != nil {
			return err
		}
		id := fmt.Sprintf("%s-%08x-p%d", r.cfg.ClientIDPrefix, r.runID, p.idx)
		pub, err := r.eng.DialPublisher(ctx, addr, id, p.topic)
		if err != nil {
			return fmt.Errorf("publisher %d at %s: %w", p.idx, addr, err)
		}
		p.pub = pub
		return nil
	})
}

// forEachPair runs f for every pair, dialConcurrency at a time, and returns the
// errors joined.
func (r *runner) forEachPair(ctx context.Context, f func(context.Context, *pair) error) error {
	sem := make(chan struct{}, dialConcurrency)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for _, p := range r.pairs {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := f(ctx, p); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// onMessage is every subscriber's callback: decode, check, measure.
func (r *runner) onMessage(p *pair, payload []byte) {
	now := r.nowNs()
	st, err := decodeStamp(payload)
	if err != nil || st.RunID != r.runID || st.Pair != uint32(p.idx) {
		p.foreign++
		return
	}
	if st.Kind == kindProbe {
		if !p.probed {
			p.probed = true
			close(p.probeSeen)
		}
		return
	}
	if !p.seq.observe(st.Seq) {
		return // duplicate: counted, but its latency would count the message twice
	}
	p.hist.record(time.Duration(now - st.SentNs))
	p.lastRcvNs.Store(now)
	p.delivered.Add(1)
	if st.Seq+1 > p.highest.Load() {
		p.highest.Store(st.Seq + 1) // only this callback writes highest
		if p.waiting.Load() {
			select {
			case p.credit <- struct{}{}:
			default:
			}
		}
	}
}

// windowStall is how long a publisher waits on a full end-to-end window before
// it presumes the outstanding messages lost (QoS 0 may drop) and carries on.
const windowStall = time.Second

// awaitWindow blocks while pair p has window or more messages outstanding
// end-to-end. floor is the sequence number below which messages are written off
// after a stall. It returns false when ctx ends or the deadline passes.
func (r *runner) awaitWindow(ctx context.Context, p *pair, published uint64, floor *uint64, deadline time.Time, timer **time.Timer) bool {
	window := uint64(r.cfg.Window)
	outstanding := func() uint64 {
		done := max(p.highest.Load(), *floor)
		if done >= published {
			return 0
		}
		return published - done
	}
	if outstanding() < window {
		return true
	}
	if err := p.pub.Flush(); err != nil {
		r.recordErr(fmt.Errorf("publisher %d: %w", p.idx, err))
		return false
	}
	stallAt := time.Now().Add(windowStall)
	for {
		p.waiting.Store(true)
		if outstanding() < window { // re-check: the subscriber may have just moved on
			p.waiting.Store(false)
			return true
		}
		until := stallAt
		if deadline.Before(until) {
			until = deadline
		}
		wait := time.Until(until)
		if wait <= 0 {
			p.waiting.Store(false)
			if !time.Now().Before(deadline) {
				return false
			}
			p.stalls.Add(1)
			*floor = published
			return true
		}
		if *timer == nil {
			*timer = time.NewTimer(wait)
		} else {
			(*timer).Reset(wait)
		}
		select {
		case <-p.credit:
		case <-(*timer).C:
		case <-ctx.Done():
			p.waiting.Store(false)
			return false
		}
		p.waiting.Store(false)
	}
}

// probeInterval is how often an unconfirmed pair re-sends its probe.
const probeInterval = 25 * time.Millisecond

// probe makes sure every pair's path works before measuring: in a cluster a
// subscription made on one node reaches the others asynchronously, and publishing
// into a path that is not there yet would show up as loss.
func (r *runner) probe(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.ProbeTimeout)
	defer cancel()
	buf := func() []byte { return make([]byte, r.cfg.PayloadSize) }
	return r.forEachPairAll(ctx, func(ctx context.Context, p *pair) error {
		payload := buf()
		t := time.NewTimer(0)
		defer t.Stop()
		for n := uint64(0); ; n++ {
			select {
			case <-p.probeSeen:
				return nil
			case <-ctx.Done():
				return fmt.Errorf("pair %d: subscriber at %s saw no probe from publisher at %s within %s (%d sent): %w",
					p.idx, r.cfg.subURLs()[p.idx%len(r.cfg.subURLs())], r.cfg.PubURLs[p.idx%len(r.cfg.PubURLs)], r.cfg.ProbeTimeout, n, ctx.Err())
			case <-t.C:
			}
			err := p.pub.Publish(ctx, payload, func(b []byte) {
				encodeStamp(b, stamp{Kind: kindProbe, RunID: r.runID, Pair: uint32(p.idx), Seq: n, SentNs: r.nowNs()})
			})
			if err == nil {
				err = p.pub.Flush()
			}
			if err != nil {
				return fmt.Errorf("pair %d: send probe: %w", p.idx, err)
			}
			t.Reset(probeInterval)
		}
	})
}

// forEachPairAll runs f for all pairs at once (f mostly waits).
func (r *runner) forEachPairAll(ctx context.Context, f func(context.Context, *pair) error) error {
	var wg sync.WaitGroup
	errs := make([]error, len(r.pairs))
	for i, p := range r.pairs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f(ctx, p)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// drainPoll is how often the drain phase checks delivery progress; there is no
// single event for "the last straggler arrived", so it polls under a deadline.
const drainPoll = 5 * time.Millisecond

// measure runs the publishing phase and the drain, then computes the result.
func (r *runner) measure(ctx context.Context) (Result, error) {
	cpu0, err := selfCPU()
	if err != nil {
		return Result{}, err
	}
	broker0 := procsCPU(r.cfg.BrokerPIDs, r.recordErr)
	sys0, sysErr0 := systemBusy()
	start := time.Now()
	startNs := r.nowNs()
	deadline := start.Add(r.cfg.Duration)

	// Every wait of the publishing phase (window slots, acks, rate pacing) ends at
	// the deadline, so a broker that stops acknowledging cannot stall the run.
	pubCtx, pubCancel := context.WithDeadline(ctx, deadline)
	var byCount atomic.Bool
	var wg sync.WaitGroup
	for _, p := range r.pairs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r.publishLoop(pubCtx, p, start, deadline) {
				byCount.Store(true)
			}
		}()
	}
	wg.Wait()
	pubCancel()

	drainCtx, cancel := context.WithTimeout(ctx, r.cfg.MaxDrain)
	defer cancel()
	if err := r.forEachPairAll(drainCtx, func(ctx context.Context, p *pair) error { return p.pub.Drain(ctx) }); err != nil {
		r.recordErr(fmt.Errorf("drain publishers: %w", err))
	}
	r.awaitDeliveries(drainCtx)
	end := time.Now()
	cpu1, err := selfCPU()
	if err != nil {
		return Result{}, err
	}
	broker1 := procsCPU(r.cfg.BrokerPIDs, r.recordErr)
	sys1, sysErr1 := systemBusy()

	// Errors from here on (disconnecting) do not concern the measurement.
	r.errMu.Lock()
	errCnt, errs := r.errCnt, append([]string(nil), r.errs...)
	r.errMu.Unlock()
	// Stop the subscribers before reading what their callbacks wrote.
	r.closeAll()

	res := Result{
		Client: r.eng.Name(), Version: r.cfg.Version, QoS: r.cfg.QoS, Pairs: r.cfg.Pairs,
		PayloadSize: r.cfg.PayloadSize, Inflight: r.cfg.Inflight, Window: r.cfg.Window, Rate: r.cfg.Rate,
		PubURLs: r.cfg.PubURLs, SubURLs: r.cfg.subURLs(), StoppedBy: "duration",
	}
	if byCount.Load() {
		res.StoppedBy = "count"
	}
	var hist histogram
	var lastPub, lastRcv int64
	for _, p := range r.pairs {
		pub := p.published.Load()
		res.Published += pub
		res.Delivered += p.seq.unique
		res.Lost += p.seq.lost(pub)
		res.Duplicates += p.seq.dups
		res.OutOfOrder += p.seq.reordered
		res.Foreign += p.foreign + p.seq.foreign
		res.WindowStalls += p.stalls.Load()
		hist.merge(&p.hist)
		lastPub = max(lastPub, p.lastPubNs.Load())
		lastRcv = max(lastRcv, p.lastRcvNs.Load())
	}
	if lastPub > startNs {
		res.PublishSeconds = float64(lastPub-startNs) / 1e9
		res.PublishedPerSec = float64(res.Published) / res.PublishSeconds
	}
	if lastRcv > startNs {
		res.DeliverSeconds = float64(lastRcv-startNs) / 1e9
		res.DeliveredPerSec = float64(res.Delivered) / res.DeliverSeconds
	}
	us := func(d time.Duration) float64 { return float64(d) / 1e3 }
	res.LatencyP50US = us(hist.quantile(0.50))
	res.LatencyP90US = us(hist.quantile(0.90))
	res.LatencyP99US = us(hist.quantile(0.99))
	res.LatencyMaxUS = us(time.Duration(hist.max))
	res.LatencyMeanUS = us(hist.mean())

	res.WallSeconds = end.Sub(start).Seconds()
	res.GenCPUSeconds = (cpu1 - cpu0).Seconds()
	res.GenCores = res.GenCPUSeconds / res.WallSeconds
	if len(r.cfg.BrokerPIDs) > 0 {
		res.BrokerCPUSeconds = (broker1 - broker0).Seconds()
		res.BrokerCores = res.BrokerCPUSeconds / res.WallSeconds
	}
	if sysErr0 == nil && sysErr1 == nil {
		other := (sys1 - sys0 - (cpu1 - cpu0) - (broker1 - broker0)).Seconds()
		res.OtherCores = max(other, 0) / res.WallSeconds
	}
	if res.Delivered > 0 {
		res.GenCPUPerMsgUS = res.GenCPUSeconds * 1e6 / float64(res.Delivered)
		res.BrokerCPUPerMsgUS = res.BrokerCPUSeconds * 1e6 / float64(res.Delivered)
	}
	res.ErrorCount, res.Errors = errCnt, errs
	if res.ErrorCount > 0 {
		res.StoppedBy = "error"
	}
	return res, nil
}

// publishLoop publishes one pair's messages until the deadline or the count; it
// reports whether the count ended it. ctx ends at the deadline.
func (r *runner) publishLoop(ctx context.Context, p *pair, start, deadline time.Time) (byCount bool) {
	payload := make([]byte, r.cfg.PayloadSize)
	var interval float64 // nanoseconds between messages when rate-limited
	if r.cfg.Rate > 0 {
		interval = float64(time.Second) / r.cfg.Rate
	}
	var sleeper *time.Timer
	defer func() {
		if sleeper != nil {
			sleeper.Stop()
		}
	}()
	idx := uint32(p.idx)
	var floor uint64
	var windowTimer *time.Timer
	defer func() {
		if windowTimer != nil {
			windowTimer.Stop()
		}
	}()
	for seq := uint64(0); ; seq++ {
		if r.cfg.Count > 0 && seq >= r.cfg.Count {
			return true
		}
		if r.cfg.Window > 0 && !r.awaitWindow(ctx, p, seq, &floor, deadline, &windowTimer) {
			return false
		}
		now := time.Now()
		if !now.Before(deadline) || ctx.Err() != nil {
			return false
		}
		if interval > 0 {
			due := start.Add(time.Duration(float64(seq) * interval))
			if wait := due.Sub(now); wait > 0 {
				if err := p.pub.Flush(); err != nil {
					r.recordErr(fmt.Errorf("publisher %d: %w", p.idx, err))
					return false
				}
				if due.After(deadline) {
					return false
				}
				if sleeper == nil {
					sleeper = time.NewTimer(wait)
				} else {
					sleeper.Reset(wait)
				}
				select {
				case <-sleeper.C:
				case <-ctx.Done():
					return false
				}
			}
		}
		err := p.pub.Publish(ctx, payload, func(b []byte) {
			encodeStamp(b, stamp{Kind: kindData, RunID: r.runID, Pair: idx, Seq: seq, SentNs: r.nowNs()})
		})
		if err != nil {
			if ctx.Err() != nil && errors.Is(err, context.DeadlineExceeded) {
				// The phase ended while waiting for a slot; what is outstanding
				// is drained (or counted as lost) next.
				return false
			}
			r.recordErr(fmt.Errorf("publisher %d: %w", p.idx, err))
			return false
		}
		p.published.Store(seq + 1)
		p.lastPubNs.Store(r.nowNs())
	}
}

// awaitDeliveries waits until every published message arrived, or delivery made
// no progress for cfg.Drain, or ctx ends.
func (r *runner) awaitDeliveries(ctx context.Context) {
	var published uint64
	for _, p := range r.pairs {
		published += p.published.Load()
	}
	t := time.NewTicker(drainPoll)
	defer t.Stop()
	var last uint64
	lastProgress := time.Now()
	for {
		var got uint64
		for _, p := range r.pairs {
			got += p.delivered.Load()
		}
		if got >= published {
			return
		}
		if got != last {
			last, lastProgress = got, time.Now()
		} else if time.Since(lastProgress) >= r.cfg.Drain {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// closeAll disconnects every client once (safe to call again).
func (r *runner) closeAll() {
	var wg sync.WaitGroup
	sem := make(chan struct{}, dialConcurrency*4)
	for _, p := range r.pairs {
		for _, c := range []interface{ Close() error }{p.pub, p.sub} {
			if c == nil {
				continue
			}
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				if err := c.Close(); err != nil {
					r.log.Debug("close client", "pair", p.idx, "err", err)
				}
			}()
		}
		p.pub, p.sub = nil, nil
	}
	wg.Wait()
}
