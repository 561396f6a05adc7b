package service

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// aloneEnv names the test that a process of the test binary was started
// to run by itself.
const aloneEnv = "TINYSCADA_SERVICE_TEST_ALONE"

// alone runs the calling test in a process of its own, where it may set
// the process environment (NOTIFY_SOCKET, WATCHDOG_USEC, which the service
// reads as systemd sets them) without holding up the package's parallel
// tests, and returns false: the caller returns. In that process it returns
// true, and the test goes on there.
func alone(t *testing.T) bool {
	t.Helper()
	if os.Getenv(aloneEnv) == t.Name() {
		return true
	}
	t.Parallel()
	args := []string{"-test.run=^" + regexp.QuoteMeta(t.Name()) + "$", "-test.count=1", "-test.v"}
	if testing.Short() {
		args = append(args, "-test.short")
	}
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), aloneEnv+"="+t.Name())
	out, err := cmd.CombinedOutput()
	switch {
	case err == nil && strings.Contains(string(out), "--- SKIP: "+t.Name()):
		// The child's testpeer.Need already failed it instead when CI=true.
		t.Skipf("skipped in its own process:\n%s", out)
	case err != nil || !strings.Contains(string(out), "--- PASS: "+t.Name()):
		t.Fatalf("%s in a process of its own: %v\n%s", t.Name(), err, out)
	}
	return false
}
