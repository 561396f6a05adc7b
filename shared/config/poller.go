package config

import (
	"fmt"
	"math"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/tinyscada/tinyscada/shared/modbus/value"
)

// Poller configures the poller role: the serial ports it owns, the devices
// on them and the points of each device.
//
// The built-in defaults hold the demo: one port on the simulator's
// pseudo-terminal (<state_dir>/run/sim-tty, simulate = true) and the
// devices of the simulator's demo register map. Like every default, they
// stay unless the file replaces them; they go together: a file that writes
// [[poller.port]] or [[poller.device]] entries replaces both (and
// `port = []` polls nothing).
//
// Keys left out of a port, device or point take the defaults documented on
// their fields; validation fills them in, so the effective configuration
// (`tinyscada config check`) shows them.
type Poller struct {
	Port   []PollerPort   `toml:"port"`
	Device []PollerDevice `toml:"device"`

	// Outbox is how many data messages may wait for the logger's
	// acknowledgement. When it is full no new sample is taken
	// (back-pressure); nothing is dropped.
	Outbox int `toml:"outbox"`
	// AckTimeout is how long a data message may wait for its
	// acknowledgement before it is published again.
	AckTimeout Duration `toml:"ack_timeout"`
	// RetainValues keeps the last value of every point retained on
	// <prefix>/value/<device>/<point>: the broker derives it from the data
	// messages it routes (see Units).
	RetainValues bool `toml:"retain_values"`
	// MaxGap is how many unused registers (or bits) one read may span to
	// cover two points in one request; a device may override it.
	MaxGap int `toml:"max_gap"`
	// MaxRegisters and MaxBits cap the quantity of one read (the protocol
	// allows 125 registers and 2000 bits); a device may override them.
	MaxRegisters int `toml:"max_registers"`
	MaxBits      int `toml:"max_bits"`
	// OfflineBackoffMax caps the exponential backoff between attempts to
	// reach an offline device (the first retry comes after one interval).
	OfflineBackoffMax Duration `toml:"offline_backoff_max"`
	// ReopenBackoffMax caps the backoff between attempts to reopen a port
	// that vanished or could not be opened (the first comes after 100ms).
	ReopenBackoffMax Duration `toml:"reopen_backoff_max"`
	// LogInterval is how often the same error of a port or device is
	// logged at most; repeats in between are counted and reported with the
	// next one.
	LogInterval Duration `toml:"log_interval"`
}

// PollerPort is one serial port the poller owns.
type PollerPort struct {
	// Name identifies the port in device entries and logs.
	Name string `toml:"name"`
	// Device is the path of the serial device (/dev/ttyUSB0); a relative
	// path is taken relative to state_dir (see Path).
	Device string `toml:"device"`
	// Mode is "rtu" (Modbus RTU, the default) or "line" (newline-terminated
	// ASCII records, see LineFormat).
	Mode string `toml:"mode"`
	// Simulate says that the device is the pseudo-terminal of a simulator:
	// `tinyscada run` starts `tinyscada simulate -link <device>` for it.
	Simulate bool `toml:"simulate"`
	// Baud is the line speed; default 9600.
	Baud int `toml:"baud"`
	// DataBits is 7 or 8; default 8.
	DataBits int `toml:"data_bits"`
	// Parity is "none" (default), "even" or "odd".
	Parity string `toml:"parity"`
	// StopBits is 1 (default) or 2.
	StopBits int `toml:"stop_bits"`
	// Timeout is how long a reply may take, counted from the end of the
	// request, unless a device sets its own; default 1s. In line mode it is
	// how long a device may stay silent before it is marked offline
	// (default: three times its interval, at least this timeout).
	Timeout Duration `toml:"timeout"`
	// Retries is how many more times a request that got no good reply is
	// sent (exceptions are not retried); default 0.
	Retries int `toml:"retries"`
	// RS485 switches the driver's RS-485 mode on (TIOCSRS485); the poller
	// fails to open a port that cannot do it, saying so.
	RS485 bool `toml:"rs485"`
	// RS485RTSAfterSend drives RTS after sending instead of while sending.
	RS485RTSAfterSend bool `toml:"rs485_rts_after_send"`
	// RS485DelayBeforeSend and RS485DelayAfterSend are the driver's delays
	// around a transmission (millisecond resolution).
	RS485DelayBeforeSend Duration `toml:"rs485_delay_before_send"`
	RS485DelayAfterSend  Duration `toml:"rs485_delay_after_send"`
	// RS485RxDuringTx keeps the receiver on while sending.
	RS485RxDuringTx bool `toml:"rs485_rx_during_tx"`
	// LineFormat, in line mode, is "kv" (default: key=value fields
	// separated by spaces, tabs, commas or semicolons) or "regex" (the
	// named groups of LineRegex).
	// Left out of the effective configuration of an rtu port, where it
	// does not apply.
	LineFormat string `toml:"line_format,omitempty"`
	// LineRegex is the regular expression (Go syntax) of a record in
	// line_format "regex"; each named group is a field.
	LineRegex string `toml:"line_regex,omitempty"`
}

// PollerDevice is one device on a port.
type PollerDevice struct {
	// Name is the device's topic level (<prefix>/data/<name>).
	Name string `toml:"name"`
	// Port names the PollerPort the device is on.
	Port string `toml:"port"`
	// Unit is the Modbus slave id, 1 to 247 (rtu ports only).
	Unit int `toml:"unit,omitempty"`
	// Interval is the time between the starts of two poll rounds; default
	// 1s. In line mode it is the expected time between records.
	Interval Duration `toml:"interval"`
	// Timeout, when not 0, replaces the port's timeout for this device.
	// Validation fills in the timeout in force when it is left out: the
	// port's (rtu), or three times the interval and at least the port's
	// (line), so that the effective configuration shows it.
	Timeout Duration `toml:"timeout"`
	// MaxGap, MaxRegisters and MaxBits replace the poller's values for
	// this device.
	MaxGap       *int `toml:"max_gap"`
	MaxRegisters *int `toml:"max_registers"`
	MaxBits      *int `toml:"max_bits"`
	// Point lists what is read from the device. In line mode a device
	// without points publishes every field of a record as a number.
	Point []PollerPoint `toml:"point"`
}

// PollerPoint is one value of a device.
type PollerPoint struct {
	// Name is the point's key in data messages and its topic level.
	Name string `toml:"name"`
	// Table is coil, discrete, holding or input (rtu ports only).
	Table string `toml:"table,omitempty"`
	// Address is the first coil or register, 0-based as on the wire.
	Address int `toml:"address"`
	// Type is bool, u16, s16, u32, s32, u64, s64, f32 or f64; default
	// bool in the coil and discrete tables, u16 in the register tables and
	// f64 in line mode.
	Type string `toml:"type"`
	// WordOrder is the order of the registers of a 32- or 64-bit value,
	// ByteOrder the order of the bytes in each register: "big" (default)
	// or "little".
	WordOrder string `toml:"word_order"`
	ByteOrder string `toml:"byte_order"`
	// Scale and Offset make the published value raw*scale+offset; default
	// 1 and 0. A value scaled this way is published as a number with a
	// fraction.
	Scale  float64 `toml:"scale"`
	Offset float64 `toml:"offset"`
	// Unit is the engineering unit ("V", "kWh"), shown on the value topic.
	Unit string `toml:"unit"`
	// Writable marks a point that remote commands may write (coil and
	// holding tables only); it may not overlap another point.
	Writable bool `toml:"writable"`
	// Key is the record field of the point in line mode; default Name.
	Key string `toml:"key,omitempty"`
}

// Port modes.
const (
	ModeRTU  = "rtu"
	ModeLine = "line"
)

// Point tables.
const (
	TableCoil     = "coil"
	TableDiscrete = "discrete"
	TableHolding  = "holding"
	TableInput    = "input"
)

// Path returns where the port's device is: Device itself when absolute,
// else Device joined to stateDir (which Load makes absolute).
func (p *PollerPort) Path(stateDir string) string {
	if filepath.IsAbs(p.Device) {
		return p.Device
	}
	return filepath.Join(stateDir, p.Device)
}

// ParityLetter returns the parity as the letter of "8N1": N, E or O.
func (p *PollerPort) ParityLetter() string {
	switch p.Parity {
	case "even":
		return "E"
	case "odd":
		return "O"
	}
	return "N"
}

// Layout returns the register layout of the point (its type and orders);
// valid after validation.
func (pt *PollerPoint) Layout() value.Layout {
	t, _ := value.ParseType(pt.Type)
	w, _ := value.ParseOrder(pt.WordOrder)
	b, _ := value.ParseOrder(pt.ByteOrder)
	return value.Layout{Type: t, WordOrder: w, ByteOrder: b}
}

// IsBits reports whether the point is in a bit table (coil or discrete).
func (pt *PollerPoint) IsBits() bool {
	return pt.Table == TableCoil || pt.Table == TableDiscrete
}

// Size returns how many bits (bit tables) or registers the point spans.
func (pt *PollerPoint) Size() int {
	if pt.IsBits() {
		return 1
	}
	return pt.Layout().Type.Registers()
}

// DeviceTimeout returns the reply timeout of d on port p.
func (d *PollerDevice) DeviceTimeout(p *PollerPort) time.Duration {
	if d.Timeout.Duration > 0 {
		return d.Timeout.Duration
	}
	return p.Timeout.Duration
}

// Limits returns the device's max gap, max registers and max bits per
// read: its own where set, else the poller's.
func (d *PollerDevice) Limits(p *Poller) (gap, regs, bits int) {
	gap, regs, bits = p.MaxGap, p.MaxRegisters, p.MaxBits
	if d.MaxGap != nil {
		gap = *d.MaxGap
	}
	if d.MaxRegisters != nil {
		regs = *d.MaxRegisters
	}
	if d.MaxBits != nil {
		bits = *d.MaxBits
	}
	return gap, regs, bits
}

// FindPort returns the port named name, or nil.
func (p *Poller) FindPort(name string) *PollerPort {
	for i := range p.Port {
		if p.Port[i].Name == name {
			return &p.Port[i]
		}
	}
	return nil
}

// Protocol limits, as in the modbus package.
const (
	maxReadRegisters = 125
	maxReadBits      = 2000
	maxUnit          = 247
)

// defaultPoller is the poller part of Default(): the demo.
func defaultPoller() Poller {
	return Poller{
		Port: []PollerPort{{
			Name:     "sim",
			Device:   "run/sim-tty",
			Mode:     ModeRTU,
			Simulate: true,
			Baud:     9600,
			DataBits: 8,
			Parity:   "none",
			StopBits: 1,
			Timeout:  Duration{500 * time.Millisecond},
		}},
		Device:            demoDevices(),
		Outbox:            4096,
		AckTimeout:        Duration{40 * time.Second},
		RetainValues:      true,
		MaxGap:            8,
		MaxRegisters:      maxReadRegisters,
		MaxBits:           maxReadBits,
		OfflineBackoffMax: Duration{30 * time.Second},
		ReopenBackoffMax:  Duration{10 * time.Second},
		LogInterval:       Duration{time.Minute},
	}
}

func (p *Poller) validate(ch *checker) {
	// The demo's port and devices go together: a file that writes one of
	// them replaces both.
	ports, devices := ch.has("port") || ch.has("port[0]"), ch.has("device") || ch.has("device[0]")
	switch {
	case ports && !devices:
		p.Device = nil
	case devices && !ports:
		p.Port = nil
	}
	// Empty lists are nil, whether written as [] or left out, so that the
	// effective configuration decodes to itself.
	if len(p.Port) == 0 {
		p.Port = nil
	}
	if len(p.Device) == 0 {
		p.Device = nil
	}
	for i := range p.Device {
		if len(p.Device[i].Point) == 0 {
			p.Device[i].Point = nil
		}
	}
	ch.intRange("outbox", p.Outbox, 1, 1<<20)
	ch.atLeast("ack_timeout", p.AckTimeout, 100*time.Millisecond)
	ch.intRange("max_gap", p.MaxGap, 0, maxReadBits)
	ch.intRange("max_registers", p.MaxRegisters, 1, maxReadRegisters)
	ch.intRange("max_bits", p.MaxBits, 1, maxReadBits)
	ch.atLeast("offline_backoff_max", p.OfflineBackoffMax, 10*time.Millisecond)
	ch.atLeast("reopen_backoff_max", p.ReopenBackoffMax, 100*time.Millisecond)
	ch.positive("log_interval", p.LogInterval)

	portIndex := map[string]int{}
	paths := map[string]int{}
	for i := range p.Port {
		pc := ch.sub(indexKey("port", i))
		p.Port[i].validate(pc)
		name := p.Port[i].Name
		if j, dup := portIndex[name]; dup && name != "" {
			pc.errorf("name", "duplicate port name %q (also port[%d])", name, j)
		} else {
			portIndex[name] = i
		}
		if dev := p.Port[i].Device; dev != "" {
			if j, dup := paths[dev]; dup {
				pc.errorf("device", "device %q is also used by port[%d] (a port is owned by one entry)", dev, j)
			} else {
				paths[dev] = i
			}
		}
	}
	deviceIndex := map[string]int{}
	units := map[string]string{} // "port/unit" → device
	lineDevice := map[string]string{}
	for i := range p.Device {
		d := &p.Device[i]
		dc := ch.sub(indexKey("device", i))
		var port *PollerPort
		if d.Port == "" {
			dc.errorf("port", "missing: name the port the device is on")
		} else if j, ok := portIndex[d.Port]; ok {
			port = &p.Port[j]
		} else {
			known := make([]string, 0, len(p.Port))
			for _, pp := range p.Port {
				known = append(known, pp.Name)
			}
			dc.errorf("port", "unknown port %q (ports: %s)", d.Port, listOrNone(known))
		}
		d.validate(dc, p, port)
		if j, dup := deviceIndex[d.Name]; dup && d.Name != "" {
			dc.errorf("name", "duplicate device name %q (also device[%d])", d.Name, j)
		} else {
			deviceIndex[d.Name] = i
		}
		if port == nil {
			continue
		}
		if port.Mode == ModeLine {
			if other, ok := lineDevice[port.Name]; ok {
				dc.errorf("port", "line port %q already has device %q (a line port carries one device)", port.Name, other)
			}
			lineDevice[port.Name] = d.Name
			continue
		}
		key := fmt.Sprintf("%s/%d", port.Name, d.Unit)
		if other, ok := units[key]; ok && d.Unit != 0 {
			dc.errorf("unit", "unit %d on port %q is already device %q", d.Unit, port.Name, other)
		} else {
			units[key] = d.Name
		}
	}
}

func listOrNone(s []string) string {
	if len(s) == 0 {
		return "none configured"
	}
	return strings.Join(s, ", ")
}

func (p *PollerPort) validate(ch *checker) {
	if p.Name == "" {
		ch.errorf("name", "missing: a port needs a name")
	} else {
		ch.topic("name", p.Name, true)
	}
	if p.Device == "" {
		ch.errorf("device", "missing: the path of the serial device, e.g. /dev/ttyUSB0")
	} else if strings.IndexByte(p.Device, 0) >= 0 {
		ch.errorf("device", "%q holds a NUL byte", p.Device)
	}
	if p.Mode == "" {
		p.Mode = ModeRTU
	}
	ch.oneOf("mode", p.Mode, ModeRTU, ModeLine)
	if p.Baud == 0 && !ch.has("baud") {
		p.Baud = 9600
	}
	ch.intRange("baud", p.Baud, 50, 4000000)
	if p.DataBits == 0 && !ch.has("data_bits") {
		p.DataBits = 8
	}
	if p.DataBits != 7 && p.DataBits != 8 {
		ch.errorf("data_bits", "%d: want 7 or 8", p.DataBits)
	}
	if p.Parity == "" {
		p.Parity = "none"
	}
	ch.oneOf("parity", p.Parity, "none", "even", "odd")
	if p.StopBits == 0 && !ch.has("stop_bits") {
		p.StopBits = 1
	}
	if p.StopBits != 1 && p.StopBits != 2 {
		ch.errorf("stop_bits", "%d: want 1 or 2", p.StopBits)
	}
	if p.Timeout.Duration == 0 && !ch.has("timeout") {
		p.Timeout.Duration = time.Second
	}
	ch.atLeast("timeout", p.Timeout, time.Millisecond)
	ch.intRange("retries", p.Retries, 0, 10)
	if !p.RS485 {
		for k, set := range map[string]bool{
			"rs485_rts_after_send":    p.RS485RTSAfterSend,
			"rs485_delay_before_send": p.RS485DelayBeforeSend.Duration != 0,
			"rs485_delay_after_send":  p.RS485DelayAfterSend.Duration != 0,
			"rs485_rx_during_tx":      p.RS485RxDuringTx,
		} {
			if set {
				ch.errorf(k, "has no effect without rs485 = true")
			}
		}
	}
	if p.Mode != ModeLine {
		if p.LineFormat != "" {
			ch.errorf("line_format", "only for mode = \"line\"")
		}
		if p.LineRegex != "" {
			ch.errorf("line_regex", "only for mode = \"line\"")
		}
		return
	}
	if p.LineFormat == "" {
		p.LineFormat = "kv"
	}
	ch.oneOf("line_format", p.LineFormat, "kv", "regex")
	switch {
	case p.LineFormat == "regex" && p.LineRegex == "":
		ch.errorf("line_regex", "missing: line_format = \"regex\" needs a regular expression with named groups")
	case p.LineFormat != "regex" && p.LineRegex != "":
		ch.errorf("line_regex", "only for line_format = \"regex\"")
	case p.LineRegex != "":
		re, err := regexp.Compile(p.LineRegex)
		if err != nil {
			ch.errorf("line_regex", "bad regular expression: %v", err)
			break
		}
		named := slices.ContainsFunc(re.SubexpNames(), func(s string) bool { return s != "" })
		if !named {
			ch.errorf("line_regex", "no named group (want e.g. `V=(?P<voltage>[0-9.]+)`)")
		}
	}
}

func (d *PollerDevice) validate(ch *checker, p *Poller, port *PollerPort) {
	if d.Name == "" {
		ch.errorf("name", "missing: a device needs a name")
	} else {
		ch.topic("name", d.Name, true)
	}
	if d.Interval.Duration == 0 && !ch.has("interval") {
		d.Interval.Duration = time.Second
	}
	ch.atLeast("interval", d.Interval, 10*time.Millisecond)
	if d.Timeout.Duration != 0 {
		ch.atLeast("timeout", d.Timeout, time.Millisecond)
	}
	if d.MaxGap != nil {
		ch.intRange("max_gap", *d.MaxGap, 0, maxReadBits)
	}
	if d.MaxRegisters != nil {
		ch.intRange("max_registers", *d.MaxRegisters, 1, maxReadRegisters)
	}
	if d.MaxBits != nil {
		ch.intRange("max_bits", *d.MaxBits, 1, maxReadBits)
	}
	line := port != nil && port.Mode == ModeLine
	switch {
	case line:
		if d.Unit != 0 || ch.has("unit") {
			ch.errorf("unit", "a device on line port %q has no unit id", port.Name)
		}
	case port != nil && d.Unit == 0 && !ch.has("unit"):
		ch.errorf("unit", "missing: the Modbus slave id, 1 to %d", maxUnit)
	case port != nil || ch.has("unit"):
		// On an unknown port the mode is unknown, but a unit that is
		// written must still be a slave id.
		ch.intRange("unit", d.Unit, 1, maxUnit)
	}
	if port != nil && !line && len(d.Point) == 0 {
		ch.errorf("point", "no points: add [[poller.device.point]] entries")
	}
	if d.Timeout.Duration == 0 && port != nil && !ch.has("timeout") {
		d.Timeout.Duration = port.Timeout.Duration
		if line {
			d.Timeout.Duration = max(3*d.Interval.Duration, port.Timeout.Duration)
		}
	}
	names := map[string]int{}
	for i := range d.Point {
		pc := ch.sub(indexKey("point", i))
		pt := &d.Point[i]
		pt.validate(pc, port, line)
		if j, dup := names[pt.Name]; dup && pt.Name != "" {
			pc.errorf("name", "duplicate point name %q (also point[%d])", pt.Name, j)
		} else {
			names[pt.Name] = i
		}
	}
	if port != nil && !line {
		d.checkOverlaps(ch)
	}
}

// checkOverlaps reports a writable point that shares a coil or register
// with another point of the device: writing one would change the other.
func (d *PollerDevice) checkOverlaps(ch *checker) {
	for i := range d.Point {
		a := &d.Point[i]
		if !a.Writable || a.Layout().Type == 0 {
			continue
		}
		for j := range d.Point {
			b := &d.Point[j]
			if i == j || a.Table != b.Table || b.Layout().Type == 0 {
				continue
			}
			if a.Address < b.Address+b.Size() && b.Address < a.Address+a.Size() {
				ch.sub(indexKey("point", i)).errorf("writable",
					"writable point %q (%s %d..%d) overlaps point %q (%d..%d): writing one would change the other",
					a.Name, a.Table, a.Address, a.Address+a.Size()-1, b.Name, b.Address, b.Address+b.Size()-1)
				break
			}
		}
	}
}

var typeNames = []string{"bool", "u16", "s16", "u32", "s32", "u64", "s64", "f32", "f64"}

func (pt *PollerPoint) validate(ch *checker, port *PollerPort, line bool) {
	if pt.Name == "" {
		ch.errorf("name", "missing: a point needs a name")
	} else {
		ch.topic("name", pt.Name, true)
	}
	if pt.Scale == 0 {
		if ch.has("scale") {
			ch.errorf("scale", "must not be 0")
		}
		pt.Scale = 1
	}
	if math.IsNaN(pt.Scale) || math.IsInf(pt.Scale, 0) {
		ch.errorf("scale", "must be a finite number")
	}
	if math.IsNaN(pt.Offset) || math.IsInf(pt.Offset, 0) {
		ch.errorf("offset", "must be a finite number")
	}
	if pt.WordOrder == "" {
		pt.WordOrder = "big"
	}
	if pt.ByteOrder == "" {
		pt.ByteOrder = "big"
	}
	ch.oneOf("word_order", pt.WordOrder, "big", "little")
	ch.oneOf("byte_order", pt.ByteOrder, "big", "little")
	if line {
		for k, set := range map[string]bool{"table": pt.Table != "", "address": pt.Address != 0, "writable": pt.Writable} {
			if set {
				ch.errorf(k, "not for a device on a line port")
			}
		}
		if pt.Key == "" {
			pt.Key = pt.Name
		}
		if pt.Type == "" {
			pt.Type = "f64"
		}
		ch.oneOf("type", pt.Type, typeNames...)
		return
	}
	if port == nil && pt.Table == "" {
		return // unknown port: the mode is unknown too
	}
	// On an unknown port, a point with a table is a Modbus point: check
	// it as one, so that the port's error does not hide the point's.
	if port != nil && pt.Key != "" {
		ch.errorf("key", "only for a device on a line port")
	}
	// n is the point's size in registers or bits; when its type is wrong,
	// the address is still checked, for the least size (1).
	n := 1
	switch pt.Table {
	case "":
		ch.errorf("table", "missing: want coil, discrete, holding or input")
	case TableCoil, TableDiscrete:
		if pt.Type == "" {
			pt.Type = "bool"
		}
		if pt.Type != "bool" {
			ch.errorf("type", "a %s is one bit: type %q does not fit (want bool)", pt.Table, pt.Type)
		}
	case TableHolding, TableInput:
		if pt.Type == "" {
			pt.Type = "u16"
		}
		if slices.Contains(typeNames, pt.Type) {
			n = pt.Size()
		} else {
			ch.oneOf("type", pt.Type, typeNames...)
		}
	default:
		ch.oneOf("table", pt.Table, TableCoil, TableDiscrete, TableHolding, TableInput)
	}
	if pt.Writable && (pt.Table == TableDiscrete || pt.Table == TableInput) {
		ch.errorf("writable", "%s points are read-only (want coil or holding)", pt.Table)
	}
	if pt.Address < 0 || pt.Address+n-1 > 0xFFFF {
		if n == 1 {
			ch.errorf("address", "%d is out of range (want 0 to 65535)", pt.Address)
		} else {
			ch.errorf("address", "%d is out of range: a %s spans %d registers (want 0 to %d)", pt.Address, pt.Type, n, 0x10000-n)
		}
	}
}

// demoDevices are the devices of the simulator's demo register map
// (services/simulate Demo: unit 1 an energy meter, unit 2 a climate
// sensor), as the built-in configuration polls them.
func demoDevices() []PollerDevice {
	pt := func(name, table string, addr int, typ, unit string) PollerPoint {
		return PollerPoint{Name: name, Table: table, Address: addr, Type: typ, Unit: unit,
			WordOrder: "big", ByteOrder: "big", Scale: 1}
	}
	scaled := func(p PollerPoint, scale float64) PollerPoint { p.Scale = scale; return p }
	little := func(p PollerPoint) PollerPoint { p.WordOrder = "little"; return p }
	writable := func(p PollerPoint) PollerPoint { p.Writable = true; return p }
	dev := func(name string, unit int, points ...PollerPoint) PollerDevice {
		return PollerDevice{Name: name, Port: "sim", Unit: unit, Interval: Duration{time.Second},
			Timeout: Duration{500 * time.Millisecond}, Point: points} // the port's
	}
	return []PollerDevice{
		dev("meter", 1,
			pt("voltage", TableInput, 0, "f32", "V"),
			pt("current", TableInput, 2, "f32", "A"),
			pt("power", TableInput, 4, "f32", "W"),
			pt("energy", TableInput, 6, "u32", "Wh"),
			scaled(pt("frequency", TableInput, 8, "u16", "Hz"), 0.01),
			writable(pt("ct_ratio", TableHolding, 0, "u16", "")),
			pt("breaker_closed", TableDiscrete, 0, "bool", ""),
			pt("alarm", TableDiscrete, 1, "bool", ""),
		),
		dev("climate", 2,
			scaled(pt("temperature", TableInput, 0, "s16", "°C"), 0.1),
			scaled(pt("humidity", TableInput, 1, "u16", "%"), 0.1),
			little(pt("uptime", TableInput, 2, "u32", "s")),
			little(pt("pressure", TableInput, 4, "f32", "hPa")),
			writable(scaled(pt("setpoint", TableHolding, 0, "s16", "°C"), 0.1)),
			writable(pt("fan", TableCoil, 0, "bool", "")),
			writable(pt("heater", TableCoil, 1, "bool", "")),
			pt("door_open", TableDiscrete, 0, "bool", ""),
		),
	}
}

// Units returns the engineering unit of every point that has one, by
// device and point name: what the broker puts on the value topics.
func (p *Poller) Units() map[string]map[string]string {
	units := map[string]map[string]string{}
	for _, d := range p.Device {
		for _, pt := range d.Point {
			if pt.Unit == "" {
				continue
			}
			if units[d.Name] == nil {
				units[d.Name] = map[string]string{}
			}
			units[d.Name][pt.Name] = pt.Unit
		}
	}
	return units
}
