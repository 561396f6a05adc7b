package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
	"github.com/tinyscada/tinyscada/services/poller"
	"github.com/tinyscada/tinyscada/services/simulate"
	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/sdnotify"
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

// cpuMicros takes the threads' nanoseconds while they agree with the
// ticks, and the ticks when a thread's time went missing or there is no
// schedstat.
func TestCPUMicros(t *testing.T) {
	a := counters{CPUTicks: 100, CPUns: 1_003_000_000}
	for _, c := range []struct {
		b       counters
		us      float64
		precise bool
	}{
		{counters{CPUTicks: 150, CPUns: 1_504_321_000}, 501_321, true},
		{counters{CPUTicks: 151, CPUns: 1_504_321_000}, 501_321, true},  // within two ticks
		{counters{CPUTicks: 150, CPUns: 1_203_000_000}, 500_000, false}, // a thread that ran 0.3 s exited
		{counters{CPUTicks: 150, CPUns: 900_000_000}, 500_000, false},   // fewer ns than before
		{counters{CPUTicks: 150}, 500_000, false},                       // no schedstat
	} {
		us, precise := cpuMicros(a, c.b)
		if us != c.us || precise != c.precise {
			t.Errorf("cpuMicros(%+v, %+v) = %v, %v; want %v, %v", a, c.b, us, precise, c.us, c.precise)
		}
	}
	if us, precise := cpuMicros(counters{CPUTicks: 5}, counters{CPUTicks: 9, CPUns: 40_000_000}); precise || us != 40_000 {
		t.Errorf("without a first schedstat reading: %v, %v; want the ticks", us, precise)
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
	if err != nil || pss.Total == 0 || pss.Anon == 0 || pss.Anon > pss.Total {
		t.Errorf("readPSS(self) = %+v kB, %v; want 0 < Anon <= Total", pss, err)
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
	// The threads' run times: to the nanosecond, and in step with the
	// ticks over some work.
	if c0.CPUns == 0 {
		t.Fatalf("no schedstat run time read: %+v", c0)
	}
	for until := time.Now().Add(300 * time.Millisecond); time.Now().Before(until); {
	}
	c2, err := readCounters("/proc", pid)
	if err != nil {
		t.Fatal(err)
	}
	if us, precise := cpuMicros(c1, c2); !precise || us < 1e5 {
		t.Errorf("cpuMicros over a 300 ms busy loop = %.0f µs, precise %v (ticks %d→%d, ns %d→%d)", us, precise, c1.CPUTicks, c2.CPUTicks, c1.CPUns, c2.CPUns)
	}

	// The pages in memory, each once: as many as smaps_rollup's Rss
	// (within what the process maps meanwhile), with CAP_SYS_ADMIN (root);
	// without it the kernel hides the frame numbers, which must say so.
	frames := map[uint64]struct{}{}
	if err := addFrames("/proc", pid, frames); !sdnotify.CanNotifyPID() {
		if !errors.Is(err, errFramesHidden) {
			t.Errorf("addFrames(self) without CAP_SYS_ADMIN = %v, want errFramesHidden", err)
		}
	} else if err != nil {
		t.Errorf("addFrames(self) with CAP_SYS_ADMIN: %v", err)
	} else {
		rollup, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
		if err != nil {
			t.Fatal(err)
		}
		rss, err := keyValue(rollup, "Rss")
		if err != nil {
			t.Fatal(err)
		}
		kB := uint64(len(frames)) * uint64(os.Getpagesize()) / 1024
		if kB < rss/2 || kB > rss*2 {
			t.Errorf("addFrames(self) found %d kB in memory; smaps_rollup says Rss %d kB", kB, rss)
		}
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

// A kernel whose smaps_rollup has no Pss_Anon line (before 5.3) gets
// an error that names the file, not a PSS whose anonymous part reads 0.
func TestReadPSSNoAnon(t *testing.T) {
	proc := t.TempDir()
	dir := filepath.Join(proc, "42")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	rollup := "00400000-7ffd000 ---p 00000000 00:00 0 [rollup]\nRss:  2048 kB\nPss:  1024 kB\n"
	if err := os.WriteFile(filepath.Join(dir, "smaps_rollup"), []byte(rollup), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := readPSS(proc, 42)
	if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "smaps_rollup")) || !strings.Contains(err.Error(), "Pss_Anon") {
		t.Fatalf("readPSS without Pss_Anon: %v; want an error naming the file and the line", err)
	}
	rollup += "Pss_Anon:  512 kB\nPss_File:  512 kB\n"
	if err := os.WriteFile(filepath.Join(dir, "smaps_rollup"), []byte(rollup), 0o644); err != nil {
		t.Fatal(err)
	}
	if p, err := readPSS(proc, 42); err != nil || p != (pss{Total: 1024, Anon: 512}) {
		t.Fatalf("readPSS = %+v, %v; want {1024 512}", p, err)
	}
}

// addFrames counts a page once however many processes map it, and only
// pages in memory; a reservation without access is not read; hidden
// frame numbers are an error.
func TestAddFrames(t *testing.T) {
	page := uint64(os.Getpagesize())
	proc := t.TempDir()
	// mkproc writes a process whose pagemap covers pages 0 to pages-1,
	// with entries at the given pages (0 where none is given).
	mkproc := func(pid int, pages uint64, maps string, entries map[uint64]uint64) {
		t.Helper()
		dir := filepath.Join(proc, strconv.Itoa(pid))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "maps"), []byte(maps), 0o644); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 8*pages)
		for p, e := range entries {
			binary.LittleEndian.PutUint64(b[8*p:], e)
		}
		if err := os.WriteFile(filepath.Join(dir, "pagemap"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	at := func(p uint64) string { return strconv.FormatUint(p*page, 16) }
	// pid 1: text at pages 16–19 (frames 100–102 in memory, page 19 not),
	// a reservation at 20–23 whose entries would say frame 900, heap at
	// 32–33 (frame 200). pid 2 maps the same text (frames 100, 101) and
	// its own heap page (frame 300), one page swapped out (bit 62 only).
	mkproc(1, 64, at(16)+"-"+at(20)+" r-xp 00000000 08:01 42 /usr/local/bin/tinyscada\n"+
		at(20)+"-"+at(24)+" ---p 00000000 00:00 0 \n"+
		at(32)+"-"+at(34)+" rw-p 00000000 00:00 0 \n",
		map[uint64]uint64{16: pagePresent | 100, 17: pagePresent | 101, 18: pagePresent | 102,
			20: pagePresent | 900, 21: pagePresent | 900, 32: pagePresent | 200})
	mkproc(2, 64, at(16)+"-"+at(18)+" r-xp 00000000 08:01 42 /usr/local/bin/tinyscada\n"+
		at(40)+"-"+at(42)+" rw-p 00000000 00:00 0 [heap]\n",
		map[uint64]uint64{16: pagePresent | 100, 17: pagePresent | 101, 40: pagePresent | 300, 41: 1<<62 | 7})
	frames := map[uint64]struct{}{}
	for _, pid := range []int{1, 2} {
		if err := addFrames(proc, pid, frames); err != nil {
			t.Fatal(err)
		}
	}
	var got []uint64
	for f := range frames {
		got = append(got, f)
	}
	slices.Sort(got)
	if want := []uint64{100, 101, 102, 200, 300}; !slices.Equal(got, want) {
		t.Errorf("frames of pids 1 and 2 = %v, want %v", got, want)
	}
	// A page in memory with frame 0: the kernel hides the frames.
	mkproc(3, 64, at(16)+"-"+at(17)+" r--p 00000000 00:00 0 \n", map[uint64]uint64{16: pagePresent})
	if err := addFrames(proc, 3, map[uint64]struct{}{}); !errors.Is(err, errFramesHidden) {
		t.Errorf("addFrames with hidden frames = %v, want errFramesHidden", err)
	}
	// A pagemap shorter than the maps say: an error naming the file.
	mkproc(4, 32, at(16)+"-"+at(64)+" rw-p 00000000 00:00 0 \n", map[uint64]uint64{16: pagePresent | 5})
	if err := addFrames(proc, 4, map[uint64]struct{}{}); err == nil || !strings.Contains(err.Error(), filepath.Join(proc, "4", "pagemap")) {
		t.Errorf("addFrames with a short pagemap = %v, want an error naming it", err)
	}
}

// The report divides sums by sums, totals only the four roles, and takes
// the mean of the rounds' PSS.
func TestSummarize(t *testing.T) {
	mk := func(label string, round int, readings, tx int64, cpu float64, pss float64) *runResult {
		r := &runResult{Label: label, Round: round, WindowS: 10, Readings: readings, Transactions: tx, Roles: map[string]*roleRun{}}
		for _, role := range append(append([]string{}, summedRoles...), otherRoles...) {
			r.Roles[role] = &roleRun{CPUus: cpu, WriteBytes: uint64(readings), Voluntary: uint64(tx), PSSkB: pss, PSSMaxkB: uint64(pss) + 1024, PSSAnonkB: pss / 2}
		}
		return r
	}
	bins := binFlag{labels: []string{"A", "B"}, paths: []string{"/a", "/b"}}
	runs := []*runResult{mk("A", 1, 1000, 50, 1000, 1024), mk("B", 1, 1000, -1, 2000, 2048), mk("B", 2, 3000, 150, 2000, 4096), mk("A", 2, 1000, 50, 3000, 3072)}
	// The roles' memory, each page once: A's two rounds have it, one of
	// B's does not.
	runs[0].ResidentkB, runs[3].ResidentkB, runs[2].ResidentkB = 4096, 6144, 8192
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
	near("A broker PSS anon MB", a.Roles["broker"].PSSAnonMB, 1)
	near("A total PSS anon MB", a.Roles["total"].PSSAnonMB, 4)
	near("A logger written B/reading", a.Roles["logger"].WriteBytesPerReading, 1)
	near("A total written B/reading", a.Roles["total"].WriteBytesPerReading, 4)
	near("A transactions/s", *a.TransactionsPerS, 5)
	near("A poller wake-ups/transaction", *a.Roles["poller"].WakeupsPerTx, 1)
	// CPU s/minute: (1000+3000) µs over 2×10 s of window is 0.012 s a
	// minute for each role, 0.048 for the four.
	near("A poller CPU s/minute", a.Roles["poller"].CPUsPerMinute, 0.012)
	near("A total CPU s/minute", a.Roles["total"].CPUsPerMinute, 0.048)
	near("A simulator CPU s/minute", a.Roles["simulator"].CPUsPerMinute, 0.012)
	near("B readings/s", b.ReadingsPerS, 200)
	near("B logger CPU µs/reading", b.Roles["logger"].CPUusPerReading, 1)
	if b.TransactionsPerS != nil || b.Roles["poller"].WakeupsPerTx != nil {
		t.Error("B has a round without transactions: they must be unknown, not a partial sum")
	}
	if r := a.Roles["total"].ResidentMB; r == nil || *r != 5 {
		t.Errorf("A total resident MB = %v, want 5 (the mean of 4 and 6)", r)
	}
	if r := b.Roles["total"].ResidentMB; r != nil {
		t.Errorf("B total resident MB = %v, want unknown (a round without it)", *r)
	}
	if a.Roles["poller"].ResidentMB != nil {
		t.Error("a role has a resident figure of its own; only the total has one")
	}
	var out bytes.Buffer
	if err := rep.writeTable(&out); err != nil {
		t.Fatal(err)
	}
	rep.Stack = stackDirect
	rep.Machine = &machine{NProc: 2, CPUModel: "Test CPU 9000", Kernel: "6.1.0-test", GoVersion: "go1.99",
		LoadBefore: "0.10 0.20 0.30", LoadAfter: "1.00 2.00 3.00"}
	rep.Results[1].Exec = []string{"/usr/bin/qemu-arm-static"}
	rep.Results[1].Build = "go1.99 linux/arm GOARM=5"
	out.Reset()
	if err := rep.writeTable(&out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"readings/s stored", "B vs A", "+100.0%", "wake-ups/transaction", "PSS anon MB",
		"machine: 2 CPUs, Test CPU 9000, kernel 6.1.0-test, bench built with go1.99; load average 0.10 0.20 0.30 before, 1.00 2.00 3.00 after",
		"(-stack direct)", "B: /b (go1.99 linux/arm GOARM=5) under /usr/bin/qemu-arm-static", "A: /a (unknown)"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
	// One row per role, the total included, after the µs/reading rows.
	var rows []string
	inCPU := false
	for _, l := range strings.Split(out.String(), "\n") {
		f := strings.Fields(l)
		if strings.HasPrefix(l, "CPU s/minute") {
			inCPU, f = true, f[2:]
		} else if inCPU && (len(f) == 0 || !slices.Contains(tableRoles, f[0])) {
			break
		}
		if inCPU {
			rows = append(rows, f[0]+" "+f[1])
		}
	}
	if want := []string{"broker 0.012", "poller 0.012", "logger 0.012", "health 0.012", "total 0.048", "simulator 0.012", "run 0.012"}; !slices.Equal(rows, want) {
		t.Errorf("CPU s/minute rows (role, A) = %q, want %q\n%s", rows, want, out.String())
	}
	// The roles' resident memory: one row, the total's, unknown for B.
	if got := regexp.MustCompile(`(?m)^resident MB, once +total +(\S+) +(\S+) *$`).FindStringSubmatch(out.String()); got == nil || got[1] != "5.00" || got[2] != "-" {
		t.Errorf("resident row = %q, want total 5.00 for A and - for B:\n%s", got, out.String())
	}
	if i, j := strings.Index(out.String(), "CPU µs/reading"), strings.Index(out.String(), "CPU s/minute"); i < 0 || j < i {
		t.Errorf("CPU s/minute does not follow CPU µs/reading:\n%s", out.String())
	}
}

func TestCPUPerMinute(t *testing.T) {
	for _, c := range []struct{ us, secs, want float64 }{
		{1e6, 60, 1},      // a second of CPU in a minute
		{2e5, 60, 0.2},    // issue 13's demo target
		{1e5, 30, 0.2},    // half the window, same rate
		{5e4, 120, 0.025}, // two minutes
		{1e6, 0, 0},       // no window: no rate
	} {
		if got := cpuPerMinute(c.us, c.secs); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("cpuPerMinute(%g µs, %g s) = %g, want %g", c.us, c.secs, got, c.want)
		}
	}
}

// -bin takes LABEL=PATH, then EXEC=WRAPPER (resolved in PATH, words split
// on spaces) and NAME=VALUE settings in any order.
func TestBinFlag(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "ts")
	plain := filepath.Join(dir, "ts-arm5") // not executable: only under a wrapper
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(plain, []byte("\x7fELF"), 0o644); err != nil {
		t.Fatal(err)
	}
	sh, _ := filepath.Abs(testpeer.Need(t, "sh"))
	var f binFlag
	for _, v := range []string{
		"native=" + exe,
		"arm5=" + plain + ",GOGC=50,EXEC=sh -x  -e,GOMAXPROCS=1",
		exe + ",EXEC=" + sh,
	} {
		if err := f.Set(v); err != nil {
			t.Fatalf("Set(%q): %v", v, err)
		}
	}
	if want := []string{"native", "arm5", "ts"}; !slices.Equal(f.labels, want) {
		t.Errorf("labels %q, want %q", f.labels, want)
	}
	if want := []string{exe, plain, exe}; !slices.Equal(f.paths, want) {
		t.Errorf("paths %q, want %q", f.paths, want)
	}
	if want := []string{"", "GOGC=50,GOMAXPROCS=1", ""}; !slices.Equal(f.envs, want) {
		t.Errorf("envs %q, want %q (EXEC is not the environment's)", f.envs, want)
	}
	if f.execs[0] != nil || !slices.Equal(f.execs[1], []string{sh, "-x", "-e"}) || !slices.Equal(f.execs[2], []string{sh}) {
		t.Errorf("execs %q, want none, [%s -x -e], [%s]", f.execs, sh, sh)
	}
	if !f.wrapped() {
		t.Error("wrapped() false with EXEC given")
	}
	for _, c := range []struct{ v, want string }{
		{"x=" + plain, "not an executable file"},
		{"x=" + dir, "not a file"},
		{"x=" + exe + ",EXEC=", "EXEC= wants a command"},
		{"x=" + exe + ",EXEC=fieldbench-no-such-wrapper", "fieldbench-no-such-wrapper"},
		{"x=" + exe + ",EXEC=sh,EXEC=sh", "EXEC given twice"},
		{"x=" + exe + ",GOGC", `"GOGC": want NAME=VALUE`},
		{"x=" + exe + ",=1", `"=1": want NAME=VALUE`},
		{"native=" + exe, `label "native" given twice`},
		{"=" + exe, "want LABEL=PATH"},
	} {
		if err := f.Set(c.v); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Set(%q) = %v, want an error with %q", c.v, err, c.want)
		}
	}
	if len(f.labels) != 3 || len(f.execs) != 3 || len(f.envs) != 3 {
		t.Errorf("a rejected -bin was kept: %+v", f)
	}
}

func TestStackMode(t *testing.T) {
	native := &binFlag{execs: [][]string{nil, nil}}
	mixed := &binFlag{execs: [][]string{nil, {"/usr/bin/qemu-arm-static"}}}
	for _, c := range []struct {
		given string
		bins  *binFlag
		want  string // "" for an error
	}{
		{"", native, stackRun},
		{"", mixed, stackDirect}, // every column started alike
		{stackDirect, native, stackDirect},
		{stackDirect, mixed, stackDirect},
		{stackRun, native, stackRun},
		{stackRun, mixed, ""}, // run cannot re-execute a wrapped build
		{"systemd", native, ""},
	} {
		got, err := stackMode(c.given, c.bins)
		if got != c.want || (err == nil) != (c.want != "") {
			t.Errorf("stackMode(%q, %v) = %q, %v; want %q", c.given, c.bins.execs, got, err, c.want)
		}
	}
}

// The direct stack starts what run starts for the demo (the simulator
// before the poller), as the units' command lines, under the wrapper.
func TestDirectRoles(t *testing.T) {
	s, err := prepare("demo", t.TempDir(), 41885)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(s.Config)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	native := directRoles(cfg, s.Config, "/x/ts", nil, log)
	var names []string
	for _, r := range native {
		names = append(names, r.Name)
	}
	if want := []string{"broker", "logger", "simulate-sim", "poller", "health"}; !slices.Equal(names, want) {
		t.Fatalf("roles %q, want %q", names, want)
	}
	if want := []string{"broker", "-config", s.Config}; !slices.Equal(native[0].Args, want) {
		t.Errorf("broker args %q, want %q (the unit's command line)", native[0].Args, want)
	}
	if a := native[2].Args; len(a) < 5 || a[0] != "simulate" || !slices.Contains(a, "-link") {
		t.Errorf("simulator args %q, want simulate -config … -link …", a)
	}
	wrapped := directRoles(cfg, s.Config, "/x/ts", []string{"/usr/bin/qemu-arm-static", "-cpu", "arm926"}, log)
	for i, r := range wrapped {
		want := append([]string{"-cpu", "arm926", "/x/ts"}, native[i].Args...)
		if !slices.Equal(r.Args, want) || r.Name != native[i].Name || r.Watchdog != native[i].Watchdog {
			t.Errorf("wrapped %s: args %q, want %q", r.Name, r.Args, want)
		}
	}
}

func TestMachine(t *testing.T) {
	proc := t.TempDir()
	write := func(name, body string) {
		t.Helper()
		p := filepath.Join(proc, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("cpuinfo", "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13 64-Core Processor\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 7B13 64-Core Processor\n")
	write("sys/kernel/osrelease", "6.1.0-28-amd64\n")
	write("loadavg", "0.52 0.58 0.59 1/189 12345\n")
	m := readMachine(proc)
	if m.CPUModel != "AMD EPYC 7B13 64-Core Processor" || m.Kernel != "6.1.0-28-amd64" || m.LoadBefore != "0.52 0.58 0.59" {
		t.Errorf("machine %+v", m)
	}
	if m.NProc < 1 || m.GoVersion != runtime.Version() {
		t.Errorf("nproc %d, go %q", m.NProc, m.GoVersion)
	}
	// An ARM board's cpuinfo has no model name.
	arm := "processor\t: 0\nBogoMIPS\t: 38.40\nCPU part\t: 0xd03\n\nHardware\t: BCM2835\n"
	if got := cpuModel([]byte(arm)); got != "BCM2835" {
		t.Errorf("cpuModel(ARM) = %q, want BCM2835", got)
	}
	if got := readLoad(t.TempDir()); got != "" {
		t.Errorf("readLoad without a loadavg = %q", got)
	}
	// The real one, which the bench reads.
	if m := readMachine("/proc"); m.Kernel == "" || m.LoadBefore == "" {
		t.Errorf("readMachine(/proc) = %+v", m)
	}
}

// buildOf reads the build information of a Go binary: this test's.
func TestBuildOf(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	got := buildOf(exe)
	if want := runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH; !strings.HasPrefix(got, want) {
		t.Errorf("buildOf(test binary) = %q, want it to start with %q", got, want)
	}
	sh, err := exec.LookPath("sh")
	if err == nil && buildOf(sh) != "" {
		t.Errorf("buildOf(%s) = %q, want none (not a Go binary)", sh, buildOf(sh))
	}
}

// brokerbench's output layout, as main.go prints it (services/broker/internal/brokerbench);
// the figures are made up for the parser, not measured.
const brokerbenchOut = `1 publisher -> 1 subscriber, QoS 1, 100-byte payloads, 50000 messages per run, closed loop, window 100, 5 rounds
  round 1 tinyscada    13586 msg/s  p50  5.41ms  p99 13.302ms  RSS max  15913 kB  lost 0
  round 1 mosquitto    13781 msg/s  p50 4.896ms  p99 23.165ms  RSS max   8683 kB  lost 0

broker          msg/s        p50        p99  RSS idle kB  RSS load kB     VmHWM kB
tinyscada       13586     5.41ms   13.302ms        10690        15913        15913
mosquitto       13781    4.896ms    987µs         8632         8683         8683
tinyscada/mosquitto: throughput 0.99x, p50 1.10x, p99 0.57x, RSS under load 1.83x (median round of each; RSS the max of all rounds)

tinyscada broker start to READY=1, 20 starts: median 8.63ms, min 6.99ms, max 12.26ms
`

func TestParseReference(t *testing.T) {
	c, err := parseBrokerbench([]byte(brokerbenchOut))
	if err != nil {
		t.Fatal(err)
	}
	want := []brokerFigures{
		{Name: "tinyscada", MsgsPerS: 13586, P50ms: 5.41, P99ms: 13.302, RSSIdlekB: 10690, RSSLoadkB: 15913, VmHWMkB: 15913},
		{Name: "mosquitto", MsgsPerS: 13781, P50ms: 4.896, P99ms: 0.987, RSSIdlekB: 8632, RSSLoadkB: 8683, VmHWMkB: 8683},
	}
	if !reflect.DeepEqual(c.Brokers, want) {
		t.Errorf("brokers\n got %+v\nwant %+v", c.Brokers, want)
	}
	if !strings.HasPrefix(c.Setup, "1 publisher") || !strings.Contains(c.Ratio, "throughput 0.99x") || !strings.Contains(c.Startup, "median 8.63ms") {
		t.Errorf("setup %q, ratio %q, startup %q", c.Setup, c.Ratio, c.Startup)
	}
	if _, err := parseBrokerbench([]byte("brokerbench: tinyscada broker: no READY=1\n")); err == nil {
		t.Error("an output without the summary parsed")
	}
	bad := strings.Replace(brokerbenchOut, "13586     5.41ms", "13586     5.41xx", 1)
	if _, err := parseBrokerbench([]byte(bad)); err == nil || !strings.Contains(err.Error(), "5.41xx") {
		t.Errorf("a bad latency: error %v, want one naming it", err)
	}

	goOut := "goos: linux\ngoarch: amd64\npkg: github.com/tinyscada/tinyscada/services/broker\ncpu: AMD EPYC\n" +
		"BenchmarkPubSubQoS1-2   \t  100000\t     98695 ns/op\t     10132 msgs/s\t      7404 p50-µs\t     27988 p99-µs\nPASS\n"
	bs, err := parseGoBench([]byte(goOut))
	if err != nil {
		t.Fatal(err)
	}
	if len(bs) != 1 || bs[0].Name != "BenchmarkPubSubQoS1-2" || bs[0].Iterations != 100000 ||
		!reflect.DeepEqual(bs[0].Metrics, map[string]float64{"ns/op": 98695, "msgs/s": 10132, "p50-µs": 7404, "p99-µs": 27988}) ||
		!slices.Equal(bs[0].Units, []string{"ns/op", "msgs/s", "p50-µs", "p99-µs"}) {
		t.Errorf("parseGoBench = %+v", bs)
	}
	if _, err := parseGoBench([]byte("PASS\nok\n")); err == nil {
		t.Error("an output without a result line parsed")
	}

	rep := &referenceReport{Module: "/src", Seconds: 41, Brokers: c, InProcess: bs, Errors: []string{"x: boom"}}
	var out bytes.Buffer
	if err := rep.write(&out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"reference benchmarks", "tinyscada  13586   5.410  13.302", "mosquitto  13781   4.896   0.987",
		"throughput 0.99x", "start to READY=1", "BenchmarkPubSubQoS1-2  100000  98695 ns/op  10132 msgs/s", "failed: x: boom"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("reference output lacks %q:\n%s", want, out.String())
		}
	}

	for _, c := range []struct{ gomod, want string }{
		{"module github.com/tinyscada/tinyscada\n\ngo 1.26\n", modulePath},
		{"// x\nmodule \"example.com/m\"\n", "example.com/m"},
		{"modules x\n", ""},
	} {
		if got := goModModule([]byte(c.gomod)); got != c.want {
			t.Errorf("goModModule(%q) = %q, want %q", c.gomod, got, c.want)
		}
	}
}
