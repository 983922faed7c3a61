// Package filewatch calls back when the content of watched files changes.
// It is built for configuration and module files edited by people, editors,
// config-management tools and Kubernetes:
//
//   - It watches parent directories (fsnotify), not the files: an editor's
//     rename-and-replace or a delete-and-recreate replaces the inode a
//     file watch would be stuck on.
//   - It re-resolves symlinks on every check and also watches the target's
//     directory, so a Kubernetes ConfigMap swap (file -> ..data/file,
//     ..data -> ..2024_01_01_xx, swapped by renaming a new ..data symlink)
//     is seen.
//   - Events are debounced, and a periodic content-hash poll catches what
//     fsnotify misses (network file systems, overflowed queues).
//   - It reports a file only when its content hash changed: touches,
//     chmods and rewrites of identical bytes are dropped.
//   - A file that reads as empty after having content is reported only if
//     it is still empty a grace period later (max(2×Debounce, 500ms)), so
//     a truncate-then-write seen between the two steps is not reported as
//     an empty file.
//
// koanf's file provider Watch was not used because it returned empty reads
// on truncate-then-write and stopped after a delete/recreate (DESIGN §8).
package filewatch

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Config tunes a Watcher. The zero value is usable.
type Config struct {
	// Debounce is how long the watcher waits after the last file-system
	// event before it re-reads the files. Default 100ms: long enough to
	// coalesce an editor's write-rename-chmod burst, short enough to feel
	// immediate.
	Debounce time.Duration
	// PollInterval re-reads every file this often even without events.
	// Default 2s; negative disables polling. Each poll hashes every
	// watched file, so keep it large for large files.
	PollInterval time.Duration
	// Logger receives watch errors. Default: slog.Default().
	Logger *slog.Logger

	// disableNotify turns fsnotify off so tests can exercise the poll path.
	disableNotify bool
}

// DefaultConfig returns the defaults described on Config.
func DefaultConfig() Config {
	return Config{Debounce: 100 * time.Millisecond, PollInterval: 2 * time.Second}
}

// Validate reports a setting that cannot work.
func (c Config) Validate() error {
	if c.Debounce < 0 {
		return fmt.Errorf("filewatch: Debounce %v is negative; use 0 for the default (100ms) or a positive duration", c.Debounce)
	}
	if c.PollInterval > 0 && c.PollInterval < 10*time.Millisecond {
		return fmt.Errorf("filewatch: PollInterval %v is below 10ms; use a larger interval or a negative one to disable polling", c.PollInterval)
	}
	return nil
}

// Watcher watches a set of files. Its callback runs on one goroutine, never
// concurrently with itself.
type Watcher struct {
	cfg      Config
	onChange func(changed []string)
	fsw      *fsnotify.Watcher // nil when notifications are off

	mu     sync.Mutex
	files  map[string]*file // by absolute path
	dirs   map[string]int   // watched directory -> number of files needing it
	closed bool

	stop chan struct{}
	done chan struct{}
}

// file is the watcher's memory of one path.
type file struct {
	path  string
	sum   [32]byte
	known bool // sum holds the content last reported (or seen at start)
	empty bool // the reported content is empty
	// emptySince is when a check first read the file empty after content
	// (zero when not in that state).
	emptySince time.Time
	watching   []string // directories watched for this file
}

// New starts watching paths and calls onChange with the paths (as given,
// made absolute) whose content changed since they were last seen. The
// content at New time is the baseline and is not reported. Missing files
// are allowed: their appearance is a change.
func New(cfg Config, paths []string, onChange func(changed []string)) (*Watcher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if onChange == nil {
		return nil, errors.New("filewatch: onChange is nil")
	}
	if cfg.Debounce == 0 {
		cfg.Debounce = DefaultConfig().Debounce
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = DefaultConfig().PollInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	w := &Watcher{
		cfg:      cfg,
		onChange: onChange,
		files:    map[string]*file{},
		dirs:     map[string]int{},
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	if !cfg.disableNotify {
		fsw, err := fsnotify.NewWatcher()
		if err != nil {
			return nil, fmt.Errorf("filewatch: start fsnotify: %w", err)
		}
		w.fsw = fsw
	}
	if err := w.SetPaths(paths); err != nil {
		if w.fsw != nil {
			_ = w.fsw.Close()
		}
		return nil, err
	}
	go w.loop()
	return w, nil
}

// SetPaths replaces the watched set. New paths get their current content as
// baseline; paths kept keep their state. It does not wait for a running
// callback.
func (w *Watcher) SetPaths(paths []string) error {
	abs := make(map[string]bool, len(paths))
	for _, p := range paths {
		a, err := filepath.Abs(p)
		if err != nil {
			return fmt.Errorf("filewatch: resolve %s: %w", p, err)
		}
		abs[a] = true
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return errors.New("filewatch: watcher closed")
	}
	for p, f := range w.files {
		if !abs[p] {
			w.unwatch(f)
			delete(w.files, p)
		}
	}
	for p := range abs {
		if _, ok := w.files[p]; ok {
			continue
		}
		f := &file{path: p}
		if sum, n, err := hashFile(p); err == nil {
			f.sum, f.known, f.empty = sum, true, n == 0
		}
		w.files[p] = f
		w.rewatch(f)
	}
	return nil
}

// Paths returns the watched absolute paths, sorted.
func (w *Watcher) Paths() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]string, 0, len(w.files))
	for p := range w.files {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// Close stops the watcher and waits for a running callback to return.
func (w *Watcher) Close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	w.closed = true
	w.mu.Unlock()
	close(w.stop)
	<-w.done
	if w.fsw != nil {
		return w.fsw.Close()
	}
	return nil
}

// dirsFor lists the directories whose events can change what path reads:
// its own directory, and the directory of every symlink hop on the way to
// the final file.
func dirsFor(path string) []string {
	dirs := []string{filepath.Dir(path)}
	cur := path
	for range 16 { // bounded: symlink loops end here
		target, err := os.Readlink(cur)
		if err != nil {
			break
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(cur), target)
		}
		dirs = append(dirs, filepath.Dir(target))
		cur = target
	}
	if real, err := filepath.EvalSymlinks(path); err == nil {
		dirs = append(dirs, filepath.Dir(real))
	}
	slices.Sort(dirs)
	return slices.Compact(dirs)
}

// rewatch points the directory watches of f at its current symlink chain.
// Called with w.mu held.
func (w *Watcher) rewatch(f *file) {
	want := dirsFor(f.path)
	if slices.Equal(want, f.watching) {
		return
	}
	w.unwatch(f)
	for _, d := range want {
		if w.dirs[d] == 0 && w.fsw != nil {
			if err := w.fsw.Add(d); err != nil {
				// A missing directory is watched by polling until it
				// appears; the next check retries the watch.
				w.cfg.Logger.Debug("filewatch: cannot watch directory", "dir", d, "err", err)
				continue
			}
		}
		w.dirs[d]++
		f.watching = append(f.watching, d)
	}
}

// unwatch drops f's directory watches. Called with w.mu held.
func (w *Watcher) unwatch(f *file) {
	for _, d := range f.watching {
		w.dirs[d]--
		if w.dirs[d] <= 0 {
			delete(w.dirs, d)
			if w.fsw != nil {
				_ = w.fsw.Remove(d)
			}
		}
	}
	f.watching = nil
}

func (w *Watcher) loop() {
	defer close(w.done)
	var events <-chan fsnotify.Event
	var errs <-chan error
	if w.fsw != nil {
		events, errs = w.fsw.Events, w.fsw.Errors
	}
	var poll <-chan time.Time
	if w.cfg.PollInterval > 0 {
		t := time.NewTicker(w.cfg.PollInterval)
		defer t.Stop()
		poll = t.C
	}
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	defer debounce.Stop()
	grace := time.NewTimer(time.Hour)
	grace.Stop()
	defer grace.Stop()
	check := func() {
		if w.check() {
			grace.Reset(max(2*w.cfg.Debounce, emptyGrace))
		}
	}
	for {
		select {
		case <-w.stop:
			return
		case _, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			debounce.Reset(w.cfg.Debounce)
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			// Overflow or similar: a check soon re-reads everything.
			w.cfg.Logger.Warn("filewatch: notification error; re-reading files", "err", err)
			debounce.Reset(w.cfg.Debounce)
		case <-poll:
			check()
		case <-debounce.C:
			check()
		case <-grace.C:
			check()
		}
	}
}

// emptyGrace is the least time a file must stay empty before it is reported
// as empty.
const emptyGrace = 500 * time.Millisecond

// check re-reads every file and reports those whose content changed. It
// returns true when a file just turned empty and needs a second look.
func (w *Watcher) check() (recheck bool) {
	w.mu.Lock()
	var changed []string
	now := time.Now()
	for _, f := range w.files {
		w.rewatch(f)
		sum, n, err := hashFile(f.path)
		if err != nil {
			// Missing (mid-rename, deleted) or unreadable: keep the last
			// known content; its return is compared against it.
			continue
		}
		if n == 0 && f.known && !f.empty {
			// Possibly a truncate-then-write caught in the middle: report
			// only if it is still empty after the grace period.
			if f.emptySince.IsZero() {
				f.emptySince = now
			}
			if now.Sub(f.emptySince) < max(2*w.cfg.Debounce, emptyGrace) {
				recheck = true
				continue
			}
		}
		f.emptySince = time.Time{}
		f.empty = n == 0
		if f.known && sum == f.sum {
			continue
		}
		f.sum, f.known = sum, true
		changed = append(changed, f.path)
	}
	w.mu.Unlock()
	if len(changed) > 0 {
		slices.Sort(changed)
		w.onChange(changed)
	}
	return recheck
}

// hashFile returns the sha256 and length of the file's content.
func hashFile(path string) ([32]byte, int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return [32]byte{}, 0, err
	}
	return sha256.Sum256(b), len(b), nil
}
