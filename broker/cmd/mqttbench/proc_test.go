package main

import (
	"os"
	"testing"
	"time"
)

func TestParseProcStatCPU(t *testing.T) {
	// Field 2 may contain spaces and parentheses; utime=250 stime=50 ticks.
	line := "4242 (my (weird) proc) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1000 1000000 200 18446744073709551615"
	got, err := parseProcStatCPU(line)
	if err != nil {
		t.Fatal(err)
	}
	if got != 3*time.Second {
		t.Fatalf("got %s, want 3s", got)
	}
	for _, bad := range []string{"", "no paren", "1 (x) S 1 2", "1 (x) S 1 2 3 4 5 6 7 8 9 10 zz 2"} {
		if _, err := parseProcStatCPU(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestParseSystemBusy(t *testing.T) {
	got, err := parseSystemBusy("cpu  100 5 50 9000 40 1 4 0 7 0\ncpu0 1 2 3\n")
	if err != nil {
		t.Fatal(err)
	}
	if want := time.Duration(100+5+50+1+4+0) * 10 * time.Millisecond; got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
	if _, err := parseSystemBusy("intr 1 2 3"); err == nil {
		t.Fatal("non-cpu line accepted")
	}
}

func TestOwnProcessFigures(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc on this system")
	}
	if _, err := procCPU(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	rss, err := procRSS(os.Getpid())
	if err != nil || rss <= 0 {
		t.Fatalf("rss %d err %v", rss, err)
	}
	if _, err := systemBusy(); err != nil {
		t.Fatal(err)
	}
}

func FuzzParseProcStatCPU(f *testing.F) {
	f.Add("1 (a) S 1 1 1 0 -1 0 0 0 0 0 5 5 0")
	f.Add("1 (a)")
	f.Fuzz(func(t *testing.T, s string) {
		if d, err := parseProcStatCPU(s); err == nil && d < 0 {
			t.Fatalf("negative CPU time %s", d)
		}
	})
}

func FuzzParseSystemBusy(f *testing.F) {
	f.Add("cpu  100 5 50 9000 40 1 4 0 7 0\n")
	f.Add("cpu 1 2 3 4 5\n")
	f.Fuzz(func(t *testing.T, s string) {
		if d, err := parseSystemBusy(s); err == nil && d < 0 {
			t.Fatalf("negative busy time %s", d)
		}
	})
}
