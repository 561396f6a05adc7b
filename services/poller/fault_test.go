package poller

import (
	"encoding/json"

	"golang.org/x/sys/unix"

	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/services/simulate"
	"github.com/tinyscada/tinyscada/shared/bus"
)

// twoUnits is a good unit 1 and a unit 2 that the tests break.
const twoUnits = `
baud = 115200
[[unit]]
id = 1
[[unit.register]]
table = "input"
address = 0
type = "u16"
value = 111
[[unit]]
id = 2
[[unit.register]]
table = "input"
address = 0
type = "u16"
value = 222
[[unit.register]]
table = "input"
address = 1
type = "f32"
value = 1.5
[[unit.register]]
table = "coil"
address = 0
value = true
`

func twoDevices(timeout, interval, backoffMax string, pollerKeys ...string) string {
	return fmt.Sprintf(`
[poller]
%[4]s
offline_backoff_max = %[3]q
reopen_backoff_max = "100ms"
[[poller.port]]
name = "sim"
device = "sim-tty"
baud = 115200
timeout = %[1]q
[[poller.device]]
name = "good"
port = "sim"
unit = 1
interval = %[2]q
[[poller.device.point]]
name = "x"
table = "input"
[[poller.device]]
name = "victim"
port = "sim"
unit = 2
interval = %[2]q
[[poller.device.point]]
name = "a"
table = "input"
[[poller.device.point]]
name = "b"
table = "input"
address = 1
type = "f32"
[[poller.device.point]]
name = "c"
table = "coil"
`, timeout, interval, backoffMax, strings.Join(pollerKeys, "\n"))
}

// TestFaults breaks unit 2 in every way the simulator can and checks that
// the poller marks it offline with the right reason and takes it back
// online by itself once it is well, while unit 1 keeps being read.
func TestFaults(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	sim, _ := startSim(t, twoUnits, simLink(t, dir))
	rec := newRecorder()
	// The simulator answers one request at a time: while it holds back
	// unit 2's late reply, unit 1's answer waits too. Unit 1's own timeout
	// covers that, so that its every round must be good.
	body := strings.Replace(twoDevices("100ms", "50ms", "50ms"), "unit = 1\n", "unit = 1\ntimeout = \"1s\"\n", 1)
	startPoller(t, testConfig(t, dir, body), rec)

	const victim, state = "tinyscada/data/victim", "tinyscada/device/victim/state"
	from, sfrom := 0, 0
	rec.wait(t, &from, victim, 5*time.Second, "a good round", allGood)
	rec.wait(t, &sfrom, state, 5*time.Second, "online", isState("online"))

	cases := []struct {
		fault   simulate.Fault
		why     string // in the data message's bad map
		offline bool
	}{
		{simulate.Fault{Kind: simulate.NoAnswer}, "timeout", true},
		{simulate.Fault{Kind: simulate.BadCRC}, "CRC error", true},
		{simulate.Fault{Kind: simulate.Truncate}, "truncated reply", true},
		{simulate.Fault{Kind: simulate.Late, Delay: 150 * time.Millisecond}, "timeout", true},
		{simulate.Fault{Kind: simulate.Garbage, Garbage: []byte{0x02, 0x04, 0xFF, 0x00, 0x13}}, "", false},
		{simulate.Fault{Kind: simulate.Garbage}, "", false},
		{simulate.Fault{Kind: simulate.Exception, Code: 2}, "exception 2 (illegal data address)", false},
		{simulate.Fault{Kind: simulate.Slow, Delay: 30 * time.Millisecond}, "", false},
	}
	for _, tc := range cases {
		t.Run(tc.fault.Kind.String(), func(t *testing.T) {
			if err := sim.Device.SetFault(2, tc.fault); err != nil {
				t.Fatal(err)
			}
			if tc.why != "" {
				// A round may have begun before the fault: its first request
				// answered, the next not. Wait for one that failed whole.
				m := rec.wait(t, &from, victim, 5*time.Second, "a round failing with "+tc.why, func(m bus.Message) bool {
					var d struct{ Bad map[string]string }
					return json.Unmarshal(m.Payload, &d) == nil && len(d.Bad) == 3
				})
				d := parseData(t, m)
				for _, p := range []string{"a", "b", "c"} {
					if d.Bad[p] != tc.why {
						t.Errorf("point %s: bad %q, want %q (%s)", p, d.Bad[p], tc.why, m.Payload)
					}
				}
			} else {
				// Garbage between frames and slow answers are read through.
				n := 0
				rec.wait(t, &from, victim, 5*time.Second, "three good rounds", func(m bus.Message) bool {
					if allGood(m) {
						n++
					} else {
						t.Errorf("round failed under %v: %s", tc.fault.Kind, m.Payload)
					}
					return n == 3
				})
			}
			if tc.offline {
				m := rec.wait(t, &sfrom, state, 5*time.Second, "offline", isState("offline"))
				if s := parseState(t, m); s.Error == "" {
					t.Errorf("offline state without error: %s", m.Payload)
				}
			}
			if err := sim.Device.SetFault(2, simulate.Fault{}); err != nil {
				t.Fatal(err)
			}
			if tc.offline {
				rec.wait(t, &sfrom, state, 5*time.Second, "online again", isState("online"))
			}
			m := rec.wait(t, &from, victim, 5*time.Second, "a good round after the fault", allGood)
			if d := parseData(t, m); string(d.V["a"]) != "222" || string(d.V["b"]) != "1.5" || string(d.V["c"]) != "true" {
				t.Errorf("values after %v: %s", tc.fault.Kind, m.Payload)
			}
		})
	}
	// Unit 1 was read all along, every round good.
	for _, m := range rec.all("tinyscada/data/good") {
		if !allGood(m) || !strings.Contains(string(m.Payload), `"x":111`) {
			t.Fatalf("good device: %s", m.Payload)
		}
	}
	if n := len(rec.all("tinyscada/device/good/state")); n != 1 {
		t.Errorf("good device changed state %d times", n)
	}
}

// TestPortVanishes removes the simulator and its pseudo-terminal under
// the poller, then makes a new one at the same path.
func TestPortVanishes(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	link := simLink(t, dir)
	_, stop := startSim(t, twoUnits, link)
	rec := newRecorder()
	p := startPoller(t, testConfig(t, dir, twoDevices("100ms", "50ms", "50ms")), rec)

	from, sfrom := 0, 0
	rec.wait(t, &from, "tinyscada/data/good", 5*time.Second, "a good round", allGood)
	rec.wait(t, &sfrom, "tinyscada/device/good/state", 5*time.Second, "online", isState("online"))

	stop()
	m := rec.wait(t, &sfrom, "tinyscada/device/good/state", 5*time.Second, "offline", isState("offline"))
	t.Logf("while gone: %s", m.Payload)
	if s := p.Stats(); s.PortsOpen != 0 {
		t.Errorf("port still open: %+v", s)
	}

	startSim(t, twoUnits, link)
	rec.wait(t, &sfrom, "tinyscada/device/good/state", 10*time.Second, "online again", isState("online"))
	rec.wait(t, &from, "tinyscada/data/good", 5*time.Second, "a good round on the new line", allGood)
	rec.wait(t, new(int), "tinyscada/device/victim/state", 5*time.Second, "victim online", isState("online"))
}

// TestIsolation measures how late the good device's rounds start while
// the other device on the bus never answers: at most the dead device's
// timeout (one request per round, no retries) plus the good device's own
// round.
func TestIsolation(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	sim, _ := startSim(t, twoUnits, simLink(t, dir))
	if err := sim.Device.SetFault(2, simulate.Fault{Kind: simulate.NoAnswer}); err != nil {
		t.Fatal(err)
	}
	const timeout = 200 * time.Millisecond
	rec := newRecorder()
	p := startPoller(t, testConfig(t, dir, twoDevices(timeout.String(), "100ms", "10ms")), rec)

	from := 0
	n := 0
	rec.wait(t, &from, "tinyscada/data/good", 10*time.Second, "12 rounds of the good device", func(bus.Message) bool {
		n++
		return n == 12
	})
	attempts := uint64(0)
	for k, n := range sim.Device.Stats().Requests {
		if k.Unit == 2 {
			attempts += n
		}
	}
	var good *device
	for _, d := range p.devices {
		if d.name == "good" {
			good = d
		}
	}
	late := time.Duration(good.late.Load())
	t.Logf("dead device attempted %d times; good device at most %v late (timeout %v)", attempts, late, timeout)
	if attempts < 3 {
		t.Fatalf("the dead device was tried %d times: the test proves nothing", attempts)
	}
	// The bound: one timeout of the dead device, and generous room for
	// the good round itself and a busy machine.
	if bound := timeout + 100*time.Millisecond; late > bound {
		t.Errorf("good device was %v late, more than %v", late, bound)
	}
}

// TestTwoPollersOnePort: the second poller cannot open the port, says who
// holds it, and the first carries on.
func TestTwoPollersOnePort(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	startSim(t, twoUnits, simLink(t, dir))
	cfg := testConfig(t, dir, twoDevices("100ms", "50ms", "50ms"))
	first := newRecorder()
	startPoller(t, cfg, first)
	from := 0
	first.wait(t, &from, "tinyscada/data/good", 5*time.Second, "a round of the first poller", allGood)

	second := newRecorder()
	p2 := startPoller(t, cfg, second)
	m := second.wait(t, new(int), "tinyscada/device/good/state", 5*time.Second, "the second poller's state", nil)
	s := parseState(t, m)
	want := fmt.Sprintf("port sim: %s is locked by pid %d", simLink(t, dir), os.Getpid())
	if s.State != "offline" || s.Error != want {
		t.Errorf("second poller: %s\nwant offline with %q", m.Payload, want)
	}
	// Its devices are as dead: rounds with every point bad, no value.
	for _, m := range second.all("tinyscada/data/good") {
		if !portClosed("x")(m) || !strings.Contains(string(m.Payload), "is locked by pid") {
			t.Errorf("the second poller published a round that is not port_closed by the lock: %s", m.Payload)
		}
	}
	select {
	case <-p2.Started():
	case <-time.After(time.Second):
		t.Error("the second poller does not count its port as tried")
	}
	first.wait(t, &from, "tinyscada/data/good", 5*time.Second, "the first poller going on", allGood)
}

// TestPTYNotLeftExclusive: the serial library sets TIOCEXCL; on a
// pseudo-terminal whose other end stays open it would outlive a killed
// poller and lock a restarted one (not root) out with EBUSY. The poller
// clears it there and relies on its flock.
func TestPTYNotLeftExclusive(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	startSim(t, twoUnits, simLink(t, dir))
	cfg := testConfig(t, dir, twoDevices("100ms", "50ms", "50ms"))
	rec := newRecorder()
	startPoller(t, cfg, rec)
	rec.wait(t, new(int), "tinyscada/data/good", 5*time.Second, "a round", allGood)

	f, err := os.OpenFile(simLink(t, dir), os.O_RDWR|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	excl, err := unix.IoctlGetInt(int(f.Fd()), unix.TIOCGEXCL)
	if err != nil {
		t.Fatalf("TIOCGEXCL: %v", err)
	}
	if excl != 0 {
		t.Fatal("the pseudo-terminal is in exclusive mode while the poller holds it: a killed poller would leave it so")
	}
}
