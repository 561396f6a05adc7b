package main

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"os/exec"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/services/poller"
	"github.com/tinyscada/tinyscada/services/simulate"
	"github.com/tinyscada/tinyscada/shared/config"
)

// The field workload's configuration and map load with the project's own
// strict decoders, describe the same registers, and the poller's plan of
// it parses to one request per device.
func TestFieldWorkload(t *testing.T) {
	dir := t.TempDir()
	s, err := prepare("field", dir, 41883)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(s.Config)
	if err != nil {
		t.Fatalf("the field configuration does not load: %v", err)
	}
	if cfg.Bus.Address != "127.0.0.1:41883" || !reflect.DeepEqual(cfg.Broker.Listen, []string{"127.0.0.1:41883"}) {
		t.Errorf("bus %q, listen %q: want the port given", cfg.Bus.Address, cfg.Broker.Listen)
	}
	if s.DB != cfg.Logger.Path(cfg.StateDir) {
		t.Errorf("bench reads %s, the logger writes %s", s.DB, cfg.Logger.Path(cfg.StateDir))
	}
	if !reflect.DeepEqual(cfg.Run.Roles, summedRoles) {
		t.Errorf("roles %q, want %q", cfg.Run.Roles, summedRoles)
	}
	if len(cfg.Poller.Port) != 1 {
		t.Fatalf("%d ports, want 1", len(cfg.Poller.Port))
	}
	port := cfg.Poller.Port[0]
	if port.Simulate || port.Path(cfg.StateDir) != s.SimLink || port.Baud != fieldBaud {
		t.Errorf("port %+v: want %s at %d baud, not simulated by run", port, s.SimLink, fieldBaud)
	}
	m, err := simulate.LoadMap(s.SimMap)
	if err != nil {
		t.Fatalf("the field map does not load: %v", err)
	}
	if m.Baud != fieldBaud || !m.ByteTiming {
		t.Errorf("map baud %d byte timing %v, want %d with byte timing", m.Baud, m.ByteTiming, fieldBaud)
	}
	served := map[string]bool{}
	for _, u := range m.Units {
		for _, p := range u.Points {
			served[fmt.Sprintf("%d/%s/%d/%s", u.ID, p.Table, p.Address, p.Layout.Type)] = true
		}
	}
	if len(cfg.Poller.Device) != fieldUnits || len(served) != fieldUnits*fieldRegisters {
		t.Fatalf("%d devices, %d served registers: want %d and %d", len(cfg.Poller.Device), len(served), fieldUnits, fieldUnits*fieldRegisters)
	}
	points := 0
	for _, d := range cfg.Poller.Device {
		for _, p := range d.Point {
			points++
			key := fmt.Sprintf("%d/%s/%d/%s", d.Unit, p.Table, p.Address, p.Type)
			if !served[key] {
				t.Errorf("device %s point %s (%s) is not in the simulator's map", d.Name, p.Name, key)
			}
		}
	}
	if points != fieldUnits*fieldRegisters {
		t.Errorf("%d points, want %d (1000 readings/s at 1s)", points, fieldUnits*fieldRegisters)
	}

	plan := planOf(t, cfg)
	if len(plan) != fieldUnits {
		t.Fatalf("plan of %d devices, want %d", len(plan), fieldUnits)
	}
	for dev, n := range plan {
		if n != 1 {
			t.Errorf("%s: %d requests per round, want 1 (20 contiguous registers)", dev, n)
		}
	}
}

// The demo workload is the built-in demo but for where it keeps its state
// and which port its broker takes.
func TestDemoWorkload(t *testing.T) {
	s, err := prepare("demo", t.TempDir(), 41884)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(s.Config)
	if err != nil {
		t.Fatalf("the demo configuration does not load: %v", err)
	}
	demo, err := config.Load("")
	if err != nil {
		t.Fatal(err)
	}
	demo.StateDir, demo.Bus.Address, demo.Broker.Listen = cfg.StateDir, cfg.Bus.Address, cfg.Broker.Listen
	if !reflect.DeepEqual(cfg, demo) {
		t.Errorf("the demo workload differs from the demo beyond state_dir and ports:\n got %+v\nwant %+v", cfg, demo)
	}
	if s.DB != cfg.Logger.Path(cfg.StateDir) || s.SimMap != "" {
		t.Errorf("setup %+v: want the logger's database and no simulator of the bench's own", s)
	}
	if got, want := planOf(t, cfg), map[string]int{"meter": 3, "climate": 4}; !reflect.DeepEqual(got, want) {
		t.Errorf("demo plan %v, want %v", got, want)
	}
	if _, err := prepare("nonesuch", t.TempDir(), 1); err == nil || !strings.Contains(err.Error(), "nonesuch") {
		t.Errorf("unknown workload: error %v, want one naming it", err)
	}
}

// planOf parses the poller's own plan output for cfg.
func planOf(t *testing.T, cfg *config.Config) map[string]int {
	t.Helper()
	pl, err := poller.MakePlan(&cfg.Poller, cfg.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := pl.Write(&b); err != nil {
		t.Fatal(err)
	}
	plan, err := parsePlan(b.String())
	if err != nil {
		t.Fatalf("%v in:\n%s", err, b.String())
	}
	return plan
}

func TestParsePlanRejectsOtherText(t *testing.T) {
	if _, err := parsePlan("port sim: /dev/x\ntotal: 1 port\n"); err == nil {
		t.Error("a plan without device lines parsed")
	}
}

func TestParseStat(t *testing.T) {
	// A command name with spaces and a ')' must not shift the fields.
	line := "4242 (a b) c) S 17 4242 4242 0 -1 4194560 100 0 0 0 1234 567 0 0 20 0 3 0 1000 123456 789 18446744073709551615\n"
	ppid, ticks, err := parseStat([]byte(line))
	if err != nil || ppid != 17 || ticks != 1234+567 {
		t.Errorf("parseStat = %d, %d, %v; want 17, 1801, nil", ppid, ticks, err)
	}
	for _, bad := range []string{"4242 no parens S 1", "1 (x) S 1 2 3", "1 (x) S z 1 1 0 -1 0 0 0 0 0 1 1"} {
		if _, _, err := parseStat([]byte(bad)); err == nil {
			t.Errorf("parseStat(%q) gave no error", bad)
		}
	}
	if !isZombie([]byte("5 (a) b) Z 1 5")) || isZombie([]byte(line)) {
		t.Error("isZombie is wrong on a Z or an S process")
	}
}

// The /proc readers on this very process and on a child.
func TestProcOfThisProcess(t *testing.T) {
	pid := os.Getpid()
	ppid, _, err := readStat("/proc", pid)
	if err != nil || ppid != os.Getppid() {
		t.Fatalf("readStat(self) = ppid %d, %v; want %d", ppid, err, os.Getppid())
	}
	pss, err := readPSS("/proc", pid)
	if err != nil || pss == 0 {
		t.Errorf("readPSS(self) = %d kB, %v; want > 0", pss, err)
	}
	f, err := os.CreateTemp(t.TempDir(), "w")
	if err != nil {
		t.Fatal(err)
	}
	c0, err := readCounters("/proc", pid)
	if err != nil {
		t.Fatal(err)
	}
	// Written and synced, the bytes reach the storage layer: write_bytes
	// must count them (unless the temporary directory is a tmpfs).
	if _, err := f.Write(make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	c1, err := readCounters("/proc", pid)
	if err != nil {
		t.Fatal(err)
	}
	if c1.Voluntary < c0.Voluntary || c1.CPUTicks < c0.CPUTicks || c1.WriteBytes < c0.WriteBytes {
		t.Errorf("counters went back: %+v then %+v", c0, c1)
	}
	if !onTmpfs(t.TempDir()) && c1.WriteBytes-c0.WriteBytes < 1<<20 {
		t.Errorf("write_bytes grew by %d after writing and syncing 1 MiB", c1.WriteBytes-c0.WriteBytes)
	}

	child := exec.Command("/bin/sleep", "30")
	if err := child.Start(); err != nil {
		t.Skip("no /bin/sleep:", err)
	}
	defer func() { child.Process.Kill(); child.Wait() }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		roles, _, err := children("/proc", pid, "/bin/sleep")
		if err != nil {
			t.Fatal(err)
		}
		if roles["30"] == child.Process.Pid {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("children = %v, want 30:%d", roles, child.Process.Pid)
		}
		time.Sleep(10 * time.Millisecond) // until the child has exec'd
	}
}

func onTmpfs(dir string) bool {
	out, err := exec.Command("stat", "-f", "-c", "%T", dir).Output()
	return err != nil || strings.TrimSpace(string(out)) == "tmpfs"
}

func TestRoleOf(t *testing.T) {
	for _, c := range []struct{ cmdline, exe, want string }{
		{"/x/tinyscada\x00poller\x00-config\x00/t.toml\x00", "/x/tinyscada", "poller"},
		{"/x/tinyscada\x00poller\x00", "/y/tinyscada", ""},
		{"/x/tinyscada\x00", "/x/tinyscada", ""},
		{"", "/x/tinyscada", ""},
	} {
		if got := roleOf([]byte(c.cmdline), c.exe); got != c.want {
			t.Errorf("roleOf(%q, %q) = %q, want %q", c.cmdline, c.exe, got, c.want)
		}
	}
}

// The report divides sums by sums, totals only the four roles, and takes
// the mean of the rounds' PSS.
func TestSummarize(t *testing.T) {
	mk := func(label string, round int, readings, tx int64, cpu float64, pss float64) *runResult {
		r := &runResult{Label: label, Round: round, WindowS: 10, Readings: readings, Transactions: tx, Roles: map[string]*roleRun{}}
		for _, role := range append(append([]string{}, summedRoles...), otherRoles...) {
			r.Roles[role] = &roleRun{CPUus: cpu, WriteBytes: uint64(readings), Voluntary: uint64(tx), PSSkB: pss, PSSMaxkB: uint64(pss) + 1024}
		}
		return r
	}
	bins := binFlag{labels: []string{"A", "B"}, paths: []string{"/a", "/b"}}
	runs := []*runResult{mk("A", 1, 1000, 50, 1000, 1024), mk("B", 1, 1000, -1, 2000, 2048), mk("B", 2, 3000, 150, 2000, 4096), mk("A", 2, 1000, 50, 3000, 3072)}
	rep := summarize("w", 10*time.Second, 5*time.Second, 2, bins, runs)
	a, b := rep.Results[0], rep.Results[1]
	near := func(what string, got, want float64) {
		t.Helper()
		if math.Abs(got-want) > 1e-9 {
			t.Errorf("%s = %g, want %g", what, got, want)
		}
	}
	near("A readings/s", a.ReadingsPerS, 100)
	near("A poller CPU µs/reading", a.Roles["poller"].CPUusPerReading, 2)
	near("A total CPU µs/reading", a.Roles["total"].CPUusPerReading, 8)
	near("A simulator CPU µs/reading", a.Roles["simulator"].CPUusPerReading, 2)
	near("A broker PSS MB", a.Roles["broker"].PSSMB, 2)
	near("A total PSS MB", a.Roles["total"].PSSMB, 8)
	near("A broker PSS max MB", a.Roles["broker"].PSSMaxMB, 4)
	near("A logger written B/reading", a.Roles["logger"].WriteBytesPerReading, 1)
	near("A total written B/reading", a.Roles["total"].WriteBytesPerReading, 4)
	near("A transactions/s", *a.TransactionsPerS, 5)
	near("A poller wake-ups/transaction", *a.Roles["poller"].WakeupsPerTx, 1)
	near("B readings/s", b.ReadingsPerS, 200)
	near("B logger CPU µs/reading", b.Roles["logger"].CPUusPerReading, 1)
	if b.TransactionsPerS != nil || b.Roles["poller"].WakeupsPerTx != nil {
		t.Error("B has a round without transactions: they must be unknown, not a partial sum")
	}
	var out bytes.Buffer
	if err := rep.writeTable(&out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"readings/s stored", "B vs A", "+100.0%", "wake-ups/transaction"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
}
