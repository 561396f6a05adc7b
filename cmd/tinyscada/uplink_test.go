package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
	"github.com/tinyscada/tinyscada/shared/bus"
	"github.com/tinyscada/tinyscada/shared/store"
)

// The uplink's tests run the real binary (`tinyscada uplink`) between a
// local mosquitto standing in for the local broker and an upstream
// mosquitto, over a database that the test writes as the logger would
// (the uplink only reads it). A fleet-side subscriber with a persistent
// session collects what arrives upstream, and the checks are by dedup key.

// upBatch is a data batch as it arrives upstream (docs/uplink.md).
type upBatch struct {
	V        int    `json:"v"`
	Node     string `json:"node"`
	Gen      string `json:"gen"`
	First    int64  `json:"first"`
	Last     int64  `json:"last"`
	GapFirst int64  `json:"gap_first"`
	GapLast  int64  `json:"gap_last"`
	Samples  []struct {
		Row   int64                      `json:"row"`
		Dev   string                     `json:"dev"`
		T     int64                      `json:"t"`
		Clock string                     `json:"clock"`
		V     map[string]json.RawMessage `json:"v"`
		Bad   map[string]string          `json:"bad"`
	} `json:"samples"`
	Gaps []struct {
		ID      int64  `json:"id"`
		Kind    string `json:"kind"`
		Row     int64  `json:"row"`
		LastRow int64  `json:"last_row"`
		Reason  string `json:"reason"`
	} `json:"gaps"`
}

func (b *upBatch) key() string {
	return fmt.Sprintf("%s/%s/%d-%d/%d-%d", b.Node, b.Gen, b.First, b.Last, b.GapFirst, b.GapLast)
}

func decodeBatch(payload []byte) (*upBatch, error) {
	if len(payload) > 2 && payload[0] == 0x1f && payload[1] == 0x8b {
		zr, err := gzip.NewReader(bytes.NewReader(payload))
		if err != nil {
			return nil, err
		}
		if payload, err = io.ReadAll(zr); err != nil {
			return nil, err
		}
	}
	var b upBatch
	if err := json.Unmarshal(payload, &b); err != nil {
		return nil, err
	}
	return &b, nil
}

// fleet is the upstream consumer: it keeps every batch that arrived.
type fleet struct {
	mu      sync.Mutex
	batches []*upBatch
	wire    int64 // payload bytes
	bad     []string
}

func (f *fleet) handle(_ string, payload []byte) {
	b, err := decodeBatch(payload)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.wire += int64(len(payload))
	if err != nil {
		f.bad = append(f.bad, err.Error())
		return
	}
	f.batches = append(f.batches, b)
}

// maxRow is the highest row that arrived.
func (f *fleet) maxRow() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var m int64
	for _, b := range f.batches {
		m = max(m, b.Last)
	}
	return m
}

// check verifies the dedup rule over everything that arrived: batches with
// the same key hold the same rows, batches with different keys share no
// row, and every row in 1..last arrived or lies in a 'dropped' gap record
// that arrived. It returns how many rows and duplicate batches it saw.
func (f *fleet) check(t *testing.T, last int64) (rows, dups int) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.bad) > 0 {
		t.Errorf("%d payloads upstream could not be decoded: %v", len(f.bad), f.bad[0])
	}
	byKey := map[string][]int64{}
	owner := map[int64]string{}
	var dropped [][2]int64
	gen := ""
	for _, b := range f.batches {
		if gen == "" {
			gen = b.Gen
		}
		if b.Gen != gen {
			t.Errorf("batch %s of another generation than %s", b.key(), gen)
		}
		var got []int64
		for _, s := range b.Samples {
			if s.Row < b.First || s.Row > b.Last {
				t.Errorf("batch %s holds row %d outside its key", b.key(), s.Row)
			}
			if len(s.V) == 0 {
				t.Errorf("batch %s row %d has no values", b.key(), s.Row)
			}
			got = append(got, s.Row)
		}
		for _, g := range b.Gaps {
			if g.Kind == "dropped" {
				dropped = append(dropped, [2]int64{g.Row, g.LastRow})
			}
		}
		k := b.key()
		if prev, ok := byKey[k]; ok {
			dups++
			if fmt.Sprint(prev) != fmt.Sprint(got) {
				// A batch sent again after its rows were pruned holds fewer.
				for _, r := range got {
					if owner[r] != k {
						t.Errorf("batch %s sent again with row %d it did not hold", k, r)
					}
				}
			}
			continue
		}
		byKey[k] = got
		for _, r := range got {
			if o, ok := owner[r]; ok {
				t.Errorf("row %d arrived in two batches of different keys: %s and %s", r, o, k)
			}
			owner[r] = k
		}
	}
	missing := 0
	for r := int64(1); r <= last; r++ {
		if _, ok := owner[r]; ok {
			continue
		}
		inGap := false
		for _, d := range dropped {
			if r >= d[0] && r <= d[1] {
				inGap = true
				break
			}
		}
		if !inGap {
			if missing < 10 {
				t.Errorf("row %d never arrived upstream (and no dropped gap names it)", r)
			}
			missing++
		}
	}
	if missing > 0 {
		t.Errorf("%d rows missing upstream", missing)
	}
	return len(owner), dups
}

// rig is a local bus, an upstream broker, a database written by the test
// and the uplink binary.
type rig struct {
	t        *testing.T
	local    *testpeer.Broker
	upstream *testpeer.Broker
	stateDir string
	cfgPath  string
	db       *store.Store
	seq      uint64
	lastRow  int64
	localBus *bus.Client
	fleet    *fleet
	sub      *bus.Client

	mu     sync.Mutex
	uplink *exec.Cmd
	out    *strings.Builder
}

func newRig(t *testing.T, maxDB int64, extra string) *rig {
	t.Helper()
	lp, upPort := testpeer.FreePort(t), testpeer.FreePort(t)
	r := &rig{t: t, fleet: &fleet{}}
	r.local = testpeer.NewBroker(t, lp, fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\n", lp))
	r.local.Start()
	r.upstream = testpeer.PersistentBroker(t, upPort)
	dir := t.TempDir()
	r.stateDir = filepath.Join(dir, "state")
	r.cfgPath = filepath.Join(dir, "tinyscada.toml")
	body := fmt.Sprintf(`version = 1
node = "cab4"
state_dir = %q
[bus]
address = "127.0.0.1:%d"
heartbeat_interval = "200ms"
retry_max = "200ms"
[uplink]
address = "127.0.0.1:%d"
retry_max = "1s"
batch_delay = "50ms"
poll_interval = "500ms"
%s`, r.stateDir, lp, upPort, extra)
	if err := os.WriteFile(r.cfgPath, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(context.Background(), store.Options{
		Path: filepath.Join(r.stateDir, "readings.db"), Synchronous: "normal", BusyTimeout: time.Second,
		MaxSize: maxDB, ClockStep: 2 * time.Second, GapAfter: time.Hour, Log: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	r.db = st
	r.localBus, err = bus.Dial(context.Background(), bus.Options{Address: fmt.Sprintf("127.0.0.1:%d", lp), ClientID: "test-logger", CleanSession: true, RetryMax: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.localBus.Close)
	// Like the logger: the uplink's cursor says which rows may be pruned first.
	cursors := make(chan int64, 64)
	if err := r.localBus.Subscribe("tinyscada/uplink/cursor", 1, func(_ string, p []byte) {
		var c struct{ Row int64 }
		if json.Unmarshal(p, &c) == nil {
			select {
			case cursors <- c.Row:
			default:
			}
		}
	}); err != nil {
		t.Fatal(err)
	}
	go func() {
		for row := range cursors {
			r.mu.Lock()
			r.db.SetUploaded(row)
			r.mu.Unlock()
		}
	}()
	return r
}

// connectFleet starts the upstream broker once so that the fleet's
// persistent session exists before the uplink sends anything.
func (r *rig) connectFleet() {
	r.t.Helper()
	c, err := bus.Dial(context.Background(), bus.Options{
		Address: fmt.Sprintf("127.0.0.1:%d", r.upstream.Port), ClientID: "fleet-ingest", CleanSession: false,
		RetryMax: 100 * time.Millisecond, DefaultHandler: r.fleet.handle,
	})
	if err != nil {
		r.t.Fatal(err)
	}
	if err := c.Subscribe("tinyscada/+/data", 1, r.fleet.handle); err != nil {
		r.t.Fatal(err)
	}
	r.sub = c
	r.t.Cleanup(c.Close)
}

// write stores n samples of one device with 10 readings each and
// announces the commit.
func (r *rig) write(n int) {
	r.t.Helper()
	items := make([]store.Item, n)
	now := time.Now()
	for i := range items {
		r.seq++
		vals := make([]store.Value, 10)
		for j := range vals {
			vals[j] = store.Value{Name: []byte("p" + strconv.Itoa(j)), Kind: store.KindFloat, F: float64(r.seq) + float64(j)/10}
		}
		items[i] = store.Item{Device: "pump1", Msg: store.Message{
			Run: []byte("run1"), Seq: r.seq, Wall: now.UnixMilli(), Mono: int64(r.seq) * 1e6, Boot: []byte("boot1"),
			Values: vals, HasID: true,
		}}
	}
	r.mu.Lock()
	res, err := r.db.Write(context.Background(), "poller", items)
	r.mu.Unlock()
	if err != nil {
		r.t.Fatal(err)
	}
	r.lastRow = res.LastRow
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = r.localBus.Publish(ctx, bus.Message{Topic: "tinyscada/logger/committed", QoS: 0,
		Payload: []byte(fmt.Sprintf(`{"gen":%q,"row":%d}`, r.db.Generation(), res.LastRow))})
}

func (r *rig) startUplink() {
	r.t.Helper()
	cmd := exec.Command(binary(r.t), "uplink", "-config", r.cfgPath)
	// As deploy/units/tinyscada-uplink.service runs it.
	cmd.Env = append(os.Environ(), "GOMEMLIMIT=16MiB")
	out := &strings.Builder{}
	cmd.Stderr = writerFunc(func(p []byte) (int, error) { r.mu.Lock(); defer r.mu.Unlock(); return out.Write(p) })
	if err := cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	r.mu.Lock()
	r.uplink, r.out = cmd, out
	r.mu.Unlock()
	r.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if r.t.Failed() {
			r.mu.Lock()
			r.t.Logf("uplink output:\n%s", out.String())
			r.mu.Unlock()
		}
	})
}

func (r *rig) killUplink() {
	r.mu.Lock()
	cmd := r.uplink
	r.mu.Unlock()
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
}

// inFlight waits until the cursor file names a batch planned (and maybe
// sent) but not acknowledged: the moment to kill something mid-batch.
func (r *rig) inFlight() {
	r.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, sent := r.cursor(); sent > 0 {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatal("no batch in flight for 20s")
		}
		time.Sleep(time.Millisecond)
	}
}

// cursor reads the uplink's cursor file.
func (r *rig) cursor() (row int64, sent int) {
	b, err := os.ReadFile(filepath.Join(r.stateDir, "uplink.cursor"))
	if err != nil {
		return 0, 0
	}
	var c struct {
		Row  int64
		Sent []json.RawMessage
	}
	_ = json.Unmarshal(b, &c)
	return c.Row, len(c.Sent)
}

// waitFor waits until cond holds, failing after timeout.
func (r *rig) waitFor(timeout time.Duration, what string, cond func() bool) {
	r.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			r.t.Fatalf("waiting for %s: not after %v", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// drained waits until the cursor holds every row written and the fleet
// has seen the last one.
func (r *rig) drained(timeout time.Duration) {
	r.t.Helper()
	r.waitFor(timeout, fmt.Sprintf("every row up to %d acknowledged and received", r.lastRow), func() bool {
		row, sent := r.cursor()
		return row >= r.lastRow && sent == 0 && r.fleet.maxRow() >= r.lastRow
	})
}

// Everything stored arrives upstream, checked by dedup key, across: the
// upstream refusing connections at start, killed (-9) mid-batch, stopped
// for a while; the uplink killed (-9) mid-batch; and the logger pruning
// rows the uplink had not sent while the upstream was away.
func TestUplinkDeliversAcrossFaults(t *testing.T) {
	t.Parallel()
	testpeer.Need(t, "mosquitto")
	r := newRig(t, 4<<20, "batch_readings = 2000\nbatch_bytes = \"32KiB\"\nwindow = 4\n")
	// The fleet's session first, then the upstream goes away.
	r.upstream.Start()
	r.connectFleet()
	r.upstream.Stop()

	// Refusing at start: the uplink comes up, says why it cannot connect,
	// and waits.
	r.write(500)
	r.startUplink()
	states := testpeer.Sub(t, r.local.Port, "-t", "tinyscada/uplink/state")
	testpeer.Expect(t, states, 15*time.Second, "uplink state naming the refused connection", func(l string) bool {
		return strings.Contains(l, "connection refused")
	})
	r.upstream.Start()
	r.drained(30 * time.Second)
	t.Logf("after refusing at start: cursor %d", r.lastRow)

	// A writer keeps the uplink busy through the faults.
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			r.write(20)
		}
	}()
	busy := func(what string) {
		start := r.fleet.maxRow()
		r.waitFor(30*time.Second, what, func() bool { return r.fleet.maxRow() > start+200 })
	}

	busy("batches flowing")
	r.inFlight()
	r.upstream.Kill()
	time.Sleep(300 * time.Millisecond)
	r.upstream.Start()
	busy("batches flowing after the upstream was killed")

	r.upstream.Stop()
	time.Sleep(2 * time.Second)
	r.upstream.Start()
	busy("batches flowing after the upstream was stopped for 2s")

	r.inFlight()
	r.killUplink()
	r.startUplink()
	busy("batches flowing after the uplink was killed")

	// Pruning while the uplink is behind: the upstream goes away, the
	// database outgrows its cap, the oldest rows go, the ones not sent with
	// a 'dropped' gap record.
	r.upstream.Stop()
	close(stop)
	<-done
	cur, _ := r.cursor()
	var deleted int64
	for i := 0; i < 1000 && deleted <= cur+500; i++ {
		r.write(200)
		r.mu.Lock()
		n, err := r.db.Maintain(context.Background())
		r.mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
		deleted += n
	}
	if deleted <= cur {
		t.Fatalf("the database never pruned beyond the cursor (%d deleted, cursor %d)", deleted, cur)
	}
	t.Logf("pruned %d samples while the uplink stood at row %d of %d", deleted, cur, r.lastRow)
	r.upstream.Start()
	r.write(100)
	r.drained(60 * time.Second)

	rows, dups := r.fleet.check(t, r.lastRow)
	r.fleet.mu.Lock()
	gaps := 0
	for _, b := range r.fleet.batches {
		for _, g := range b.Gaps {
			if g.Kind == "dropped" {
				gaps++
			}
		}
	}
	n := len(r.fleet.batches)
	r.fleet.mu.Unlock()
	if gaps == 0 {
		t.Error("no 'dropped' gap record arrived upstream although rows were pruned before they were sent")
	}
	t.Logf("%d rows written, %d arrived in %d batches (%d duplicate batches, each a whole batch under its key), %d dropped-gap records",
		r.lastRow, rows, n, dups, gaps)
}

// TLS to the upstream with a test CA: the right CA delivers; a wrong CA
// and a wrong server name are refused, the reason in the uplink's log and
// its retained state, and nothing is sent.
func TestUplinkTLS(t *testing.T) {
	t.Parallel()
	testpeer.Need(t, "mosquitto")
	dir := t.TempDir()
	ca := testpeer.NewCA(t, dir, "fleet-ca")
	other := testpeer.NewCA(t, dir, "other-ca")
	cert, key := ca.Issue(t, dir)
	for _, tc := range []struct {
		name, extra, want string
	}{
		{"right CA", fmt.Sprintf("tls = true\nca_file = %q\n", ca.File), ""},
		{"wrong CA", fmt.Sprintf("tls = true\nca_file = %q\n", other.File), "certificate signed by unknown authority"},
		{"wrong server name", fmt.Sprintf("tls = true\nca_file = %q\nserver_name = \"fleet.example\"\n", ca.File), "not fleet.example"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := newRig(t, 64<<20, tc.extra)
			r.upstream = testpeer.NewBroker(t, r.upstream.Port, fmt.Sprintf("listener %d 127.0.0.1\ncafile %s\ncertfile %s\nkeyfile %s\nallow_anonymous true\npersistence false\n",
				r.upstream.Port, ca.File, cert, key))
			r.upstream.Start()
			r.write(50)
			states := testpeer.Sub(t, r.local.Port, "-t", "tinyscada/uplink/state")
			r.startUplink()
			if tc.want == "" {
				testpeer.Expect(t, states, 15*time.Second, "connected over TLS", func(l string) bool { return strings.Contains(l, `"upstream":"connected"`) })
				r.waitFor(15*time.Second, "the cursor at the last row", func() bool { row, _ := r.cursor(); return row >= r.lastRow })
				return
			}
			l := testpeer.Expect(t, states, 15*time.Second, "the refusal in the state", func(l string) bool { return strings.Contains(l, tc.want) })
			t.Logf("state: %s", l)
			if row, _ := r.cursor(); row != 0 {
				t.Errorf("cursor moved to %d without a verified upstream", row)
			}
			// The log line follows the state by a moment.
			if !testpeer.Until(5*time.Second, func() bool { r.mu.Lock(); defer r.mu.Unlock(); return strings.Contains(r.out.String(), tc.want) }) {
				t.Errorf("the uplink's log does not name %q", tc.want)
			}
		})
	}
}

// A backlog of 1,000,000 readings (100,000 poll rounds of 10 points)
// drains once the upstream comes back. Slow on a small machine: it runs
// with TINYSCADA_UPLINK_BACKLOG=1 (CI sets it). With -v it prints the
// figures of docs/uplink.md: drain rate, bytes on the wire and on disk per
// reading, the uplink's CPU time per reading and peak RSS.
func TestUplinkBacklog(t *testing.T) {
	if os.Getenv("TINYSCADA_UPLINK_BACKLOG") != "1" {
		t.Skip("set TINYSCADA_UPLINK_BACKLOG=1 to drain a backlog of 1,000,000 readings")
	}
	testpeer.Need(t, "mosquitto")
	for _, gz := range []bool{false, true} {
		t.Run(fmt.Sprintf("gzip=%v", gz), func(t *testing.T) {
			r := newRig(t, 1<<30, fmt.Sprintf("gzip = %v\nbatch_readings = 5000\n", gz))
			r.upstream.Start()
			r.connectFleet()
			r.upstream.Stop()
			for i := 0; i < 100; i++ {
				r.write(1000)
			}
			readings := r.lastRow * 10
			z, err := r.db.Size(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			r.startUplink()
			r.waitFor(30*time.Second, "uplink ready", func() bool {
				_, err := os.Stat(filepath.Join(r.stateDir, "uplink.cursor"))
				return err == nil
			})
			start := time.Now()
			r.upstream.Start()
			r.drained(10 * time.Minute)
			el := time.Since(start)
			r.mu.Lock()
			pid := r.uplink.Process.Pid
			r.mu.Unlock()
			cpu, rss := procStats(t, pid)
			rows, dups := r.fleet.check(t, r.lastRow)
			r.fleet.mu.Lock()
			wire := r.fleet.wire
			r.fleet.mu.Unlock()
			t.Logf("gzip=%v: %d readings (%d rows, %d duplicate batches) drained in %v: %.0f readings/s; wire %.2f B/reading, disk %.2f B/reading; uplink CPU %.2f µs/reading (whole process life), peak RSS %d KiB",
				gz, readings, rows, dups, el.Round(time.Millisecond), float64(readings)/el.Seconds(),
				float64(wire)/float64(readings), float64(z.Used)/float64(readings), cpu.Seconds()*1e6/float64(readings), rss)
		})
	}
}

// procStats returns the CPU time (user+system) and peak RSS (KiB) of pid.
func procStats(t *testing.T, pid int) (time.Duration, int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	cpu := time.Duration(ut+st) * time.Second / 100 // USER_HZ
	s, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	var rss int64
	for _, l := range strings.Split(string(s), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			rss, _ = strconv.ParseInt(strings.Fields(v)[0], 10, 64)
		}
	}
	return cpu, rss
}

// The bandwidth cap spaces the batches out: what arrives upstream over the
// drain of a backlog is at most the cap per second, plus one batch (the
// first goes at once). A slow machine only makes the drain longer, so the
// bound cannot fail for load; without the cap this backlog (about 18 KB)
// drains in about 2.2 s here, and the bound for that is 13 KB.
func TestUplinkBandwidthCap(t *testing.T) {
	t.Parallel()
	testpeer.Need(t, "mosquitto")
	const capBytes = 4 << 10
	r := newRig(t, 4<<20, "batch_bytes = \"4KiB\"\nwindow = 4\nbandwidth = \"4KiB\"\n")
	r.upstream.Start()
	r.connectFleet()
	r.write(600)
	start := time.Now()
	r.startUplink()
	r.drained(time.Minute)
	took := time.Since(start)
	r.fleet.mu.Lock()
	wire := r.fleet.wire
	r.fleet.mu.Unlock()
	if limit := int64(took.Seconds()*capBytes) + 4<<10; wire > limit {
		t.Errorf("%d bytes upstream in %v: more than the cap of %d bytes/s allows (%d)", wire, took.Round(time.Millisecond), capBytes, limit)
	}
	t.Logf("%d bytes upstream in %v under a cap of %d bytes/s", wire, took.Round(time.Millisecond), capBytes)
	r.fleet.check(t, r.lastRow)
}
