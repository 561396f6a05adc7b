package simulate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
	"github.com/tinyscada/tinyscada/shared/modbus"
	"github.com/tinyscada/tinyscada/shared/modbus/value"
	"golang.org/x/sys/unix"
)

// startSim serves m on a new pseudo-terminal and returns the simulator and
// a master on it; both stop at the end of the test.
func startSim(t testing.TB, m *Map, opts modbus.Options) (*Sim, *modbus.Master) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	sim, err := Start(ctx, m, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	port, err := modbus.Open(sim.Path(), modbus.PortConfig{Baud: m.Baud})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		port.Close()
		cancel()
		if err := sim.Wait(); err != nil {
			t.Errorf("simulator: %v", err)
		}
	})
	if opts.Baud == 0 {
		opts.Baud = m.Baud
	}
	return sim, modbus.NewMaster(port, opts)
}

func mustParse(t testing.TB, s string) *Map {
	t.Helper()
	m, err := ParseMap([]byte(s), "test.toml")
	if err != nil {
		t.Fatal(err)
	}
	return m
}

const basicMap = `
baud = 115200
[[unit]]
id = 1
[[unit.register]]
table = "holding"
address = 0
type = "u16"
value = 1234
[[unit.register]]
table = "holding"
address = 1
type = "s16"
value = -2
[[unit.register]]
table = "input"
address = 10
type = "u32"
value = 70000
[[unit.register]]
table = "coil"
address = 3
value = true
[[unit.register]]
table = "discrete"
address = 0
value = true
[[unit.register]]
table = "discrete"
address = 2
value = true

[[unit]]
id = 2
strict = true
[[unit.register]]
table = "holding"
address = 5
type = "u16"
value = 5
`

func TestEveryFunctionCode(t *testing.T) {
	t.Parallel()
	sim, m := startSim(t, mustParse(t, basicMap), modbus.Options{Timeout: 500 * time.Millisecond})
	ctx := context.Background()
	dev := sim.Device

	regs, err := m.ReadHoldingRegisters(ctx, 1, 0, 3)
	if err != nil || !slices.Equal(regs, []uint16{1234, 0xFFFE, 0}) {
		t.Fatalf("fc 3: %v, %v", regs, err)
	}
	regs, err = m.ReadInputRegisters(ctx, 1, 10, 2)
	if err != nil || !slices.Equal(regs, []uint16{1, 70000 - 65536}) {
		t.Fatalf("fc 4: %v, %v", regs, err)
	}
	bits, err := m.ReadCoils(ctx, 1, 0, 5)
	if err != nil || !slices.Equal(bits, []bool{false, false, false, true, false}) {
		t.Fatalf("fc 1: %v, %v", bits, err)
	}
	bits, err = m.ReadDiscreteInputs(ctx, 1, 0, 3)
	if err != nil || !slices.Equal(bits, []bool{true, false, true}) {
		t.Fatalf("fc 2: %v, %v", bits, err)
	}

	if err := m.WriteSingleCoil(ctx, 1, 7, true); err != nil {
		t.Fatalf("fc 5: %v", err)
	}
	if err := m.WriteSingleRegister(ctx, 1, 20, 0xBEEF); err != nil {
		t.Fatalf("fc 6: %v", err)
	}
	coils := []bool{true, false, true, true, false, false, true, true, true}
	if err := m.WriteMultipleCoils(ctx, 1, 100, coils); err != nil {
		t.Fatalf("fc 15: %v", err)
	}
	if err := m.WriteMultipleRegisters(ctx, 1, 30, []uint16{1, 2, 3}); err != nil {
		t.Fatalf("fc 16: %v", err)
	}
	// The writes landed in the device and read back over the line.
	if got, _ := dev.Registers(1, Coils, 7, 1); got[0] != 1 {
		t.Errorf("coil 7 = %v after fc 5", got)
	}
	if got, _ := dev.Registers(1, HoldingRegisters, 20, 1); got[0] != 0xBEEF {
		t.Errorf("holding 20 = %x after fc 6", got)
	}
	if got, err := m.ReadCoils(ctx, 1, 100, 9); err != nil || !slices.Equal(got, coils) {
		t.Errorf("coils 100.. = %v, %v after fc 15", got, err)
	}
	if got, err := m.ReadHoldingRegisters(ctx, 1, 30, 3); err != nil || !slices.Equal(got, []uint16{1, 2, 3}) {
		t.Errorf("holding 30.. = %v, %v after fc 16", got, err)
	}
	for fc, want := range map[byte]uint64{1: 2, 2: 1, 3: 2, 4: 1, 5: 1, 6: 1, 15: 1, 16: 1} {
		if got := dev.Requests(1, fc); got != want {
			t.Errorf("unit 1 fc %d: %d requests counted, want %d", fc, got, want)
		}
	}

	// A strict unit answers unmapped addresses with exception 2.
	var ex *modbus.ExceptionError
	if _, err := m.ReadHoldingRegisters(ctx, 2, 4, 2); !errors.As(err, &ex) || ex.Code != modbus.ExIllegalDataAddress {
		t.Errorf("strict unit, unmapped: %v", err)
	}
	if regs, err := m.ReadHoldingRegisters(ctx, 2, 5, 1); err != nil || regs[0] != 5 {
		t.Errorf("strict unit, mapped: %v, %v", regs, err)
	}
}

func TestValueTypesAndOrders(t *testing.T) {
	t.Parallel()
	type point struct {
		typ    value.Type
		wo, bo value.Order
		val    string
		addr   int
	}
	var points []point
	var b strings.Builder
	b.WriteString("baud = 115200\n[[unit]]\nid = 7\n")
	addr := 0
	vals := map[value.Type]string{
		value.Bool: "true", value.U16: "65000", value.S16: "-1234", value.U32: "4000000000",
		value.S32: "-2000000000", value.U64: "18000000000000000000", value.S64: "-9000000000000000000",
		value.F32: "230.1", value.F64: "-12345.678901234",
	}
	for typ := value.Bool; typ <= value.F64; typ++ {
		for _, wo := range []value.Order{value.BigEndian, value.LittleEndian} {
			for _, bo := range []value.Order{value.BigEndian, value.LittleEndian} {
				p := point{typ, wo, bo, vals[typ], addr}
				points = append(points, p)
				fmt.Fprintf(&b, "[[unit.register]]\ntable = \"holding\"\naddress = %d\ntype = %q\nword_order = %q\nbyte_order = %q\nvalue = %s\n",
					addr, typ, wo, bo, p.val)
				addr += typ.Registers()
			}
		}
	}
	if strings.Contains(b.String(), "value = 18000000000000000000") {
		// TOML integers are signed 64-bit: give the u64 as a float that is exact.
		s := strings.ReplaceAll(b.String(), "value = 18000000000000000000", "value = 1.8e19")
		b.Reset()
		b.WriteString(s)
	}
	_, m := startSim(t, mustParse(t, b.String()), modbus.Options{Timeout: 500 * time.Millisecond})
	regs := make([]uint16, 0, addr)
	for start := 0; start < addr; start += modbus.MaxReadRegisters {
		n := min(modbus.MaxReadRegisters, addr-start)
		r, err := m.ReadHoldingRegisters(context.Background(), 7, uint16(start), uint16(n))
		if err != nil {
			t.Fatal(err)
		}
		regs = append(regs, r...)
	}
	for _, p := range points {
		v, err := value.Decode(regs[p.addr:], value.Layout{Type: p.typ, WordOrder: p.wo, ByteOrder: p.bo})
		if err != nil {
			t.Fatal(err)
		}
		want := p.val
		if p.typ == value.U64 {
			want = "18000000000000000000"
		}
		if v.String() != want {
			t.Errorf("%v word %v byte %v at %d: %s (regs %04x), want %s", p.typ, p.wo, p.bo, p.addr, v, regs[p.addr:p.addr+p.typ.Registers()], want)
		}
	}
}

func TestGenerators(t *testing.T) {
	t.Parallel()
	m := mustParse(t, `
[[unit]]
id = 1
[[unit.register]]
table = "input"
address = 0
type = "u16"
gen = "counter"
start = 65534
step = 1
[[unit.register]]
table = "input"
address = 1
type = "f32"
gen = "sine"
offset = 100
amplitude = 10
period = "1s"
[[unit.register]]
table = "input"
address = 3
type = "s16"
gen = "counter"
step = -5
interval = "1h"
[[unit.register]]
table = "holding"
address = 0
type = "u32"
gen = "counter"
`)
	_, ms := startSim(t, m, modbus.Options{Timeout: 500 * time.Millisecond})
	ctx := context.Background()
	var counts []uint16
	for range 3 {
		regs, err := ms.ReadInputRegisters(ctx, 1, 0, 4)
		if err != nil {
			t.Fatal(err)
		}
		counts = append(counts, regs[0])
		f, _ := value.Decode(regs[1:], value.Layout{Type: value.F32})
		if f.Float64() < 90 || f.Float64() > 110 {
			t.Errorf("sine = %v, want within 100±10", f)
		}
		if regs[3] != 0 {
			t.Errorf("hourly counter = %d before its first hour", regs[3])
		}
	}
	// Per-read counter: steps with each read, wraps at the type's width.
	if !slices.Equal(counts, []uint16{65535, 0, 1}) {
		t.Errorf("per-read u16 counter from 65534: %v", counts)
	}
	// Writing a generated point replaces it by the written constant.
	if err := ms.WriteMultipleRegisters(ctx, 1, 0, []uint16{0, 42}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if regs, err := ms.ReadHoldingRegisters(ctx, 1, 0, 2); err != nil || regs[1] != 42 {
			t.Fatalf("written counter reads %v, %v", regs, err)
		}
	}
}

// Not in parallel, nor TestLateReplyIsNotMistaken: their replies are timed
// against a master's timeout of a few tens of milliseconds.
func TestFaults(t *testing.T) {
	const timeout = 80 * time.Millisecond
	sim, m := startSim(t, mustParse(t, basicMap), modbus.Options{Timeout: timeout, Retries: 2})
	dev := sim.Device
	ctx := context.Background()
	read := func() ([]uint16, error) { return m.ReadHoldingRegisters(ctx, 1, 0, 2) }
	good := []uint16{1234, 0xFFFE}

	for _, c := range []struct {
		fault Fault
		want  error
		tries uint64
	}{
		{Fault{Kind: NoAnswer}, modbus.ErrTimeout, 3},
		{Fault{Kind: BadCRC}, modbus.ErrCRC, 3},
		{Fault{Kind: Truncate}, modbus.ErrShortFrame, 3},
	} {
		dev.ResetStats()
		dev.SetFault(1, c.fault)
		_, err := read()
		if !errors.Is(err, c.want) {
			t.Errorf("fault %v: %v, want %v", c.fault.Kind, err, c.want)
		}
		if got := dev.Requests(1, 3); got != c.tries {
			t.Errorf("fault %v: the device saw %d requests, want %d (retries)", c.fault.Kind, got, c.tries)
		}
	}

	dev.SetFault(1, Fault{Kind: Exception, Code: modbus.ExServerDeviceBusy})
	var ex *modbus.ExceptionError
	if _, err := read(); !errors.As(err, &ex) || ex.Code != modbus.ExServerDeviceBusy || ex.Function != 3 {
		t.Errorf("exception fault: %v", err)
	}

	for _, f := range []Fault{
		{Kind: Garbage},
		{Kind: Garbage, Garbage: []byte{1, 3, 4, 0, 0, 0xFF}}, // a header that promises 4 bytes
		{Kind: Slow, Delay: timeout / 4},
		{Kind: BadCRC, Count: 1}, // the first attempt fails, the retry succeeds
	} {
		dev.SetFault(1, f)
		if regs, err := read(); err != nil || !slices.Equal(regs, good) {
			t.Errorf("fault %+v: %v, %v; want %v", f, regs, err, good)
		}
	}
	dev.SetFault(1, Fault{})
	if regs, err := read(); err != nil || !slices.Equal(regs, good) {
		t.Errorf("after clearing the fault: %v, %v", regs, err)
	}
}

func TestLateReplyIsNotMistaken(t *testing.T) {
	const timeout = 200 * time.Millisecond
	sim, m := startSim(t, mustParse(t, basicMap), modbus.Options{Timeout: timeout})
	ctx := context.Background()
	// The first request's answer comes after the master gave up, while the
	// master waits for the reply to its second request.
	sim.Device.SetFault(1, Fault{Kind: Late, Delay: timeout * 3 / 2, Count: 1})
	if _, err := m.ReadHoldingRegisters(ctx, 1, 0, 1); !errors.Is(err, modbus.ErrTimeout) {
		t.Fatalf("late reply: %v, want ErrTimeout", err)
	}
	regs, err := m.ReadHoldingRegisters(ctx, 1, 0, 2)
	if err != nil || !slices.Equal(regs, []uint16{1234, 0xFFFE}) {
		t.Fatalf("request after a late reply: %v, %v", regs, err)
	}
	if d := m.Stats().Discarded; d != 7 {
		t.Errorf("%d bytes discarded, want the 7 of the late reply", d)
	}
	// The same with the late reply arriving between two requests: the
	// flush before the next request drops it.
	sim.Device.SetFault(1, Fault{Kind: Late, Delay: timeout * 3 / 2, Count: 1})
	if _, err := m.ReadHoldingRegisters(ctx, 1, 1, 1); !errors.Is(err, modbus.ErrTimeout) {
		t.Fatalf("late reply: %v, want ErrTimeout", err)
	}
	time.Sleep(timeout)
	regs, err = m.ReadHoldingRegisters(ctx, 1, 0, 1)
	if err != nil || !slices.Equal(regs, []uint16{1234}) {
		t.Fatalf("request after a flushed late reply: %v, %v", regs, err)
	}
}

func TestResyncAfterJunk(t *testing.T) {
	t.Parallel()
	sim, m := startSim(t, mustParse(t, basicMap), modbus.Options{Timeout: 300 * time.Millisecond})
	// Another writer on the line leaves half a frame, then a frame with a
	// bad CRC, then an unknown function code.
	peer, err := os.OpenFile(sim.Path(), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	// Each is dropped after the silence that follows it: the simulator
	// counts it then.
	for _, junk := range []struct {
		b    []byte
		what string
		seen func(Stats) bool
	}{
		{[]byte{0x01, 0x03, 0x00}, "the half frame dropped", func(s Stats) bool { return s.Resyncs >= 1 }},
		{[]byte{0x01, 0x03, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00}, "the bad CRC dropped", func(s Stats) bool { return s.CRCErrors >= 1 }},
	} {
		peer.Write(junk.b)
		testpeer.Eventually(t, 10*time.Second, junk.what, func() bool { return junk.seen(sim.Device.Stats()) })
	}
	if regs, err := m.ReadHoldingRegisters(context.Background(), 1, 0, 1); err != nil || regs[0] != 1234 {
		t.Fatalf("after junk: %v, %v", regs, err)
	}
	s := sim.Device.Stats()
	if s.Resyncs != 1 || s.CRCErrors != 1 {
		t.Errorf("stats %+v, want 1 resync and 1 CRC error", s)
	}
	// An unknown function with a good CRC gets "illegal function".
	req := []byte{0x01, 0x2B, 0x0E, 0x01, 0x00}
	c := modbus.CRC(req)
	peer.Write(append(req, byte(c), byte(c>>8)))
	peer.SetReadDeadline(time.Now().Add(time.Second))
	var buf [5]byte
	n := 0
	for n < 5 {
		k, err := peer.Read(buf[n:])
		if err != nil {
			t.Fatalf("reading the exception: %v", err)
		}
		n += k
	}
	want := modbus.AppendException(nil, 1, 0x2B, modbus.ExIllegalFunction)
	if !bytes.Equal(buf[:], want) {
		t.Fatalf("reply to an unknown function: % x, want % x", buf, want)
	}
}

func TestParseMapErrors(t *testing.T) {
	t.Parallel()
	head := "[[unit]]\nid = 1\n[[unit.register]]\n"
	for _, c := range []struct{ toml, want string }{
		{"colour = 1\n[[unit]]\nid = 1\n", "test.toml:1:1: unknown key colour"},
		{"[[unit]]\nid = 1\nspeed = 3\n", "test.toml:3:1: unknown key unit.speed"},
		{"baud = \"fast\"\n", "test.toml:1"},
		{"", "no [[unit]]"},
		{"[[unit]]\nid = 300\n", "id 300"},
		{"[[unit]]\nid = 1\n[[unit]]\nid = 1\n", "unit 1 defined twice"},
		{head + "table = \"holding\"\naddress = 0\ntype = \"u24\"\n", "unknown type \"u24\""},
		{head + "table = \"register\"\naddress = 0\n", "unknown table"},
		{head + "table = \"holding\"\ntype = \"u16\"\n", "address missing"},
		{head + "table = \"coil\"\naddress = 0\ntype = \"u16\"\n", "holds only bool"},
		{head + "table = \"holding\"\naddress = 65535\ntype = \"u32\"\n", "past address 65535"},
		{head + "table = \"holding\"\naddress = 0\ntype = \"u16\"\nvalue = 70000\n", "does not fit"},
		{head + "table = \"holding\"\naddress = 0\ntype = \"u16\"\nvalue = 1.5\n", "not an integer"},
		{head + "table = \"holding\"\naddress = 0\ntype = \"u16\"\namplitude = 3\n", "amplitude does not apply to gen constant"},
		{head + "table = \"holding\"\naddress = 0\ntype = \"u16\"\ngen = \"sine\"\n", "period must be > 0"},
		{head + "table = \"holding\"\naddress = 0\ntype = \"u16\"\ngen = \"random\"\n", "gen \"random\""},
		{head + "name = \"a\"\ntable = \"holding\"\naddress = 0\ntype = \"u32\"\n[[unit.register]]\nname = \"b\"\ntable = \"holding\"\naddress = 1\ntype = \"u16\"\n", "\"b\": holding address 1 already mapped"},
		{head + "table = \"holding\"\naddress = 0\ntype = \"u32\"\nword_order = \"middle\"\n", "word_order"},
		{"[[unit]]\nid = 1\n[unit.fault]\nkind = \"slow\"\n", "delay: required"},
		{"[[unit]]\nid = 1\n[unit.fault]\nkind = \"flaky\"\n", "unknown fault"},
		{"[[unit]]\nid = 1\n[unit.fault]\nkind = \"crc\"\ncode = 3\n", "only for kind exception"},
	} {
		_, err := ParseMap([]byte(c.toml), "test.toml")
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ParseMap(%q) = %v, want an error containing %q", c.toml, err, c.want)
		}
	}
}

func TestDemo(t *testing.T) {
	t.Parallel()
	d := Demo()
	if d.Baud != 9600 || !d.ByteTiming || len(d.Units) != 2 {
		t.Fatalf("demo map: baud %d, timing %v, %d units", d.Baud, d.ByteTiming, len(d.Units))
	}
	dev, err := d.NewDevice()
	if err != nil {
		t.Fatal(err)
	}
	regs, _ := dev.Registers(1, InputRegisters, 0, 9)
	v, _ := value.Decode(regs, value.Layout{Type: value.F32})
	if v.Float64() < 227 || v.Float64() > 233 {
		t.Errorf("demo voltage %v", v)
	}
	if regs[8] != 5000 {
		t.Errorf("demo frequency %d", regs[8])
	}
	regs, _ = dev.Registers(2, InputRegisters, 4, 2)
	if v, _ := value.Decode(regs, value.Layout{Type: value.F32, WordOrder: value.LittleEndian}); v.Float64() != float64(float32(1013.25)) {
		t.Errorf("demo pressure %v", v)
	}
}

// Serve, the simulator as a service: READY=1 and a STATUS= line to
// $NOTIFY_SOCKET once the line exists, served until ctx ends, then the link
// removed and the counters logged.
func TestServe(t *testing.T) {
	dir := t.TempDir()
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "notify"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()
	t.Setenv("NOTIFY_SOCKET", filepath.Join(dir, "notify"))
	receive := func() string {
		t.Helper()
		// The deadline only keeps a broken test from hanging.
		notify.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 4096)
		n, err := notify.Read(buf)
		if err != nil {
			t.Fatalf("no notification: %v", err)
		}
		return string(buf[:n])
	}

	link := filepath.Join(dir, "ttySIM0")
	m := mustParse(t, basicMap)
	var logs syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sim, err := Start(ctx, m, link, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if sim.Path() != link {
		t.Fatalf("Path() = %q, want the link %q", sim.Path(), link)
	}
	done := make(chan error, 1)
	go func() { done <- sim.Serve() }()
	if got := receive(); got != "READY=1" {
		t.Fatalf("first notification %q, want READY=1", got)
	}
	if got, want := receive(), "STATUS=simulating units [1 2] on "+link; got != want {
		t.Errorf("status %q, want %q", got, want)
	}

	port, err := modbus.Open(link, modbus.PortConfig{Baud: m.Baud})
	if err != nil {
		t.Fatal(err)
	}
	regs, err := modbus.NewMaster(port, modbus.Options{Baud: m.Baud, Timeout: time.Second}).ReadHoldingRegisters(ctx, 1, 0, 1)
	port.Close()
	if err != nil || regs[0] != 1234 {
		t.Fatalf("read via the link: %v, %v", regs, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if _, err := os.Lstat(link); !os.IsNotExist(err) {
		t.Errorf("link left behind: %v", err)
	}
	for _, want := range []string{"msg=serving", "baud=115200", "msg=stopped", "frames=1 "} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs.String())
		}
	}
}

// TestLineVanishesAndComesBack: when the simulator stops, a master on its
// link gets ErrPort; a new simulator on the same link serves a reopened port.
func TestLineVanishesAndComesBack(t *testing.T) {
	t.Parallel()
	link := filepath.Join(t.TempDir(), "ttySIM")
	m := mustParse(t, basicMap)
	ctx, cancel := context.WithCancel(context.Background())
	sim, err := Start(ctx, m, link, nil)
	if err != nil {
		t.Fatal(err)
	}
	port, err := modbus.Open(link, modbus.PortConfig{Baud: m.Baud})
	if err != nil {
		t.Fatal(err)
	}
	defer port.Close()
	master := modbus.NewMaster(port, modbus.Options{Baud: m.Baud, Timeout: 500 * time.Millisecond})
	if _, err := master.ReadHoldingRegisters(context.Background(), 1, 0, 1); err != nil {
		t.Fatal(err)
	}
	if got := sim.Device.Requests(9, 3); got != 0 {
		t.Fatalf("absent unit 9: %d requests before any", got)
	}
	short := modbus.NewMaster(port, modbus.Options{Baud: m.Baud, Timeout: 20 * time.Millisecond})
	if _, err := short.ReadHoldingRegisters(context.Background(), 9, 0, 1); !errors.Is(err, modbus.ErrTimeout) {
		t.Fatalf("absent unit: %v, want ErrTimeout", err)
	}
	if got := sim.Device.Requests(9, 3); got != 1 {
		t.Fatalf("absent unit 9: %d requests counted, want 1", got)
	}
	cancel()
	if err := sim.Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := master.ReadHoldingRegisters(context.Background(), 1, 0, 1); !errors.Is(err, modbus.ErrPort) {
		t.Fatalf("after the line vanished: %v, want ErrPort", err)
	}

	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	sim, err = Start(ctx, m, link, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); sim.Wait() }()
	port2, err := modbus.Open(link, modbus.PortConfig{Baud: m.Baud})
	if err != nil {
		t.Fatal(err)
	}
	defer port2.Close()
	regs, err := modbus.NewMaster(port2, modbus.Options{Baud: m.Baud}).ReadHoldingRegisters(context.Background(), 1, 0, 1)
	if err != nil || regs[0] != 1234 {
		t.Fatalf("after the line came back: %v, %v", regs, err)
	}
}
