package simulate

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"
	"github.com/tinyscada/tinyscada/shared/modbus/value"
)

// Map is a simulator configuration: the line and the units on it.
type Map struct {
	Baud       int
	ByteTiming bool
	Units      []UnitSpec
}

// UnitSpec is one simulated slave.
type UnitSpec struct {
	ID     byte
	Strict bool // unmapped addresses answer exception 2
	Fault  Fault
	Points []Point
}

// NewDevice builds a Device from m. Errors name the unit and point: an id
// out of range or repeated, overlapping points, a type that does not fit
// its table or address, a constant that does not fit its type.
func (m *Map) NewDevice() (*Device, error) {
	d := NewDevice()
	for _, u := range m.Units {
		if err := d.AddUnit(u.ID, u.Strict); err != nil {
			return nil, err
		}
		for _, p := range u.Points {
			if err := d.AddPoint(u.ID, p); err != nil {
				return nil, err
			}
		}
		if err := d.SetFault(u.ID, u.Fault); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// The file format, decoded strictly.
type fileMap struct {
	Baud       int        `toml:"baud"`
	ByteTiming bool       `toml:"byte_timing"`
	Units      []fileUnit `toml:"unit"`
}

type fileUnit struct {
	ID        int            `toml:"id"`
	Strict    bool           `toml:"strict"`
	Fault     *fileFault     `toml:"fault"`
	Registers []fileRegister `toml:"register"`
}

type fileFault struct {
	Kind    string   `toml:"kind"`
	Code    int      `toml:"code"`
	Delay   duration `toml:"delay"`
	Garbage []int    `toml:"garbage"`
	Count   int      `toml:"count"`
}

type fileRegister struct {
	Name      string   `toml:"name"`
	Table     string   `toml:"table"`
	Address   *int     `toml:"address"`
	Type      string   `toml:"type"`
	WordOrder string   `toml:"word_order"`
	ByteOrder string   `toml:"byte_order"`
	Value     any      `toml:"value"`
	Gen       string   `toml:"gen"`
	Start     *float64 `toml:"start"`
	Step      *float64 `toml:"step"`
	Interval  duration `toml:"interval"`
	Amplitude *float64 `toml:"amplitude"`
	Offset    *float64 `toml:"offset"`
	Period    duration `toml:"period"`
}

// duration decodes a Go duration string ("1s", "250ms").
type duration struct {
	d   time.Duration
	set bool
}

func (d *duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	if v < 0 {
		return fmt.Errorf("negative duration %q", b)
	}
	d.d, d.set = v, true
	return nil
}

// MapFormat is the register-map format, every key with its default and
// meaning: the text `tinyscada simulate -h` prints. docs/simulate.md says
// the same at length; TestMapFormatNamesEveryKey keeps both complete.
const MapFormat = `Register map (TOML, -map FILE; unknown keys are errors):

  baud = 9600                  # line speed for the timing (up to 4000000; default 9600)
  byte_timing = false          # true: take as long as a real line at baud (default false)

  [[unit]]                     # one simulated slave; at least one
  id = 1                       # slave id 1..247, unique
  strict = false               # true: a read or write touching an unmapped address
                               #   answers exception 2; false (default): unmapped
                               #   registers read 0 and accept writes

  [unit.fault]                 # optional: how the unit misbehaves
  kind = "none"                # none, no_answer (silent), crc (wrong CRC), truncate
                               #   (first half of the reply), exception (code),
                               #   slow (answer after delay), late (answer after delay,
                               #   meant to exceed the master's timeout), garbage
                               #   (garbage bytes, then the reply)
  code = 4                     # exception only: the exception code 1..255 (default 4)
  delay = "200ms"              # slow and late only, and required there
  garbage = [0, 255, 1, 3, 127] # garbage only: bytes sent before the reply
                               #   (default 00 FF <unit> <function> 7F)
  count = 0                    # the fault applies to the next count requests,
                               #   then clears; 0 (default): until changed

  [[unit.register]]            # one point of the unit
  name = "voltage"             # optional, for people (logs); not on the wire
  table = "input"              # coil, discrete, holding or input (required)
  address = 0                  # first coil or register, 0-based as on the wire (required)
  type = "f32"                 # bool u16 s16 u32 s32 u64 s64 f32 f64; bit tables: bool
                               #   (the default there); register tables: required
  word_order = "big"           # big (default: high word first) or little
  byte_order = "big"           # big (default) or little, within each register
  gen = "constant"             # constant (default), counter, sine or square
  value = 230.5                # constant: the value (number or true/false; default 0)
  start = 0.0                  # counter: first value (default 0)
  step = 1.0                   # counter: increment (default 1); integers wrap at their width
  interval = "1s"              # counter: step every interval (default: one step per read)
  amplitude = 3.0              # sine, square: amplitude (default 0)
  offset = 230.0               # sine, square: offset (default 0)
  period = "60s"               # sine, square: period, required
                               # sine: offset + amplitude*sin(2*pi*t/period);
                               # square: offset + amplitude in the first half of
                               #   each period, offset in the second; integer types
                               #   are clamped to their range

Coils and holding registers accept writes (fc 5, 6, 15, 16); a write to a
generated point replaces its generator by the written constant.
-print-demo prints the built-in map, an example.
`

// LoadMap reads and checks the map file at path (see ParseMap).
func LoadMap(path string) (*Map, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("simulate: %w", err)
	}
	return ParseMap(b, path)
}

// ParseMap decodes a map file; name is used in errors. Decoding is strict:
// unknown keys, wrong types, bad values, keys that do not apply to a
// point's generator and points that overlap are errors naming the file and
// the line (syntax and unknown keys) or the unit and register. The format
// is MapFormat (docs/simulate.md explains it).
func ParseMap(data []byte, name string) (*Map, error) {
	var f fileMap
	dec := toml.NewDecoder(bytes.NewReader(data)).DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		var de *toml.DecodeError
		var se *toml.StrictMissingError
		switch {
		case errors.As(err, &se):
			var msgs []string
			for _, e := range se.Errors {
				row, col := e.Position()
				msgs = append(msgs, fmt.Sprintf("%s:%d:%d: unknown key %s", name, row, col, strings.Join(e.Key(), ".")))
			}
			return nil, fmt.Errorf("simulate: %s", strings.Join(msgs, "; "))
		case errors.As(err, &de):
			row, col := de.Position()
			return nil, fmt.Errorf("simulate: %s:%d:%d: %s", name, row, col, de.Error())
		}
		return nil, fmt.Errorf("simulate: %s: %w", name, err)
	}
	m := &Map{Baud: f.Baud, ByteTiming: f.ByteTiming}
	if m.Baud < 0 || m.Baud > 4000000 {
		return nil, fmt.Errorf("simulate: %s: baud %d out of range", name, m.Baud)
	}
	if m.Baud == 0 {
		m.Baud = 9600
	}
	if len(f.Units) == 0 {
		return nil, fmt.Errorf("simulate: %s: no [[unit]]", name)
	}
	for i, fu := range f.Units {
		if fu.ID < 1 || fu.ID > 247 {
			return nil, fmt.Errorf("simulate: %s: unit #%d: id %d, want 1..247", name, i+1, fu.ID)
		}
		u := UnitSpec{ID: byte(fu.ID), Strict: fu.Strict}
		if fu.Fault != nil {
			fault, err := fu.Fault.convert()
			if err != nil {
				return nil, fmt.Errorf("simulate: %s: unit %d: fault: %w", name, fu.ID, err)
			}
			u.Fault = fault
		}
		for j, fr := range fu.Registers {
			p, err := fr.convert()
			if err != nil {
				label := fmt.Sprintf("register #%d", j+1)
				if fr.Name != "" {
					label += fmt.Sprintf(" (%q)", fr.Name)
				}
				return nil, fmt.Errorf("simulate: %s: unit %d %s: %w", name, fu.ID, label, err)
			}
			u.Points = append(u.Points, p)
		}
		m.Units = append(m.Units, u)
	}
	if _, err := m.NewDevice(); err != nil {
		return nil, fmt.Errorf("simulate: %s: %w", name, err)
	}
	return m, nil
}

func (ff *fileFault) convert() (Fault, error) {
	kind, err := ParseFault(ff.Kind)
	if err != nil {
		return Fault{}, err
	}
	f := Fault{Kind: kind, Delay: ff.Delay.d, Count: ff.Count}
	if ff.Code < 0 || ff.Code > 255 || ff.Code != 0 && kind != Exception {
		return Fault{}, fmt.Errorf("code %d: only for kind exception, 1..255", ff.Code)
	}
	f.Code = byte(ff.Code)
	if ff.Delay.set != (kind == Slow || kind == Late) {
		return Fault{}, fmt.Errorf("delay: required for slow and late, and only for them")
	}
	if ff.Count < 0 {
		return Fault{}, fmt.Errorf("count %d: want >= 0", ff.Count)
	}
	if ff.Garbage != nil && kind != Garbage {
		return Fault{}, fmt.Errorf("garbage: only for kind garbage")
	}
	for _, b := range ff.Garbage {
		if b < 0 || b > 255 {
			return Fault{}, fmt.Errorf("garbage byte %d: want 0..255", b)
		}
		f.Garbage = append(f.Garbage, byte(b))
	}
	return f, nil
}

func (fr *fileRegister) convert() (Point, error) {
	p := Point{Name: fr.Name}
	var err error
	if p.Table, err = ParseTable(fr.Table); err != nil {
		return p, err
	}
	if fr.Address == nil {
		return p, fmt.Errorf("address missing")
	}
	if *fr.Address < 0 || *fr.Address > 0xFFFF {
		return p, fmt.Errorf("address %d: want 0..65535", *fr.Address)
	}
	p.Address = uint16(*fr.Address)
	typ := fr.Type
	if typ == "" && p.Table.isBits() {
		typ = "bool"
	}
	if p.Layout.Type, err = value.ParseType(typ); err != nil {
		return p, err
	}
	if p.Layout.WordOrder, err = value.ParseOrder(fr.WordOrder); err != nil {
		return p, fmt.Errorf("word_order: %w", err)
	}
	if p.Layout.ByteOrder, err = value.ParseOrder(fr.ByteOrder); err != nil {
		return p, fmt.Errorf("byte_order: %w", err)
	}
	g := &p.Gen
	allowed := map[string]bool{}
	switch fr.Gen {
	case "", "constant":
		g.Kind = Constant
		allowed["value"] = true
		if g.Value, err = constant(p.Layout.Type, fr.Value); err != nil {
			return p, err
		}
	case "counter":
		g.Kind = Counter
		allowed["start"], allowed["step"], allowed["interval"] = true, true, true
		g.Start, g.Step, g.Interval = deref(fr.Start, 0), deref(fr.Step, 1), fr.Interval.d
	case "sine", "square":
		g.Kind = Sine
		if fr.Gen == "square" {
			g.Kind = Square
		}
		allowed["amplitude"], allowed["offset"], allowed["period"] = true, true, true
		g.Amplitude, g.Offset, g.Period = deref(fr.Amplitude, 0), deref(fr.Offset, 0), fr.Period.d
		if g.Period <= 0 {
			return p, fmt.Errorf("gen %s: period must be > 0", fr.Gen)
		}
	default:
		return p, fmt.Errorf("gen %q: want constant, counter, sine or square", fr.Gen)
	}
	for key, set := range map[string]bool{
		"value": fr.Value != nil, "start": fr.Start != nil, "step": fr.Step != nil, "interval": fr.Interval.set,
		"amplitude": fr.Amplitude != nil, "offset": fr.Offset != nil, "period": fr.Period.set,
	} {
		if set && !allowed[key] {
			gen := fr.Gen
			if gen == "" {
				gen = "constant"
			}
			return p, fmt.Errorf("%s does not apply to gen %s", key, gen)
		}
	}
	return p, nil
}

func deref(p *float64, def float64) float64 {
	if p == nil {
		return def
	}
	return *p
}

// constant converts a TOML value (bool, integer, float; nil is 0) to t.
func constant(t value.Type, v any) (value.Value, error) {
	switch x := v.(type) {
	case nil:
		return value.Value{Type: t}, nil
	case bool:
		if t != value.Bool {
			return value.Value{}, fmt.Errorf("value %v for type %v", x, t)
		}
		if x {
			return value.Value{Type: t, Bits: 1}, nil
		}
		return value.Value{Type: t}, nil
	case int64:
		return value.FromInt(t, x)
	case float64:
		if t != value.F32 && t != value.F64 && math.Trunc(x) != x {
			return value.Value{}, fmt.Errorf("value %v: not an integer, type is %v", x, t)
		}
		return value.FromFloat(t, x)
	}
	return value.Value{}, fmt.Errorf("value %v: want a number or a boolean", v)
}

// demoMap is the built-in map: the device `tinyscada run` polls when no
// configuration names one. The poller's demo configuration matches it.
const demoMap = `
baud = 9600
byte_timing = true

# Unit 1: a three-phase energy meter (one phase shown).
[[unit]]
id = 1
[[unit.register]]
name = "voltage"        # V, input registers 0-1
table = "input"
address = 0
type = "f32"
gen = "sine"
offset = 230.0
amplitude = 3.0
period = "60s"
[[unit.register]]
name = "current"        # A, input registers 2-3
table = "input"
address = 2
type = "f32"
gen = "sine"
offset = 12.0
amplitude = 4.0
period = "45s"
[[unit.register]]
name = "power"          # W, input registers 4-5
table = "input"
address = 4
type = "f32"
gen = "sine"
offset = 2760.0
amplitude = 900.0
period = "45s"
[[unit.register]]
name = "energy"         # Wh, input registers 6-7, +1 per second
table = "input"
address = 6
type = "u32"
gen = "counter"
start = 123400
step = 1
interval = "1s"
[[unit.register]]
name = "frequency"      # Hz x 100, input register 8
table = "input"
address = 8
type = "u16"
value = 5000
[[unit.register]]
name = "ct_ratio"       # holding register 0, writable
table = "holding"
address = 0
type = "u16"
value = 100
[[unit.register]]
name = "breaker_closed" # discrete input 0
table = "discrete"
address = 0
value = true
[[unit.register]]
name = "alarm"          # discrete input 1, on for 60 s every 2 min
table = "discrete"
address = 1
gen = "square"
amplitude = 1
period = "120s"

# Unit 2: a room climate sensor with a fan and a heater.
[[unit]]
id = 2
[[unit.register]]
name = "temperature"    # degC x 10, input register 0
table = "input"
address = 0
type = "s16"
gen = "sine"
offset = 215
amplitude = 35
period = "300s"
[[unit.register]]
name = "humidity"       # % x 10, input register 1
table = "input"
address = 1
type = "u16"
gen = "sine"
offset = 450
amplitude = 100
period = "600s"
[[unit.register]]
name = "uptime"         # s, input registers 2-3, low word first
table = "input"
address = 2
type = "u32"
word_order = "little"
gen = "counter"
interval = "1s"
[[unit.register]]
name = "pressure"       # hPa, input registers 4-5, low word first
table = "input"
address = 4
type = "f32"
word_order = "little"
value = 1013.25
[[unit.register]]
name = "setpoint"       # degC x 10, holding register 0, writable
table = "holding"
address = 0
type = "s16"
value = 210
[[unit.register]]
name = "fan"            # coil 0, writable
table = "coil"
address = 0
value = false
[[unit.register]]
name = "heater"         # coil 1, writable
table = "coil"
address = 1
value = false
[[unit.register]]
name = "door_open"      # discrete input 0, open 45 s every 90 s
table = "discrete"
address = 0
gen = "square"
amplitude = 1
period = "90s"
`

// DemoMapText returns the built-in map as TOML: an example of the format.
func DemoMapText() string { return demoMap }

// Demo returns the built-in map, at 9600 baud with byte timing:
//
//	unit 1, an energy meter: input registers 0 voltage (f32, V), 2 current
//	(f32, A), 4 power (f32, W), 6 energy (u32, Wh, counting), 8 frequency
//	(u16, Hz x 100); holding register 0 ct_ratio (u16, writable); discrete
//	inputs 0 breaker_closed, 1 alarm.
//	unit 2, a climate sensor: input registers 0 temperature (s16, degC x 10),
//	1 humidity (u16, % x 10), 2 uptime (u32 low word first, s), 4 pressure
//	(f32 low word first, hPa); holding register 0 setpoint (s16, degC x 10,
//	writable); coils 0 fan, 1 heater (writable); discrete input 0 door_open.
//
// Word and byte order are big-endian unless said.
func Demo() *Map {
	m, err := ParseMap([]byte(demoMap), "demo map")
	if err != nil {
		panic(err) // the built-in map is checked by TestDemo
	}
	return m
}
