package config

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

// pollerHead is a valid start of a poller configuration: two ports.
var pollerHead = []string{
	"version = 1",           // 1
	"[[poller.port]]",       // 2
	"name = 'bus1'",         // 3
	"device = '/dev/ttyS1'", // 4
	"[[poller.port]]",       // 5
	"name = 'ascii'",        // 6
	"device = 'run/ascii'",  // 7
	"mode = 'line'",         // 8
}

// pollerDoc is pollerHead followed by lines (the first is line 9).
func pollerDoc(lines ...string) string {
	return doc(append(append([]string{}, pollerHead...), lines...)...)
}

var pollerBadCases = []struct {
	name string
	doc  string
	want []want
}{
	{"unknown port", pollerDoc(
		"[[poller.device]]",       // 9
		"name = 'm1'",             // 10
		"port = 'bus2'",           // 11
		"unit = 1",                // 12
		"[[poller.device.point]]", // 13
		"name = 'v'",              // 14
		"table = 'input'",         // 15
	), []want{{11, "poller.device[0].port", `unknown port "bus2" (ports: bus1, ascii)`}}},
	{"duplicate names", pollerDoc(
		"[[poller.port]]",         // 9
		"name = 'bus1'",           // 10
		"device = '/dev/ttyS2'",   // 11
		"[[poller.device]]",       // 12
		"name = 'm1'",             // 13
		"port = 'bus1'",           // 14
		"unit = 1",                // 15
		"[[poller.device.point]]", // 16
		"name = 'v'",              // 17
		"table = 'input'",         // 18
		"[[poller.device.point]]", // 19
		"name = 'v'",              // 20
		"table = 'input'",         // 21
		"address = 1",             // 22
		"[[poller.device]]",       // 23
		"name = 'm1'",             // 24
		"port = 'bus1'",           // 25
		"unit = 2",                // 26
		"[[poller.device.point]]", // 27
		"name = 'v'",              // 28
		"table = 'coil'",          // 29
	), []want{
		{10, "poller.port[2].name", `duplicate port name "bus1" (also port[0])`},
		{20, "poller.device[0].point[1].name", `duplicate point name "v" (also point[0])`},
		{24, "poller.device[1].name", `duplicate device name "m1" (also device[0])`},
	}},
	{"addresses out of range and types that don't fit", pollerDoc(
		"[[poller.device]]",       // 9
		"name = 'm1'",             // 10
		"port = 'bus1'",           // 11
		"unit = 248",              // 12
		"[[poller.device.point]]", // 13
		"name = 'a'",              // 14
		"table = 'input'",         // 15
		"address = 65535",         // 16
		"type = 'u32'",            // 17
		"[[poller.device.point]]", // 18
		"name = 'b'",              // 19
		"table = 'coil'",          // 20
		"type = 'f32'",            // 21
		"[[poller.device.point]]", // 22
		"name = 'c'",              // 23
		"table = 'holding'",       // 24
		"address = 70000",         // 25
		"[[poller.device.point]]", // 26
		"name = 'd'",              // 27
		"table = 'register'",      // 28
		"[[poller.device.point]]", // 29
		"name = 'e'",              // 30
		"table = 'input'",         // 31
		"type = 'f16'",            // 32
		"word_order = 'middle'",   // 33
	), []want{
		{12, "poller.device[0].unit", "248 is out of range (want 1 to 247)"},
		{16, "poller.device[0].point[0].address", "65535 is out of range: a u32 spans 2 registers (want 0 to 65534)"},
		{21, "poller.device[0].point[1].type", `a coil is one bit: type "f32" does not fit`},
		{25, "poller.device[0].point[2].address", "70000 is out of range (want 0 to 65535)"},
		{28, "poller.device[0].point[3].table", `"register" is not one of coil, discrete, holding, input`},
		{32, "poller.device[0].point[4].type", `"f16" is not one of bool, u16`},
		{33, "poller.device[0].point[4].word_order", `"middle" is not one of big, little`},
	}},
	{"overlapping writes", pollerDoc(
		"[[poller.device]]",       // 9
		"name = 'm1'",             // 10
		"port = 'bus1'",           // 11
		"unit = 1",                // 12
		"[[poller.device.point]]", // 13
		"name = 'setpoint'",       // 14
		"table = 'holding'",       // 15
		"address = 10",            // 16
		"type = 'f32'",            // 17
		"writable = true",         // 18
		"[[poller.device.point]]", // 19
		"name = 'raw'",            // 20
		"table = 'holding'",       // 21
		"address = 11",            // 22
		"[[poller.device.point]]", // 23
		"name = 'other'",          // 24
		"table = 'input'",         // 25
		"address = 10",            // 26
		"[[poller.device.point]]", // 27
		"name = 'in'",             // 28
		"table = 'input'",         // 29
		"address = 20",            // 30
		"writable = true",         // 31
	), []want{
		{18, "poller.device[0].point[0].writable", `writable point "setpoint" (holding 10..11) overlaps point "raw" (11..11)`},
		{31, "poller.device[0].point[3].writable", "input points are read-only"},
	}},
	{"two devices with one unit id, a device without points", pollerDoc(
		"[[poller.device]]",       // 9
		"name = 'm1'",             // 10
		"port = 'bus1'",           // 11
		"unit = 3",                // 12
		"[[poller.device]]",       // 13
		"name = 'm2'",             // 14
		"port = 'bus1'",           // 15
		"unit = 3",                // 16
		"[[poller.device.point]]", // 17
		"name = 'x'",              // 18
		"table = 'input'",         // 19
	), []want{
		{9, "poller.device[0].point", "no points"},
		{16, "poller.device[1].unit", `unit 3 on port "bus1" is already device "m1"`},
	}},
	{"line mode", pollerDoc(
		"line_format = 'regex'",     // 9
		"line_regex = 'V=([0-9]+)'", // 10
		"[[poller.port]]",           // 11
		"name = 'bus3'",             // 12
		"device = '/dev/ttyS3'",     // 13
		"line_regex = 'x'",          // 14
		"[[poller.device]]",         // 15
		"name = 'scale'",            // 16
		"port = 'ascii'",            // 17
		"unit = 4",                  // 18
		"[[poller.device.point]]",   // 19
		"name = 'w'",                // 20
		"table = 'input'",           // 21
		"[[poller.device]]",         // 22
		"name = 'scale2'",           // 23
		"port = 'ascii'",            // 24
	), []want{
		{10, "poller.port[1].line_regex", "no named group"},
		{14, "poller.port[2].line_regex", `only for mode = "line"`},
		{18, "poller.device[0].unit", `a device on line port "ascii" has no unit id`},
		{21, "poller.device[0].point[0].table", "not for a device on a line port"},
		{24, "poller.device[1].port", `line port "ascii" already has device "scale"`},
	}},
	{"bad port settings", pollerDoc(
		"[[poller.port]]",           // 9
		"name = 'bus/3'",            // 10
		"device = '/dev/x'",         // 11
		"baud = 0",                  // 12
		"parity = 'mark'",           // 13
		"stop_bits = 3",             // 14
		"timeout = '0s'",            // 15
		"rs485_rx_during_tx = true", // 16
		"mode = 'tcp'",              // 17
	), []want{
		{10, "poller.port[2].name", "holds a '/'"},
		{12, "poller.port[2].baud", "0 is out of range"},
		{13, "poller.port[2].parity", `"mark" is not one of none, even, odd`},
		{14, "poller.port[2].stop_bits", "3: want 1 or 2"},
		{15, "poller.port[2].timeout", "too short"},
		{16, "poller.port[2].rs485_rx_during_tx", "has no effect without rs485 = true"},
		{17, "poller.port[2].mode", `"tcp" is not one of rtu, line`},
	}},
}

func TestPollerBad(t *testing.T) {
	for _, tc := range pollerBadCases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("p.toml", []byte(tc.doc))
			if err == nil {
				t.Fatalf("no error; parsed %+v", c.Poller)
			}
			got := Errors(err)
			if len(got) != len(tc.want) {
				t.Fatalf("got %d errors, want %d:\n%v", len(got), len(tc.want), err)
			}
			for i, w := range tc.want {
				g := got[i]
				if g.Line != w.line || g.Key != w.key || !strings.Contains(g.Msg, w.msg) {
					t.Errorf("error %d = %q\nwant line %d, key %q, message with %q", i, g, w.line, w.key, w.msg)
				}
			}
		})
	}
}

// FuzzPollerParse checks that no poller configuration makes Parse panic,
// and that an accepted one survives an encoding round trip.
func FuzzPollerParse(f *testing.F) {
	for _, tc := range pollerBadCases {
		f.Add([]byte(tc.doc))
	}
	f.Add([]byte(pollerGood))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("fuzz.toml", data)
		if err != nil {
			return
		}
		enc, err := c.Encode()
		if err != nil {
			t.Fatalf("Encode of an accepted config: %v", err)
		}
		back, err := Parse("encoded.toml", enc)
		if err != nil {
			t.Fatalf("the encoding of an accepted config is refused: %v\n%s", err, enc)
		}
		if !reflect.DeepEqual(back.Poller, c.Poller) {
			t.Fatalf("round trip gives\n%+v\nwant\n%+v", back.Poller, c.Poller)
		}
	})
}

const pollerGood = `version = 1
state_dir = "/var/lib/tinyscada"
[poller]
outbox = 100
max_gap = 4
[[poller.port]]
name = "bus1"
device = "/dev/ttyUSB0"
baud = 19200
parity = "even"
[[poller.port]]
name = "ascii"
device = "run/ascii"
mode = "line"
[[poller.device]]
name = "m1"
port = "bus1"
unit = 7
max_gap = 0
[[poller.device.point]]
name = "voltage"
table = "input"
address = 100
type = "f32"
word_order = "little"
unit = "V"
[[poller.device.point]]
name = "relay"
table = "coil"
address = 3
writable = true
[[poller.device]]
name = "scale"
port = "ascii"
interval = "5s"
[[poller.device.point]]
name = "weight"
key = "W"
scale = 0.001
`

func TestPollerGoodFillsDefaults(t *testing.T) {
	c, err := Parse("good.toml", []byte(pollerGood))
	if err != nil {
		t.Fatal(err)
	}
	p := c.Poller
	bus1 := p.FindPort("bus1")
	if bus1 == nil || bus1.Mode != ModeRTU || bus1.Baud != 19200 || bus1.DataBits != 8 || bus1.StopBits != 1 ||
		bus1.ParityLetter() != "E" || bus1.Timeout.Duration != time.Second || bus1.Simulate {
		t.Errorf("bus1 = %+v", bus1)
	}
	if got := p.FindPort("ascii").Path(c.StateDir); got != "/var/lib/tinyscada/run/ascii" {
		t.Errorf("relative device path resolves to %q", got)
	}
	if got := bus1.Path(c.StateDir); got != "/dev/ttyUSB0" {
		t.Errorf("absolute device path resolves to %q", got)
	}
	m1 := p.Device[0]
	if m1.Interval.Duration != time.Second || m1.DeviceTimeout(bus1) != time.Second {
		t.Errorf("m1 interval %v timeout %v", m1.Interval, m1.DeviceTimeout(bus1))
	}
	if gap, regs, bits := m1.Limits(&p); gap != 0 || regs != 125 || bits != 2000 {
		t.Errorf("m1 limits %d %d %d", gap, regs, bits)
	}
	if v := m1.Point[0]; v.Scale != 1 || v.ByteOrder != "big" || v.Size() != 2 || v.Layout().WordOrder.String() != "little" {
		t.Errorf("voltage = %+v", v)
	}
	if r := m1.Point[1]; r.Type != "bool" || !r.IsBits() || r.Size() != 1 {
		t.Errorf("relay = %+v", r)
	}
	if w := p.Device[1].Point[0]; w.Type != "f64" || w.Key != "W" || w.Scale != 0.001 {
		t.Errorf("weight = %+v", w)
	}
	// The line device's timeout in force: 3 × its 5s interval, at least the port's 1s.
	if p.Device[1].Timeout.Duration != 15*time.Second || p.Outbox != 100 || p.MaxGap != 4 || !p.RetainValues {
		t.Errorf("poller = %+v", p)
	}
}

func TestPollerDefaultIsValidDemo(t *testing.T) {
	c, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	p := c.Poller
	if len(p.Port) != 1 || !p.Port[0].Simulate || len(p.Device) != 2 {
		t.Fatalf("demo poller = %+v", p)
	}
	if !reflect.DeepEqual(p, Default().Poller) {
		t.Errorf("validation changed the defaults:\n%+v\nwant\n%+v", p, Default().Poller)
	}
}
