package poller

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
	"github.com/tinyscada/tinyscada/services/simulate"
	"github.com/tinyscada/tinyscada/shared/bus"
)

// pointsBody is a device of n points (cycling through u16, s16 ×0.1, u32,
// f32, f64) on consecutive holding registers, on port "sim".
func pointsBody(name string, unit, n int, interval string) (string, int) {
	var b strings.Builder
	fmt.Fprintf(&b, "[[poller.device]]\nname = %q\nport = \"sim\"\nunit = %d\ninterval = %q\n", name, unit, interval)
	addr := 0
	for i := range n {
		typ, scale := []string{"u16", "s16", "u32", "f32", "f64"}[i%5], "1.0"
		if typ == "s16" {
			scale = "0.1"
		}
		fmt.Fprintf(&b, "[[poller.device.point]]\nname = \"p%d\"\ntable = \"holding\"\naddress = %d\ntype = %q\nscale = %s\n", i, addr, typ, scale)
		addr += map[string]int{"u16": 1, "s16": 1, "u32": 2, "f32": 2, "f64": 4}[typ]
	}
	return b.String(), addr
}

// BenchmarkRound measures the poller's own work per reading: decoding the
// reply of one request carrying 20 points, encoding the round's data
// message into the outbox, keeping the values for the retained topics, and
// the acknowledgement that removes it.
//
//	go test ./services/poller -run XXX -bench Round -benchmem
func BenchmarkRound(b *testing.B) {
	const points = 20
	dev, regs := pointsBody("d", 1, points, "1s")
	cfg := testConfig(b, b.TempDir(), "[[poller.port]]\nname = \"sim\"\ndevice = \"/dev/null\"\n"+dev)
	p, err := New(cfg, Options{})
	if err != nil {
		b.Fatal(err)
	}
	d := p.devices[0]
	if len(d.plan.Requests) != 1 {
		b.Fatalf("%d requests", len(d.plan.Requests))
	}
	r := &d.plan.Requests[0]
	data := make([]byte, 2*regs)
	for i := range regs {
		binary.BigEndian.PutUint16(data[2*i:], uint16(1000+37*i))
	}
	var scratch [125]uint16
	stamp := p.clock.Now()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if !p.out.Reserve() {
			b.Fatal("outbox full")
		}
		d.text = d.text[:0]
		d.decode(r, data, scratch[:])
		p.publishRound(d, stamp)
		p.out.Ack(uint64(i + 1))
	}
	b.StopTimer()
	perReading := float64(b.Elapsed().Nanoseconds()) / float64(b.N) / points
	b.ReportMetric(perReading, "ns/reading")
}

// simHostEnv makes the test binary a simulator host for TestPollerRSS:
// ports × units of 20 registers, and an acknowledger on the broker.
const simHostEnv = "TINYSCADA_TEST_SIMHOST"

func TestMain(m *testing.M) {
	if spec := os.Getenv(simHostEnv); spec != "" {
		os.Exit(simHost(spec))
	}
	// Most tests wait for simulators, brokers and timers: more of them at once.
	os.Exit(testpeer.Main(m, 8))
}

// simHost runs "dir ports units brokerport": simulators linked at
// dir/simN, and an acknowledger, until stdin closes.
func simHost(spec string) int {
	f := strings.Fields(spec)
	dir := f[0]
	ports, _ := strconv.Atoi(f[1])
	units, _ := strconv.Atoi(f[2])
	brokerPort, _ := strconv.Atoi(f[3])
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mp strings.Builder
	mp.WriteString("baud = 115200\n")
	for u := 1; u <= units; u++ {
		fmt.Fprintf(&mp, "[[unit]]\nid = %d\n", u)
		for a := 0; a < 40; a++ {
			fmt.Fprintf(&mp, "[[unit.register]]\ntable = \"holding\"\naddress = %d\ntype = \"u16\"\ngen = \"counter\"\n", a)
		}
	}
	m, err := simulate.ParseMap([]byte(mp.String()), "rss map")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for i := range ports {
		if _, err := simulate.Start(ctx, m, filepath.Join(dir, fmt.Sprintf("sim%d", i)), nil); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	c, err := bus.Dial(ctx, bus.Options{Address: fmt.Sprintf("127.0.0.1:%d", brokerPort), ClientID: "rss-acker", CleanSession: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	c.Subscribe("tinyscada/data/#", 1, func(_ string, payload []byte) {
		var d dataMsg
		if json.Unmarshal(payload, &d) == nil {
			c.Publish(ctx, bus.Message{Topic: "tinyscada/ack/poller", QoS: 1, Payload: fmt.Appendf(nil, `{"run":%q,"seq":%d}`, d.Run, d.Seq)})
		}
	})
	fmt.Println("ready")
	bufio.NewReader(os.Stdin).ReadString('\n')
	return 0
}

func vmRSS() int64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb
		}
	}
	return 0
}

// TestPollerRSS measures the resident memory of a process polling 50
// devices × 20 points every second (5 ports × 10 units, simulators and
// acknowledger in another process, a real broker). It is a measurement,
// not a check: it runs only with TINYSCADA_MEASURE_RSS=1 and logs.
//
//	TINYSCADA_MEASURE_RSS=1 go test ./services/poller -run PollerRSS -v
func TestPollerRSS(t *testing.T) {
	if os.Getenv("TINYSCADA_MEASURE_RSS") == "" {
		t.Skip("a measurement: set TINYSCADA_MEASURE_RSS=1")
	}
	const ports, units, seconds = 5, 10, 20
	port := testpeer.FreePort(t)
	testpeer.Mosquitto(t, port)
	dir := t.TempDir()
	host := exec.Command(os.Args[0])
	host.Env = append(os.Environ(), fmt.Sprintf("%s=%s %d %d %d", simHostEnv, dir, ports, units, port))
	stdin, _ := host.StdinPipe()
	stdout, _ := host.StdoutPipe()
	host.Stderr = os.Stderr
	if err := host.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); host.Wait() }()
	if l, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || l != "ready\n" {
		t.Fatalf("sim host: %q %v", l, err)
	}

	var body strings.Builder
	for i := range ports {
		fmt.Fprintf(&body, "[[poller.port]]\nname = \"sim%d\"\ndevice = \"sim%d\"\nbaud = 115200\ntimeout = \"200ms\"\n", i, i)
	}
	for i := range ports {
		for u := 1; u <= units; u++ {
			dev, _ := pointsBody(fmt.Sprintf("d%d_%d", i, u), u, 20, "1s")
			body.WriteString(strings.Replace(dev, `port = "sim"`, fmt.Sprintf("port = \"sim%d\"", i), 1))
		}
	}
	// u32, f32 and f64 points read counters too: any value decodes.
	cfg := testConfig(t, dir, body.String())
	before := vmRSS()
	c := dial(t, port, "tinyscada-poller")
	p := startPoller(t, cfg, c)
	c.Subscribe("tinyscada/ack/poller", 1, func(_ string, b []byte) { p.HandleAck(b) })

	var peak int64
	start := time.Now()
	rounds0 := uint64(0)
	for time.Since(start) < seconds*time.Second {
		time.Sleep(time.Second)
		peak = max(peak, vmRSS())
	}
	var rounds uint64
	for _, d := range p.devices {
		rounds += d.rounds.Load()
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s := p.Stats()
	t.Logf("%d devices × 20 points every 1s for %ds: %d rounds (%.1f/s), online %d, outbox %d, skipped %d",
		ports*units, seconds, rounds-rounds0, float64(rounds)/time.Since(start).Seconds(), s.DevicesOnline, s.Outbox.Depth, s.Skipped)
	t.Logf("VmRSS: %d kB before the poller started, peak %d kB, now %d kB; Go heap in use %d kB, sys %d kB, goroutines %d",
		before, peak, vmRSS(), ms.HeapInuse>>10, ms.Sys>>10, runtime.NumGoroutine())
}
