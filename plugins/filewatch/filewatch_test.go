package filewatch

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// recorder collects callbacks on a channel so tests await events instead of
// sleeping.
type recorder chan []string

func (r recorder) fn(changed []string) { r <- changed }

// next waits (bounded) for the next callback.
func (r recorder) next(t *testing.T) []string {
	t.Helper()
	select {
	case c := <-r:
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("no change reported within 5s")
		return nil
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func start(t *testing.T, cfg Config, paths ...string) recorder {
	t.Helper()
	rec := make(recorder, 16)
	w, err := New(cfg, paths, rec.fn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	return rec
}

func fast() Config { return Config{Debounce: 20 * time.Millisecond, PollInterval: -1} }

func TestEditsAreReported(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "mendmq.yaml")
	other := filepath.Join(dir, "other.yaml")
	write(t, p, "a: 1\n")
	rec := start(t, fast(), p)

	steps := []struct {
		name string
		do   func()
	}{
		{"in-place write", func() { write(t, p, "a: 2\n") }},
		{"rename over (editor save)", func() {
			tmp := filepath.Join(dir, ".mendmq.yaml.swp")
			write(t, tmp, "a: 3\n")
			if err := os.Rename(tmp, p); err != nil {
				t.Fatal(err)
			}
		}},
		{"delete and recreate", func() {
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
			write(t, p, "a: 4\n")
		}},
	}
	for _, s := range steps {
		s.do()
		if got := rec.next(t); !slices.Equal(got, []string{p}) {
			t.Fatalf("%s: reported %v, want [%s]", s.name, got, p)
		}
	}

	// Rewriting identical bytes, touching another file in the same
	// directory and a chmod are dropped; the next real change is the next
	// report.
	write(t, p, "a: 4\n")
	write(t, other, "x")
	if err := os.Chmod(p, 0o600); err != nil {
		t.Fatal(err)
	}
	write(t, p, "a: 5\n")
	if got := rec.next(t); !slices.Equal(got, []string{p}) {
		t.Fatalf("after repeats: reported %v, want [%s]", got, p)
	}
	select {
	case got := <-rec:
		t.Fatalf("extra report %v", got)
	default:
	}
}

func TestKubernetesSymlinkSwap(t *testing.T) {
	// ConfigMap layout: dir/mendmq.yaml -> ..data/mendmq.yaml,
	// ..data -> ..v1; an update writes ..v2, points ..data_tmp at it and
	// renames ..data_tmp over ..data.
	dir := t.TempDir()
	for _, v := range []string{"..v1", "..v2"} {
		if err := os.Mkdir(filepath.Join(dir, v), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write(t, filepath.Join(dir, "..v1", "mendmq.yaml"), "v: 1\n")
	if err := os.Symlink("..v1", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "mendmq.yaml")
	if err := os.Symlink(filepath.Join("..data", "mendmq.yaml"), p); err != nil {
		t.Fatal(err)
	}
	rec := start(t, fast(), p)

	write(t, filepath.Join(dir, "..v2", "mendmq.yaml"), "v: 2\n")
	if err := os.Symlink("..v2", filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if got := rec.next(t); !slices.Equal(got, []string{p}) {
		t.Fatalf("reported %v, want [%s]", got, p)
	}
	// Writes through the new target are seen too (its directory is now
	// watched).
	write(t, filepath.Join(dir, "..v2", "mendmq.yaml"), "v: 3\n")
	if got := rec.next(t); !slices.Equal(got, []string{p}) {
		t.Fatalf("reported %v, want [%s]", got, p)
	}
}

func TestTruncateThenWriteIsOneChange(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "policy.wasm")
	write(t, p, "old")
	rec := start(t, fast(), p)
	f, err := os.OpenFile(p, os.O_TRUNC|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	// The watcher may look now, between truncate and write: it must not
	// report the empty file.
	time.Sleep(60 * time.Millisecond) // let a debounced check see the empty file
	if _, err := f.WriteString("new"); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	got := rec.next(t)
	if !slices.Equal(got, []string{p}) {
		t.Fatalf("reported %v", got)
	}
	if b, _ := os.ReadFile(p); string(b) != "new" {
		t.Fatalf("file holds %q", b)
	}
	select {
	case got := <-rec:
		t.Fatalf("extra report %v (the empty intermediate state?)", got)
	case <-time.After(100 * time.Millisecond):
	}
}

func TestStaysEmptyIsReported(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	write(t, p, "content")
	rec := start(t, fast(), p)
	write(t, p, "")
	if got := rec.next(t); !slices.Equal(got, []string{p}) {
		t.Fatalf("reported %v", got)
	}
}

func TestPollCatchesMissedEvents(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	write(t, p, "1")
	cfg := Config{Debounce: 10 * time.Millisecond, PollInterval: 20 * time.Millisecond, disableNotify: true}
	rec := start(t, cfg, p)
	write(t, p, "2")
	if got := rec.next(t); !slices.Equal(got, []string{p}) {
		t.Fatalf("reported %v", got)
	}
}

func TestMissingFileAppears(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "later.wasm")
	rec := start(t, fast(), p)
	write(t, p, "here")
	if got := rec.next(t); !slices.Equal(got, []string{p}) {
		t.Fatalf("reported %v", got)
	}
}

func TestSetPaths(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	write(t, a, "a1")
	write(t, b, "b1")
	rec := make(recorder, 16)
	w, err := New(fast(), []string{a}, rec.fn)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := w.SetPaths([]string{b}); err != nil {
		t.Fatal(err)
	}
	if got := w.Paths(); !slices.Equal(got, []string{b}) {
		t.Fatalf("Paths %v", got)
	}
	write(t, a, "a2") // no longer watched
	write(t, b, "b2")
	if got := rec.next(t); !slices.Equal(got, []string{b}) {
		t.Fatalf("reported %v, want [%s]", got, b)
	}
}

func TestConfigValidate(t *testing.T) {
	if err := (Config{Debounce: -1}).Validate(); err == nil {
		t.Error("negative debounce accepted")
	}
	if err := (Config{PollInterval: time.Millisecond}).Validate(); err == nil {
		t.Error("1ms poll accepted")
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Error(err)
	}
}
