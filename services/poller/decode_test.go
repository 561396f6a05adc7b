package poller

import (
	"strings"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/shared/modbus"
)

// typesMap holds a value of every type and order on unit 1.
const typesMap = `
baud = 115200
[[unit]]
id = 1
[[unit.register]]
table = "holding"
address = 0
type = "u16"
value = 65535
[[unit.register]]
table = "holding"
address = 1
type = "s16"
value = -2
[[unit.register]]
table = "holding"
address = 2
type = "u32"
value = 4000000000
[[unit.register]]
table = "holding"
address = 4
type = "s32"
word_order = "little"
value = -100000
[[unit.register]]
table = "holding"
address = 6
type = "u64"
value = 1152921504606846977
[[unit.register]]
table = "holding"
address = 10
type = "s64"
byte_order = "little"
value = -5
[[unit.register]]
table = "holding"
address = 14
type = "f32"
word_order = "little"
byte_order = "little"
value = 3.5
[[unit.register]]
table = "holding"
address = 16
type = "f64"
value = -1234.5678
[[unit.register]]
table = "holding"
address = 20
type = "u16"
byte_order = "little"
value = 4660
[[unit.register]]
table = "holding"
address = 21
type = "s16"
value = -123
[[unit.register]]
table = "holding"
address = 22
type = "bool"
value = true
[[unit.register]]
table = "coil"
address = 0
value = true
[[unit.register]]
table = "coil"
address = 1
value = false
[[unit.register]]
table = "coil"
address = 5
value = true
[[unit.register]]
table = "discrete"
address = 9
value = true
[[unit.register]]
table = "input"
address = 100
type = "u16"
value = 2301
[[unit.register]]
table = "input"
address = 101
type = "s32"
value = -7
`

const typesPoller = `
[[poller.port]]
name = "sim"
device = "sim-tty"
baud = 115200
timeout = "500ms"
[[poller.device]]
name = "all"
port = "sim"
unit = 1
interval = "1h"
[[poller.device.point]]
name = "u16"
table = "holding"
address = 0
[[poller.device.point]]
name = "s16"
table = "holding"
address = 1
type = "s16"
[[poller.device.point]]
name = "u32"
table = "holding"
address = 2
type = "u32"
[[poller.device.point]]
name = "s32_ws"
table = "holding"
address = 4
type = "s32"
word_order = "little"
[[poller.device.point]]
name = "u64"
table = "holding"
address = 6
type = "u64"
[[poller.device.point]]
name = "s64_bs"
table = "holding"
address = 10
type = "s64"
byte_order = "little"
[[poller.device.point]]
name = "f32_ws_bs"
table = "holding"
address = 14
type = "f32"
word_order = "little"
byte_order = "little"
[[poller.device.point]]
name = "f64"
table = "holding"
address = 16
type = "f64"
[[poller.device.point]]
name = "u16_bs"
table = "holding"
address = 20
byte_order = "little"
[[poller.device.point]]
name = "s16_tenths"
table = "holding"
address = 21
type = "s16"
scale = 0.1
[[poller.device.point]]
name = "reg_bool"
table = "holding"
address = 22
type = "bool"
[[poller.device.point]]
name = "coil0"
table = "coil"
address = 0
[[poller.device.point]]
name = "coil1"
table = "coil"
address = 1
[[poller.device.point]]
name = "coil5"
table = "coil"
address = 5
[[poller.device.point]]
name = "di9"
table = "discrete"
address = 9
[[poller.device.point]]
name = "voltage"
table = "input"
address = 100
scale = 0.1
unit = "V"
[[poller.device.point]]
name = "offset"
table = "input"
address = 101
type = "s32"
scale = 2
offset = 0.5
`

// TestDecodeEveryType reads a value of every type, word and byte order
// from the simulator over a real pseudo-terminal, and checks that the
// points were read with the fewest requests (counted by the simulator).
func TestDecodeEveryType(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	sim, _ := startSim(t, typesMap, simLink(t, dir))
	cfg := testConfig(t, dir, typesPoller)
	rec := newRecorder()
	p := startPoller(t, cfg, rec)

	from := 0
	m := rec.wait(t, &from, "tinyscada/data/all", 5*time.Second, "a data message", nil)
	d := parseData(t, m)
	want := map[string]string{
		"u16": "65535", "s16": "-2", "u32": "4000000000", "s32_ws": "-100000",
		"u64": "1152921504606846977", "s64_bs": "-5", "f32_ws_bs": "3.5", "f64": "-1234.5678",
		"u16_bs": "4660", "s16_tenths": "-12.3", "reg_bool": "true",
		"coil0": "true", "coil1": "false", "coil5": "true", "di9": "true",
		"voltage": "230.1", "offset": "-13.5",
	}
	if len(d.Bad) > 0 {
		t.Errorf("bad points: %v", d.Bad)
	}
	for k, w := range want {
		if got := string(d.V[k]); got != w {
			t.Errorf("%s = %s, want %s", k, got, w)
		}
	}
	if len(d.V) != len(want) {
		t.Errorf("got %d values, want %d: %s", len(d.V), len(want), m.Payload)
	}
	if d.Run != p.RunID() || d.Seq != 1 || d.T == 0 || d.M == 0 {
		t.Errorf("header: run %q seq %d t %d m %d (run id %q)", d.Run, d.Seq, d.T, d.M, p.RunID())
	}

	// One request per table: holding 0-22, coils 0-5, discrete 9, input
	// 100-102; no other way needs fewer.
	if got := p.Plan().Requests(); got != 4 {
		t.Errorf("plan has %d requests, want 4", got)
	}
	st := sim.Device.Stats()
	for fc, n := range map[byte]uint64{modbus.FuncReadHoldingRegisters: 1, modbus.FuncReadCoils: 1,
		modbus.FuncReadDiscreteInputs: 1, modbus.FuncReadInputRegisters: 1} {
		if got := sim.Device.Requests(1, fc); got != n {
			t.Errorf("simulator got %d requests with fc %d, want %d", got, fc, n)
		}
	}
	if st.Frames != 4 {
		t.Errorf("simulator got %d frames in one round, want 4", st.Frames)
	}

	// The value topics are the broker's (services/broker valueHook).
	rec.mu.Lock()
	for _, m := range rec.msgs {
		if strings.HasPrefix(m.Topic, "tinyscada/value/") {
			t.Errorf("the poller published a value topic: %s", m.Topic)
		}
	}
	rec.mu.Unlock()
	sm := rec.wait(t, new(int), "tinyscada/device/all/state", 5*time.Second, "the device state", nil)
	if s := parseState(t, sm); s.State != "online" || s.Error != "" || !sm.Retain || sm.QoS != 1 {
		t.Errorf("state %s", sm.Payload)
	}
}

func TestCoalesce(t *testing.T) {
	type pt struct {
		addr int
		typ  string
	}
	cases := []struct {
		name       string
		points     []pt
		gap, limit int
		want       []string // start-end of each read
	}{
		{"adjacent", []pt{{0, "u16"}, {1, "u32"}, {3, "f64"}}, 0, 125, []string{"0-7"}},
		{"gap within", []pt{{0, "u16"}, {9, "u16"}}, 8, 125, []string{"0-10"}},
		{"gap too wide", []pt{{0, "u16"}, {10, "u16"}}, 8, 125, []string{"0-1", "10-11"}},
		{"unsorted", []pt{{50, "u16"}, {0, "u16"}, {2, "u16"}}, 1, 125, []string{"0-3", "50-51"}},
		{"limit", []pt{{0, "u16"}, {123, "u32"}, {125, "u16"}}, 200, 125, []string{"0-125", "125-126"}},
		{"overlap", []pt{{0, "u32"}, {1, "u16"}}, 0, 125, []string{"0-2"}},
		{"value at the limit alone", []pt{{0, "f64"}}, 0, 4, []string{"0-4"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var points []Point
			var idx []int
			for i, p := range tc.points {
				pc := &configPoint{Name: "p", Table: "holding", Address: p.addr, Type: p.typ}
				pc.Scale = 1
				pc.WordOrder, pc.ByteOrder = "big", "big"
				cp, err := compilePoint(pc)
				if err != nil {
					t.Fatal(err)
				}
				points = append(points, cp)
				idx = append(idx, i)
			}
			var got []string
			for _, g := range coalesce(points, idx, tc.gap, tc.limit) {
				got = append(got, itoa(g.start)+"-"+itoa(g.end))
			}
			if strings.Join(got, " ") != strings.Join(tc.want, " ") {
				t.Errorf("reads %v, want %v", got, tc.want)
			}
		})
	}
}
