package testpeer

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"
)

// pollEvery is how often Until and Eventually look at their condition:
// short next to any timeout a test gives, long enough not to spin.
const pollEvery = 10 * time.Millisecond

// Until reports whether cond held within timeout, looking every 10 ms
// (first at once, last at the deadline). For a caller that wants to add
// what it saw to its failure; Eventually fails the test itself.
func Until(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if !time.Now().Before(deadline) {
			return false
		}
		time.Sleep(min(pollEvery, time.Until(deadline)))
	}
}

// Eventually waits until cond holds, or fails the test after timeout with
// what it was waiting for. The waiting replaces a fixed sleep before an
// assertion: it ends as soon as the condition holds, and the bound is
// generous because the machine running the tests may be loaded.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if !Until(timeout, cond) {
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
}

// Main runs a package's tests (call it from TestMain: os.Exit(Main(m,
// n))) with up to n parallel tests at once unless -parallel was given.
// go test's default is GOMAXPROCS, two on a small machine, which suits
// tests that compute; tests that mostly wait for processes, brokers and
// timers they started are better run more at once.
func Main(m *testing.M, n int) int {
	flag.Parse()
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "test.parallel" })
	if !set {
		if err := flag.Set("test.parallel", strconv.Itoa(n)); err != nil {
			fmt.Fprintln(os.Stderr, "testpeer.Main:", err)
			return 2
		}
	}
	return m.Run()
}
