package main

import (
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of /proc/PID/stat CPU times; 100 on every Linux
// architecture Go supports.
const clockTicks = 100

// maxTicks bounds a parsed CPU time (2^38 ticks is 87 years) so the sum of user and
// system time converted to a time.Duration cannot overflow.
const maxTicks = 1 << 38

// selfCPU returns this process's user+system CPU time so far.
func selfCPU() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("read own CPU time: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// procCPU returns the user+system CPU time of process pid (all its threads), from
// /proc/PID/stat (10 ms resolution).
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read CPU time of pid %d: %w", pid, err)
	}
	return parseProcStatCPU(string(b))
}

// parseProcStatCPU extracts utime+stime from the text of /proc/PID/stat. The command
// name (field 2) is in parentheses and may contain spaces, so fields are counted
// from the last ')'.
func parseProcStatCPU(s string) (time.Duration, error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc stat: no ')' in %q", truncate(s, 64))
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime is field 14, stime field 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("parse /proc stat: %d fields after the command, want >= 13", len(f))
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil || ut > maxTicks || st > maxTicks {
		return 0, fmt.Errorf("parse /proc stat: utime %q stime %q", f[11], f[12])
	}
	return time.Duration(ut+st) * (time.Second / clockTicks), nil
}

// procsCPU sums procCPU over pids; failures are reported to onErr and count as 0.
func procsCPU(pids []int, onErr func(error)) time.Duration {
	var sum time.Duration
	for _, pid := range pids {
		d, err := procCPU(pid)
		if err != nil {
			onErr(err)
			continue
		}
		sum += d
	}
	return sum
}

// procRSS returns the resident set size of pid in bytes (VmRSS in /proc/PID/status).
func procRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read memory of pid %d: %w", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) != 2 || f[1] != "kB" {
				return 0, fmt.Errorf("parse VmRSS of pid %d: %q", pid, line)
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse VmRSS of pid %d: %w", pid, err)
			}
			return kb * 1024, nil
		}
	}
	return 0, fmt.Errorf("no VmRSS line for pid %d", pid)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// systemBusy returns the CPU time all CPUs spent not idle so far (first line of
// /proc/stat: user nice system idle iowait irq softirq steal ...). Subtracting the
// generator's and brokers' share over a run leaves what other processes used: a
// benchmark on a shared machine is only as good as that number is small.
func systemBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, fmt.Errorf("read system CPU time: %w", err)
	}
	return parseSystemBusy(string(b))
}

// parseSystemBusy parses the aggregate "cpu" line of /proc/stat.
func parseSystemBusy(s string) (time.Duration, error) {
	line, _, _ := strings.Cut(s, "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		return 0, fmt.Errorf("parse /proc/stat: first line %q", truncate(line, 80))
	}
	var busy uint64
	for i, v := range f[1:] {
		if i >= 8 { // guest and guest_nice are already included in user and nice
			break
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n > maxTicks {
			return 0, fmt.Errorf("parse /proc/stat: field %d %q", i+1, v)
		}
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		busy += n
	}
	if busy > math.MaxInt64/uint64(time.Second/clockTicks) { // would overflow a Duration
		return 0, fmt.Errorf("parse /proc/stat: busy time %d ticks out of range", busy)
	}
	return time.Duration(busy) * (time.Second / clockTicks), nil
}
