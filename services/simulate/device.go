package simulate

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/tinyscada/tinyscada/shared/modbus"
	"github.com/tinyscada/tinyscada/shared/modbus/value"
)

// Table is one of the four Modbus data tables.
type Table uint8

// Tables.
const (
	Coils Table = iota
	DiscreteInputs
	HoldingRegisters
	InputRegisters
)

var tableNames = [...]string{Coils: "coil", DiscreteInputs: "discrete", HoldingRegisters: "holding", InputRegisters: "input"}

// String returns the configuration name of t.
func (t Table) String() string {
	if int(t) < len(tableNames) {
		return tableNames[t]
	}
	return fmt.Sprintf("table(%d)", t)
}

// ParseTable returns the Table named s: coil, discrete, holding or input.
func ParseTable(s string) (Table, error) {
	for i, n := range tableNames {
		if n == s {
			return Table(i), nil
		}
	}
	return 0, fmt.Errorf("unknown table %q (want coil, discrete, holding or input)", s)
}

// isBits reports whether t holds bits rather than registers.
func (t Table) isBits() bool { return t == Coils || t == DiscreteInputs }

// GenKind says how a point's value changes.
type GenKind uint8

// Generators.
const (
	Constant GenKind = iota // Value, until written
	Counter                 // Start + Step per read (Interval 0) or per Interval
	Sine                    // Offset + Amplitude·sin(2π·t/Period)
	Square                  // Offset + Amplitude in the first half of each Period, else Offset
)

// Gen is a point's generator.
type Gen struct {
	Kind GenKind
	// Value is the Constant's value (its type is the point's).
	Value value.Value
	// Start and Step are the Counter's first value and increment; integer
	// counters wrap around at their type's width.
	Start, Step float64
	// Interval makes a Counter step with time instead of with each read.
	Interval time.Duration
	// Amplitude, Offset and Period shape Sine and Square.
	Amplitude, Offset float64
	Period            time.Duration
}

// Point is a value laid out in one table of a unit.
type Point struct {
	// Name is for people (logs, the demo's comment); it is not on the wire.
	Name    string
	Table   Table
	Address uint16
	// Layout of the value in registers; bit tables take Type value.Bool.
	Layout value.Layout
	Gen    Gen
}

// FaultKind is a way for a unit to misbehave.
type FaultKind uint8

// Faults.
const (
	NoFault   FaultKind = iota
	NoAnswer            // stay silent
	BadCRC              // answer with a wrong CRC
	Truncate            // send only the first half of the reply
	Exception           // answer with exception Fault.Code
	Slow                // answer after Fault.Delay
	Garbage             // send Fault.Garbage, then the reply
	Late                // answer after Fault.Delay, longer than the master's timeout
)

var faultNames = [...]string{NoFault: "none", NoAnswer: "no_answer", BadCRC: "crc", Truncate: "truncate",
	Exception: "exception", Slow: "slow", Garbage: "garbage", Late: "late"}

// String returns the configuration name of k.
func (k FaultKind) String() string {
	if int(k) < len(faultNames) {
		return faultNames[k]
	}
	return fmt.Sprintf("fault(%d)", k)
}

// ParseFault returns the FaultKind named s.
func ParseFault(s string) (FaultKind, error) {
	for i, n := range faultNames {
		if n == s {
			return FaultKind(i), nil
		}
	}
	return 0, fmt.Errorf("unknown fault %q (want none, no_answer, crc, truncate, exception, slow, garbage or late)", s)
}

// Fault is injected into a unit's answers.
type Fault struct {
	Kind FaultKind
	// Code is the exception code of Exception (0 means 4, server device
	// failure).
	Code byte
	// Delay is the wait before the answer of Slow and Late.
	Delay time.Duration
	// Garbage is what Garbage sends before the reply (nil means 00 FF,
	// then the unit id and function code, then 7F: a near-miss header).
	Garbage []byte
	// Count limits the fault to the next Count requests; 0 means until
	// changed.
	Count int
}

// Device is the simulated slaves on one bus: units by id, their tables,
// generators, faults and request counters. It is safe for concurrent use
// (a test changes faults and values while a Server answers).
type Device struct {
	mu    sync.Mutex
	units map[byte]*unit
	start time.Time
	stats Stats
}

type unit struct {
	id     byte
	strict bool
	bits   [2]map[uint16]bool   // coils, discrete inputs
	regs   [2]map[uint16]uint16 // holding, input registers
	gens   []*genPoint
	fault  Fault
}

type genPoint struct {
	Point
	n     float64   // counter steps so far
	last  time.Time // counter: last step (Interval) time
	words [4]uint16
}

// Stats counts what a Device was asked.
type Stats struct {
	// Frames is the number of well-formed requests (right CRC) received,
	// for any unit id.
	Frames uint64
	// CRCErrors counts requests dropped for a wrong CRC.
	CRCErrors uint64
	// Resyncs counts times the framing was lost and regained after a
	// silence (a partial or unparseable frame dropped).
	Resyncs uint64
	// Requests counts well-formed requests per unit id and function code,
	// answered or not (faults and absent units included; not broadcasts).
	Requests map[UnitFunc]uint64
}

// UnitFunc keys Stats.Requests.
type UnitFunc struct{ Unit, Function byte }

// NewDevice returns a Device with no units.
func NewDevice() *Device {
	return &Device{units: make(map[byte]*unit), start: time.Now(), stats: Stats{Requests: make(map[UnitFunc]uint64)}}
}

// AddUnit adds unit id (1-247). strict makes reads and writes of unmapped
// addresses answer exception 2 (illegal data address); otherwise unmapped
// registers and bits read as 0 and take writes. Error: id out of range or
// already present.
func (d *Device) AddUnit(id byte, strict bool) error {
	if id < 1 || id > 247 {
		return fmt.Errorf("simulate: unit id %d: want 1..247", id)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.units[id] != nil {
		return fmt.Errorf("simulate: unit %d defined twice", id)
	}
	u := &unit{id: id, strict: strict}
	for i := range u.bits {
		u.bits[i] = make(map[uint16]bool)
		u.regs[i] = make(map[uint16]uint16)
	}
	d.units[id] = u
	return nil
}

// Units returns the unit ids, ascending.
func (d *Device) Units() []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	ids := make([]byte, 0, len(d.units))
	for id := range d.units {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

// AddPoint maps p on unit id. Errors: unknown unit, a register value type
// in a bit table (or a non-bool in one), a range past address 65535, a
// constant that does not fit, or an overlap with a point already mapped.
func (d *Device) AddPoint(id byte, p Point) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	u := d.units[id]
	if u == nil {
		return fmt.Errorf("simulate: point %q: no unit %d", p.Name, id)
	}
	n := p.Layout.Type.Registers()
	switch {
	case n == 0:
		return fmt.Errorf("simulate: unit %d point %q: invalid type", id, p.Name)
	case p.Table.isBits() && p.Layout.Type != value.Bool:
		return fmt.Errorf("simulate: unit %d point %q: a %v table holds only bool, not %v", id, p.Name, p.Table, p.Layout.Type)
	case int(p.Table) >= len(tableNames):
		return fmt.Errorf("simulate: unit %d point %q: invalid table", id, p.Name)
	case int(p.Address)+n > 0x10000:
		return fmt.Errorf("simulate: unit %d point %q: %v at %d runs past address 65535", id, p.Name, p.Layout.Type, p.Address)
	}
	for a := int(p.Address); a < int(p.Address)+n; a++ {
		if u.mapped(p.Table, uint16(a)) {
			return fmt.Errorf("simulate: unit %d point %q: %v address %d already mapped", id, p.Name, p.Table, a)
		}
	}
	gp := &genPoint{Point: p, last: d.start}
	gp.n = 0
	if err := gp.eval(time.Now(), d.start, false); err != nil {
		return fmt.Errorf("simulate: unit %d point %q: %w", id, p.Name, err)
	}
	u.store(p.Table, p.Address, gp.words[:n])
	if p.Gen.Kind != Constant {
		u.gens = append(u.gens, gp)
	}
	return nil
}

// mapped reports whether address a of table t holds a value.
func (u *unit) mapped(t Table, a uint16) bool {
	if t.isBits() {
		_, ok := u.bits[t][a]
		return ok
	}
	_, ok := u.regs[t-HoldingRegisters][a]
	return ok
}

// store sets words (or, in a bit table, bits: non-zero is on) from a.
func (u *unit) store(t Table, a uint16, words []uint16) {
	for i, w := range words {
		if t.isBits() {
			u.bits[t][a+uint16(i)] = w != 0
		} else {
			u.regs[t-HoldingRegisters][a+uint16(i)] = w
		}
	}
}

// eval computes the point's value at now into gp.words; read says a
// request reads it (a per-read counter steps).
func (gp *genPoint) eval(now, start time.Time, read bool) error {
	g := &gp.Gen
	var v value.Value
	var err error
	typ := gp.Layout.Type
	switch g.Kind {
	case Constant:
		v = g.Value
	case Counter:
		if g.Interval > 0 {
			if steps := now.Sub(gp.last) / g.Interval; steps > 0 {
				gp.n += float64(steps)
				gp.last = gp.last.Add(steps * g.Interval)
			}
		} else if read {
			gp.n++
		}
		x := g.Start + g.Step*gp.n
		switch typ {
		case value.F32, value.F64:
			v, err = value.FromFloat(typ, x)
		default: // wrap around at the type's width
			v = value.Value{Type: typ, Bits: uint64(int64(x))}
			if bits := 16 * typ.Registers(); bits < 64 {
				v.Bits &= 1<<bits - 1
			}
			if typ == value.Bool {
				v.Bits &= 1
			}
		}
	case Sine, Square:
		phase := 0.0
		if g.Period > 0 {
			phase = float64(now.Sub(start)%g.Period) / float64(g.Period)
		}
		x := g.Offset + g.Amplitude*math.Sin(2*math.Pi*phase)
		if g.Kind == Square {
			x = g.Offset
			if phase < 0.5 {
				x += g.Amplitude
			}
		}
		if typ != value.F32 && typ != value.F64 {
			x = clamp(typ, x)
		}
		v, err = value.FromFloat(typ, x)
	default:
		return fmt.Errorf("unknown generator %d", g.Kind)
	}
	if err != nil {
		return err
	}
	return value.Encode(gp.words[:], v, gp.Layout)
}

// clamp limits x to the range of the integer type t.
func clamp(t value.Type, x float64) float64 {
	lo, hi := 0.0, 1.0
	switch t {
	case value.U16:
		hi = math.MaxUint16
	case value.S16:
		lo, hi = math.MinInt16, math.MaxInt16
	case value.U32:
		hi = math.MaxUint32
	case value.S32:
		lo, hi = math.MinInt32, math.MaxInt32
	case value.U64:
		hi = 1<<64 - 2048
	case value.S64:
		lo, hi = math.MinInt64, 1<<63-1024
	case value.Bool:
		return x
	}
	return math.Max(lo, math.Min(hi, x))
}

// SetFault sets the fault of unit id (NoFault clears it). Error: no such
// unit.
func (d *Device) SetFault(id byte, f Fault) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	u := d.units[id]
	if u == nil {
		return fmt.Errorf("simulate: set fault: no unit %d", id)
	}
	u.fault = f
	return nil
}

// write stores words from a, dropping generators of the points written.
func (u *unit) write(t Table, a uint16, words []uint16) {
	end := int(a) + len(words)
	kept := u.gens[:0]
	for _, gp := range u.gens {
		if gp.Table == t && int(gp.Address) < end && int(gp.Address)+gp.Layout.Type.Registers() > int(a) {
			continue
		}
		kept = append(kept, gp)
	}
	clear(u.gens[len(kept):])
	u.gens = kept
	u.store(t, a, words)
}

// Registers returns n registers from address a of table t of unit id as a
// master would read them now (generators evaluated, per-read counters not
// stepped). Error: no such unit.
func (d *Device) Registers(id byte, t Table, a uint16, n int) ([]uint16, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	u := d.units[id]
	if u == nil {
		return nil, fmt.Errorf("simulate: registers: no unit %d", id)
	}
	u.refresh(t, a, n, time.Now(), d.start, false)
	out := make([]uint16, n)
	for i := range out {
		ad := a + uint16(i)
		if t.isBits() {
			if u.bits[t][ad] {
				out[i] = 1
			}
		} else {
			out[i] = u.regs[t-HoldingRegisters][ad]
		}
	}
	return out, nil
}

// refresh evaluates the generators overlapping [a, a+n) of t.
func (u *unit) refresh(t Table, a uint16, n int, now, start time.Time, read bool) {
	for _, gp := range u.gens {
		w := gp.Layout.Type.Registers()
		if gp.Table != t || int(gp.Address) >= int(a)+n || int(gp.Address)+w <= int(a) {
			continue
		}
		if gp.eval(now, start, read) == nil {
			u.store(t, gp.Address, gp.words[:w])
		}
	}
}

// Stats returns a copy of the counters.
func (d *Device) Stats() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.stats
	s.Requests = make(map[UnitFunc]uint64, len(d.stats.Requests))
	for k, v := range d.stats.Requests {
		s.Requests[k] = v
	}
	return s
}

// Requests returns the number of well-formed requests for unit id with
// function code fc, whether the unit exists and answered or not.
func (d *Device) Requests(id, fc byte) uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stats.Requests[UnitFunc{id, fc}]
}

// ResetStats sets all counters to zero.
func (d *Device) ResetStats() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stats = Stats{Requests: make(map[UnitFunc]uint64)}
}

// answer is what the device does with one request frame.
type answer struct {
	reply []byte // frame to send (nil: stay silent)
	pre   []byte // bytes to send before the reply (Garbage)
	delay time.Duration
}

// handle processes one complete request frame and appends the reply to
// dst. Frames with a wrong CRC, for absent units or broadcast get no reply.
func (d *Device) handle(dst, frame []byte, now time.Time) answer {
	req, err := modbus.ParseRequest(frame)
	d.mu.Lock()
	defer d.mu.Unlock()
	ex, _ := err.(*modbus.ExceptionError) // ParseRequest does not wrap it
	switch {
	case errors.Is(err, modbus.ErrCRC):
		d.stats.CRCErrors++
		return answer{}
	case err != nil && ex == nil:
		d.stats.Resyncs++
		return answer{}
	}
	d.stats.Frames++
	u := d.units[req.Unit]
	if req.Unit == 0 { // broadcast: writes to every unit, no answer
		if ex == nil && req.ReplyLen() == 8 {
			for _, u := range d.units {
				u.serve(nil, &req, now, d.start)
			}
		}
		return answer{}
	}
	d.stats.Requests[UnitFunc{req.Unit, req.Function}]++
	if u == nil {
		return answer{}
	}
	f := u.fault
	if f.Count > 0 {
		if u.fault.Count--; u.fault.Count == 0 {
			u.fault = Fault{}
		}
	}
	var reply []byte
	switch {
	case ex != nil:
		reply = modbus.AppendException(dst, req.Unit, ex.Function, ex.Code)
	case f.Kind == Exception:
		code := f.Code
		if code == 0 {
			code = modbus.ExServerDeviceFailure
		}
		reply = modbus.AppendException(dst, req.Unit, req.Function, code)
	default:
		reply = u.serve(dst, &req, now, d.start)
	}
	a := answer{reply: reply}
	switch f.Kind {
	case NoAnswer:
		a.reply = nil
	case BadCRC:
		a.reply[len(a.reply)-1] ^= 0x5A
	case Truncate:
		a.reply = a.reply[:len(a.reply)/2]
	case Slow, Late:
		a.delay = f.Delay
	case Garbage:
		a.pre = f.Garbage
		if a.pre == nil {
			a.pre = []byte{0x00, 0xFF, req.Unit, req.Function, 0x7F}
		}
	}
	return a
}

// serve executes a valid request on u and appends the reply (or an
// exception) to dst.
func (u *unit) serve(dst []byte, r *modbus.Request, now, start time.Time) []byte {
	var t Table
	switch r.Function {
	case modbus.FuncReadCoils, modbus.FuncWriteSingleCoil, modbus.FuncWriteMultipleCoils:
		t = Coils
	case modbus.FuncReadDiscreteInputs:
		t = DiscreteInputs
	case modbus.FuncReadHoldingRegisters, modbus.FuncWriteSingleRegister, modbus.FuncWriteMultipleRegisters:
		t = HoldingRegisters
	default:
		t = InputRegisters
	}
	n := int(r.Quantity)
	if r.Function == modbus.FuncWriteSingleCoil || r.Function == modbus.FuncWriteSingleRegister {
		n = 1
	}
	if u.strict {
		for i := range n {
			if !u.mapped(t, r.Address+uint16(i)) {
				return modbus.AppendException(dst, r.Unit, r.Function, modbus.ExIllegalDataAddress)
			}
		}
	}
	switch r.Function {
	case modbus.FuncReadCoils, modbus.FuncReadDiscreteInputs:
		u.refresh(t, r.Address, n, now, start, true)
		var data [modbus.MaxReadBits / 8]byte
		packed := data[:(n+7)/8]
		clear(packed)
		for i := range n {
			if u.bits[t][r.Address+uint16(i)] {
				packed[i/8] |= 1 << (i % 8)
			}
		}
		return modbus.AppendReadReply(dst, r.Unit, r.Function, packed)
	case modbus.FuncReadHoldingRegisters, modbus.FuncReadInputRegisters:
		u.refresh(t, r.Address, n, now, start, true)
		var data [2 * modbus.MaxReadRegisters]byte
		for i := range n {
			w := u.regs[t-HoldingRegisters][r.Address+uint16(i)]
			data[2*i], data[2*i+1] = byte(w>>8), byte(w)
		}
		return modbus.AppendReadReply(dst, r.Unit, r.Function, data[:2*n])
	case modbus.FuncWriteSingleCoil:
		u.write(t, r.Address, []uint16{r.Value})
	case modbus.FuncWriteSingleRegister:
		u.write(t, r.Address, []uint16{r.Value})
	case modbus.FuncWriteMultipleCoils:
		words := make([]uint16, n)
		for i := range words {
			words[i] = uint16(r.Data[i/8]>>(i%8)) & 1
		}
		u.write(t, r.Address, words)
	case modbus.FuncWriteMultipleRegisters:
		u.write(t, r.Address, modbus.DecodeRegisters(make([]uint16, 0, n), r.Data))
	}
	return modbus.AppendWriteReply(dst, r)
}
