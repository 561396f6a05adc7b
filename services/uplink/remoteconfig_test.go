package uplink

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
	"github.com/tinyscada/tinyscada/shared/bus"
	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/credentials"
	"github.com/tinyscada/tinyscada/shared/topics"
)

// buildBinary builds the real tinyscada binary into a temporary directory.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "tinyscada")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/tinyscada/tinyscada/cmd/tinyscada").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// stackDoc is a configuration of broker, poller (one simulated meter) and
// health with short intervals; points are the meter's [[poller.device.point]]
// tables and extra is appended.
func stackDoc(stateDir string, port int, points []string, extra string) string {
	var pts strings.Builder
	for i, name := range points {
		fmt.Fprintf(&pts, "[[poller.device.point]]\nname = %q\ntable = \"input\"\naddress = %d\ntype = \"f32\"\n", name, 2*i)
	}
	return fmt.Sprintf(`version = 1
node = "n1"
state_dir = %q
[bus]
address = "127.0.0.1:%d"
heartbeat_interval = "200ms"
retry_max = "200ms"
[broker]
listen = ["127.0.0.1:%d"]
[run]
roles = ["broker", "poller", "health"]
restart_backoff = "100ms"
restart_backoff_max = "500ms"
[health]
expect = ["broker", "poller"]
interval = "200ms"
stale_after = "1s"
stall_after = "5s"
failing_restart_after = "0s"
restart_limit = 50
[[poller.port]]
name = "sim"
device = "run/sim-tty"
mode = "rtu"
simulate = true
baud = 9600
[[poller.device]]
name = "meter"
port = "sim"
unit = 1
interval = "200ms"
%s%s`, stateDir, port, port, pts.String(), extra)
}

// results follows config/result and config/current upstream.
func results(t *testing.T, upPort int) <-chan string {
	return testpeer.Sub(t, upPort, "-v", "-q", "1", "-t", "fleet/n1/config/result", "-t", "fleet/n1/config/current")
}

func nextResult(t *testing.T, lines <-chan string, id string, statuses ...string) configResult {
	t.Helper()
	var r configResult
	testpeer.Expect(t, lines, 60*time.Second, fmt.Sprintf("result %s %v", id, statuses), func(l string) bool {
		topic, payload, _ := strings.Cut(l, " ")
		if topic != "fleet/n1/config/result" {
			return false
		}
		r = configResult{}
		if err := json.Unmarshal([]byte(payload), &r); err != nil {
			t.Fatalf("bad result %q: %v", payload, err)
		}
		if r.ID != id {
			return false
		}
		if !slices.Contains(statuses, r.Status) {
			t.Fatalf("result for %s: %s, want %v", id, payload, statuses)
		}
		return true
	})
	return r
}

func setRequest(t *testing.T, up *bus.Client, id, doc string) {
	t.Helper()
	b, _ := json.Marshal(configRequest{ID: id, TOML: doc})
	if err := up.Publish(context.Background(), bus.Message{Topic: "fleet/n1/config/set", QoS: 1, Payload: b}); err != nil {
		t.Fatal(err)
	}
}

// The whole path with the real binary: `tinyscada run` (broker, poller on a
// simulated meter, health), the remote configuration of this package
// connected to its bus as the uplink and to Debian's mosquitto as the
// upstream. Invalid documents are rejected with their reasons and change
// nothing; a valid one is applied (the poller restarted through health
// polls the new point); one whose port does not exist makes the poller fail
// and is rolled back; config/get returns the file in force.
func TestRemoteConfigThroughRun(t *testing.T) {
	t.Parallel()
	testpeer.Need(t, "mosquitto_sub")
	bin := buildBinary(t)
	upPort := testpeer.FreePort(t)
	testpeer.Mosquitto(t, upPort)
	port := testpeer.FreePort(t)
	dir := t.TempDir()
	stateDir := filepath.Join(dir, "state")
	srcPath := filepath.Join(dir, "tinyscada.toml")
	if err := os.WriteFile(srcPath, []byte(stackDoc(stateDir, port, []string{"voltage"}, "")), 0o644); err != nil {
		t.Fatal(err)
	}
	run := exec.Command(bin, "run", "-config", srcPath)
	var runOut lockedBuffer
	run.Stderr = &runOut
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = run.Process.Kill()
		_ = run.Wait()
		if t.Failed() {
			t.Logf("tinyscada run output:\n%s", runOut.String())
		}
	})
	local := fmt.Sprintf("127.0.0.1:%d", port)
	if err := testpeer.WaitPort(local, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	healthSub := testpeer.Sub(t, port, "-t", "tinyscada/health")
	testpeer.Expect(t, healthSub, 60*time.Second, "the stack ok", func(l string) bool { return strings.HasPrefix(l, `{"status":"ok"`) })

	// The roles read the effective file `tinyscada run` wrote.
	path := filepath.Join(stateDir, "run", "tinyscada.toml")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dialCtx, dcancel := context.WithTimeout(ctx, 20*time.Second)
	defer dcancel()
	lc, err := bus.Dial(dialCtx, bus.Options{Address: local, ClientID: "tinyscada-uplink", CleanSession: true,
		Credentials: func() (string, string, error) {
			p, err := credentials.Read(stateDir, string(topics.Uplink))
			return string(topics.Uplink), p, err
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer lc.Close()
	up, err := bus.Dial(dialCtx, bus.Options{Address: fmt.Sprintf("127.0.0.1:%d", upPort), ClientID: "n1-uplink", CleanSession: true})
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	rc := &remoteConfig{local: lc, tree: topics.Tree{Prefix: "tinyscada"}, topics: Upstream{Prefix: "fleet", Node: "n1"}, path: path,
		marker: filepath.Join(dir, "config-apply.json"), deadline: 15 * time.Second,
		log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))}
	rcDone := make(chan error, 1)
	go func() { rcDone <- rc.run(ctx) }()
	res := results(t, upPort)
	rc.setUpstream(up)
	// The subscriptions are made once a get is answered.
	getID := 0
	current := func() configCurrent {
		t.Helper()
		getID++
		id := fmt.Sprint("get-", getID)
		var cur configCurrent
		deadline := time.Now().Add(20 * time.Second)
		for cur.ID != id {
			if time.Now().After(deadline) {
				t.Fatal("no answer to config/get")
			}
			if err := up.Publish(ctx, bus.Message{Topic: "fleet/n1/config/get", QoS: 1, Payload: []byte(`{"id":"` + id + `"}`)}); err != nil {
				t.Fatal(err)
			}
			select {
			case l := <-res:
				topic, payload, _ := strings.Cut(l, " ")
				if topic == "fleet/n1/config/current" {
					if err := json.Unmarshal([]byte(payload), &cur); err != nil {
						t.Fatal(err)
					}
				}
			case err := <-rcDone:
				t.Fatalf("run ended: %v", err)
			case <-time.After(time.Second):
			}
		}
		return cur
	}
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if cur := current(); cur.TOML != string(before) || cur.Status != "current" || cur.Applying || cur.SHA256 != hash(before) {
		t.Fatalf("config/get answered %+v", cur)
	}

	// Invalid documents: every reason, nothing changed.
	good := stackDoc(stateDir, port, []string{"voltage", "current"}, "")
	for _, c := range []struct {
		id, doc string
		want    []string
	}{
		{"syntax", "version = 1\n[bus\naddress = 1\n", []string{"config/set:2"}},
		{"unknown-key", strings.Replace(good, "[bus]\n", "[bus]\nbogus = 1\n", 1) + "[logger]\nflavour = \"x\"\n",
			[]string{"config/set:5: bus.bogus", "logger.flavour"}},
		{"bad-value", strings.Replace(good, `heartbeat_interval = "200ms"`, `heartbeat_interval = "5x"`, 1),
			[]string{"config/set:6: bus.heartbeat_interval"}},
	} {
		setRequest(t, up, c.id, c.doc)
		r := nextResult(t, res, c.id, statusRejected)
		joined := strings.Join(r.Errors, "\n")
		for _, w := range c.want {
			if !strings.Contains(joined, w) {
				t.Errorf("%s: errors lack %q:\n%s", c.id, w, joined)
			}
		}
		if c.id == "unknown-key" && len(r.Errors) != 2 {
			t.Errorf("%s: %d errors, want both reasons: %q", c.id, len(r.Errors), r.Errors)
		}
		if now, _ := os.ReadFile(path); string(now) != string(before) {
			t.Fatalf("%s: the configuration changed", c.id)
		}
		if _, err := os.Stat(path + ".prev"); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s: %s.prev written (%v)", c.id, path, err)
		}
	}

	// A valid one: the poller is restarted and polls the new point.
	pollerPID := func() int {
		t.Helper()
		s := rc.view.state("poller")
		return s.PID
	}
	oldPID := pollerPID()
	setRequest(t, up, "add-point", good)
	if r := nextResult(t, res, "add-point", statusApplying); !slices.Equal(r.Roles, []string{"poller"}) {
		t.Errorf("applying: roles %q, want [poller] (the logger, which reads [poller] too, is not running)", r.Roles)
	}
	r := nextResult(t, res, "add-point", statusApplied)
	if now, _ := os.ReadFile(path); string(now) != good {
		t.Fatalf("file after apply:\n%s", now)
	}
	if prev, _ := os.ReadFile(path + ".prev"); string(prev) != string(before) {
		t.Errorf(".prev is not the previous configuration")
	}
	if pollerPID() == oldPID || r.SHA256 != hash([]byte(good)) {
		t.Errorf("applied %+v, poller pid %d (was %d)", r, pollerPID(), oldPID)
	}
	data := testpeer.Sub(t, port, "-t", "tinyscada/data/meter")
	testpeer.Expect(t, data, 20*time.Second, "the new point polled", func(l string) bool {
		var m struct{ V map[string]any }
		return json.Unmarshal([]byte(l), &m) == nil && m.V["current"] != nil && m.V["voltage"] != nil
	})
	if _, err := os.Stat(rc.marker); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("marker left after the apply: %v", err)
	}
	if cur := current(); cur.TOML != good {
		t.Errorf("config/get after the apply: %q", cur.TOML)
	}

	// Valid for config check, but its port does not exist: the poller
	// fails, health is not ok, the previous file comes back.
	bad := good + `[[poller.port]]
name = "gone"
device = "/dev/ttyTINYSCADA-NONE"
mode = "rtu"
baud = 9600
[[poller.device]]
name = "ghost"
port = "gone"
unit = 3
[[poller.device.point]]
name = "x"
table = "input"
address = 0
type = "u16"
`
	if _, err := config.Parse("check", []byte(bad)); err != nil {
		t.Fatalf("the failing configuration must pass config check: %v", err)
	}
	setRequest(t, up, "bad-port", bad)
	nextResult(t, res, "bad-port", statusApplying)
	// The uplink stops mid-apply (its context ends: it leaves everything
	// as a kill would, the marker on disk); a new one finishes the check
	// and the rollback.
	cancel()
	if err := <-rcDone; err != nil {
		t.Fatalf("run: %v", err)
	}
	if _, err := os.Stat(rc.marker); err != nil {
		t.Fatalf("no marker mid-apply: %v", err)
	}
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	// This one waits out its deadline (the failing poller never becomes
	// healthy) before it rolls back: a shorter one than the apply's, which
	// must succeed (4.5 s: a restart and return to health took about 1 s here),
	// still long enough for the poller's restart and the
	// rollback's return to health on a loaded machine.
	rc = &remoteConfig{local: lc, tree: rc.tree, topics: rc.topics, path: path, marker: rc.marker, deadline: 4500 * time.Millisecond, log: rc.log}
	go func() { rcDone <- rc.run(ctx) }()
	rc.setUpstream(up)
	r = nextResult(t, res, "bad-port", statusRolledBack)
	if !strings.Contains(r.Reason, "not healthy") || !strings.Contains(r.Reason, "poller") || r.Healthy == nil || !*r.Healthy {
		t.Errorf("rolled back: %+v", r)
	}
	t.Logf("rollback reason: %s", r.Reason)
	if now, _ := os.ReadFile(path); string(now) != good {
		t.Fatalf("file after the rollback:\n%s", now)
	}
	testpeer.Expect(t, healthSub, 30*time.Second, "the stack ok again", func(l string) bool { return strings.HasPrefix(l, `{"status":"ok"`) })
	// The marker goes once the result's PUBACK came.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(rc.marker); errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("marker left after the rollback was reported")
		}
	}

	cancel()
	if err := <-rcDone; err != nil {
		t.Errorf("run: %v", err)
	}
}

func TestAffectedRoles(t *testing.T) {
	base := "version = 1\nnode = \"n\"\n"
	parse := func(doc string) *config.Config {
		t.Helper()
		c, err := config.Parse("t", []byte(base+doc))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	all := topics.Names(topics.Roles())
	for _, c := range []struct {
		old, new string
		want     []string
	}{
		{"", "", nil},
		{"", "[run]\nrestart_backoff = \"1s\"\n", nil},
		{"", "[logger]\nbatch_delay = \"2s\"\n", []string{"logger"}},
		{"", "[poller]\nack_timeout = \"60s\"\n", []string{"logger", "poller"}}, // in start order
		{"", "[poller]\nretain_values = false\n", []string{"broker", "logger", "poller"}},
		{"", "[health]\nrestart_limit = 5\n", []string{"health"}},
		{"", "[broker]\nmax_pending = 10\n", []string{"broker"}},
		{"", "[bus]\nretry_max = \"1s\"\n", all},
		{"", "topic_prefix = \"x\"\n", all},
		{"[log]\nlevel = \"debug\"\n", "", all},
	} {
		got := affectedRoles(parse(c.old), parse(c.new))
		if !slices.Equal(got, c.want) {
			t.Errorf("%q -> %q: %q, want %q", c.old, c.new, got, c.want)
		}
	}
	// A unit is on the broker's value topics.
	withUnit := parse("")
	if len(withUnit.Poller.Device) == 0 || len(withUnit.Poller.Device[0].Point) == 0 {
		t.Fatal("the default configuration has no point")
	}
	withUnit.Poller.Device[0].Point[0].Unit += "x"
	if got := affectedRoles(parse(""), withUnit); !slices.Equal(got, []string{"broker", "logger", "poller"}) {
		t.Errorf("a unit changed: %q, want broker, logger, poller", got)
	}
	if got := affectedRoles(nil, parse("")); !slices.Equal(got, all) {
		t.Errorf("no old configuration: %q, want all", got)
	}
}

func TestParseRequest(t *testing.T) {
	for _, c := range []struct {
		in      string
		id, doc string
		err     bool
	}{
		{"version = 1\n", "", "version = 1\n", false},
		{`{"id":"a1","toml":"version = 1\n"}`, "a1", "version = 1\n", false},
		{` {"toml":"x"}`, "", "x", false},
		{`{"id":"a1","tom":"x"}`, "", "", true},
		{`{"id":"a1"} {}`, "", "", true},
		{`{"id":1}`, "", "", true},
		{"", "", "", false},
	} {
		r, err := parseRequest([]byte(c.in))
		if (err != nil) != c.err || (!c.err && (r.ID != c.id || r.TOML != c.doc)) {
			t.Errorf("parseRequest(%q) = %+v, %v", c.in, r, err)
		}
	}
}
