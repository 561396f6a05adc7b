package poller

import (
	"cmp"
	"fmt"
	"io"
	"math"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/modbus"
	"github.com/tinyscada/tinyscada/shared/modbus/value"
)

// Plan is what the poller does, computed once at start from the
// configuration: the ports, their devices, and for every Modbus device the
// requests of one poll round with the points each one carries.
type Plan struct {
	Ports []*PortPlan
}

// PortPlan is one serial port and the devices on it.
type PortPlan struct {
	Config  *config.PollerPort
	Path    string // the device path, resolved against state_dir
	Devices []*DevicePlan
	// LineRegex is the compiled line_regex of a line port in regex format.
	LineRegex *regexp.Regexp
}

// DevicePlan is one device: its requests (Modbus) and its points.
type DevicePlan struct {
	Config   *config.PollerDevice
	Port     *PortPlan
	Timeout  time.Duration // reply timeout (Modbus) or silence before offline (line)
	Requests []Request
	Points   []Point // in configuration order
}

// Request is one read of a poll round.
type Request struct {
	Function byte // 1, 2, 3 or 4
	Address  uint16
	Quantity uint16
	// Points are the indices (into DevicePlan.Points) of the points the
	// reply carries, by address.
	Points []int
}

// Point is one configured point, compiled.
type Point struct {
	Config *config.PollerPoint
	Name   string
	Layout value.Layout
	// Request is the index of the request that reads it and Offset the
	// position of its first register (or its bit) in the reply.
	Request int
	Offset  int
	// Scale and Offset as configured; Div, when not 0, replaces Scale: a
	// scale of 10^-k is applied as a division by 10^k, which gives the
	// decimal people expect (2301 × 0.1 is 230.10000000000002, 2301 / 10
	// is 230.1).
	Scale, Add, Div float64
	// Exact says the raw value is published as it is (no scale, no offset).
	Exact bool
	// key is the point's JSON key with quotes and colon: "name":
	key []byte
}

// Bits reports whether the request reads coils or discrete inputs.
func (r *Request) Bits() bool {
	return r.Function == modbus.FuncReadCoils || r.Function == modbus.FuncReadDiscreteInputs
}

// tableFunction maps a point table to its read function code.
var tableFunction = map[string]byte{
	config.TableCoil:     modbus.FuncReadCoils,
	config.TableDiscrete: modbus.FuncReadDiscreteInputs,
	config.TableHolding:  modbus.FuncReadHoldingRegisters,
	config.TableInput:    modbus.FuncReadInputRegisters,
}

var functionNames = map[byte]string{
	modbus.FuncReadCoils:            "coils",
	modbus.FuncReadDiscreteInputs:   "discrete inputs",
	modbus.FuncReadHoldingRegisters: "holding registers",
	modbus.FuncReadInputRegisters:   "input registers",
}

// MakePlan compiles a validated configuration into a plan. stateDir
// resolves relative device paths. Ports without devices are left out. It
// fails only for what validation lets through by mistake (an unknown type
// or table, a bad regular expression).
func MakePlan(p *config.Poller, stateDir string) (*Plan, error) {
	plan := &Plan{}
	byName := map[string]*PortPlan{}
	for i := range p.Port {
		pc := &p.Port[i]
		pp := &PortPlan{Config: pc, Path: pc.Path(stateDir)}
		if pc.Mode == config.ModeLine && pc.LineFormat == "regex" {
			re, err := regexp.Compile(pc.LineRegex)
			if err != nil {
				return nil, fmt.Errorf("poller: port %s: line_regex: %w", pc.Name, err)
			}
			pp.LineRegex = re
		}
		byName[pc.Name] = pp
	}
	for i := range p.Device {
		dc := &p.Device[i]
		pp := byName[dc.Port]
		if pp == nil {
			return nil, fmt.Errorf("poller: device %s: unknown port %q", dc.Name, dc.Port)
		}
		d, err := planDevice(p, dc, pp)
		if err != nil {
			return nil, err
		}
		pp.Devices = append(pp.Devices, d)
	}
	for i := range p.Port {
		if pp := byName[p.Port[i].Name]; len(pp.Devices) > 0 {
			plan.Ports = append(plan.Ports, pp)
		}
	}
	return plan, nil
}

func planDevice(p *config.Poller, dc *config.PollerDevice, pp *PortPlan) (*DevicePlan, error) {
	d := &DevicePlan{Config: dc, Port: pp, Timeout: dc.DeviceTimeout(pp.Config)}
	for i := range dc.Point {
		pc := &dc.Point[i]
		pt, err := compilePoint(pc)
		if err != nil {
			return nil, fmt.Errorf("poller: device %s point %s: %w", dc.Name, pc.Name, err)
		}
		d.Points = append(d.Points, pt)
	}
	if pp.Config.Mode == config.ModeLine {
		if dc.Timeout.Duration == 0 {
			d.Timeout = max(3*dc.Interval.Duration, pp.Config.Timeout.Duration)
		}
		return d, nil
	}
	gap, maxRegs, maxBits := dc.Limits(p)
	for _, table := range []string{config.TableCoil, config.TableDiscrete, config.TableHolding, config.TableInput} {
		var idx []int
		for i := range d.Points {
			if d.Points[i].Config.Table == table {
				idx = append(idx, i)
			}
		}
		limit := maxRegs
		if table == config.TableCoil || table == config.TableDiscrete {
			limit = maxBits
		}
		for _, g := range coalesce(d.Points, idx, gap, limit) {
			r := Request{Function: tableFunction[table], Address: uint16(g.start), Quantity: uint16(g.end - g.start), Points: g.points}
			for _, i := range g.points {
				d.Points[i].Request = len(d.Requests)
				d.Points[i].Offset = d.Points[i].Config.Address - g.start
			}
			d.Requests = append(d.Requests, r)
		}
	}
	return d, nil
}

// group is the span of one request: addresses [start, end) and its points.
type group struct {
	start, end int
	points     []int
}

// coalesce groups the points idx of one table into the fewest reads: in
// address order, a point joins the current read when the unused addresses
// before it number at most gap and the read stays within limit addresses;
// otherwise it starts the next read. Extending each read as far as the
// rules allow is optimal for points in address order: no other grouping
// needs fewer reads.
func coalesce(points []Point, idx []int, gap, limit int) []group {
	idx = slices.Clone(idx)
	slices.SortStableFunc(idx, func(a, b int) int {
		return cmp.Compare(points[a].Config.Address, points[b].Config.Address)
	})
	var out []group
	for _, i := range idx {
		a := points[i].Config.Address
		end := a + points[i].Config.Size()
		if n := len(out); n > 0 {
			g := &out[n-1]
			if a-g.end <= gap && max(end, g.end)-g.start <= limit {
				g.end = max(g.end, end)
				g.points = append(g.points, i)
				continue
			}
		}
		out = append(out, group{start: a, end: end, points: []int{i}})
	}
	return out
}

// compilePoint turns a point's configuration into what decoding needs.
func compilePoint(pc *config.PollerPoint) (Point, error) {
	pt := Point{Config: pc, Name: pc.Name, Layout: pc.Layout(), Scale: pc.Scale, Add: pc.Offset}
	if pt.Layout.Type == 0 {
		return pt, fmt.Errorf("unknown type %q", pc.Type)
	}
	if pc.Table != "" && tableFunction[pc.Table] == 0 {
		return pt, fmt.Errorf("unknown table %q", pc.Table)
	}
	if pt.Scale == 0 {
		pt.Scale = 1
	}
	pt.Exact = pt.Scale == 1 && pt.Add == 0
	for k, p := 1, 10.0; k <= 15; k, p = k+1, p*10 {
		if pt.Scale == 1/p {
			pt.Div = p
			break
		}
	}
	pt.key = appendJSONString(nil, pc.Name)
	pt.key = append(pt.key, ':')
	return pt, nil
}

// Requests returns the number of requests of one round of every device.
func (p *Plan) Requests() int {
	n := 0
	for _, pp := range p.Ports {
		for _, d := range pp.Devices {
			n += len(d.Requests)
		}
	}
	return n
}

// Write prints the plan for people: per port its line settings, per device
// its schedule and requests, per request the points it carries. It returns
// the first write error.
func (p *Plan) Write(w io.Writer) error {
	var b strings.Builder
	if len(p.Ports) == 0 {
		b.WriteString("no devices configured: nothing to poll\n")
	}
	reqs, points := 0, 0
	for _, pp := range p.Ports {
		c := pp.Config
		fmt.Fprintf(&b, "port %s: %s, %s %d %d%s%d, timeout %s", c.Name, pp.Path, c.Mode, c.Baud,
			c.DataBits, c.ParityLetter(), c.StopBits, c.Timeout.Duration)
		if c.Mode == config.ModeRTU {
			fmt.Fprintf(&b, ", retries %d", c.Retries)
		} else if c.LineFormat == "regex" {
			fmt.Fprintf(&b, ", records matching %q", c.LineRegex)
		} else {
			b.WriteString(", key=value records")
		}
		if c.RS485 {
			b.WriteString(", RS-485")
		}
		if c.Simulate {
			b.WriteString(" (simulated)")
		}
		b.WriteString("\n")
		for _, d := range pp.Devices {
			dc := d.Config
			points += len(d.Points)
			if c.Mode == config.ModeLine {
				fmt.Fprintf(&b, "  device %s: a record every %s expected, offline after %s of silence\n",
					dc.Name, dc.Interval.Duration, d.Timeout)
				if len(d.Points) == 0 {
					b.WriteString("    every field of a record, as a number\n")
				}
				for _, pt := range d.Points {
					fmt.Fprintf(&b, "    %s ← field %s (%s%s)\n", pt.Name, pt.Config.Key, pt.Config.Type, scaleText(&pt))
				}
				continue
			}
			reqs += len(d.Requests)
			fmt.Fprintf(&b, "  device %s: unit %d, every %s, timeout %s, %d %s per round\n",
				dc.Name, dc.Unit, dc.Interval.Duration, d.Timeout, len(d.Requests), plural(len(d.Requests), "request"))
			for _, r := range d.Requests {
				last := int(r.Address) + int(r.Quantity) - 1
				span := fmt.Sprintf("%d-%d", r.Address, last)
				if r.Quantity == 1 {
					span = fmt.Sprint(r.Address)
				}
				fmt.Fprintf(&b, "    fc %d read %s %s (%d):", r.Function, functionNames[r.Function], span, r.Quantity)
				for _, i := range r.Points {
					pt := &d.Points[i]
					fmt.Fprintf(&b, " %s@%d", pt.Name, pt.Config.Address)
					if !r.Bits() {
						fmt.Fprintf(&b, "(%s%s)", layoutText(pt), scaleText(pt))
					}
				}
				b.WriteString("\n")
			}
		}
	}
	fmt.Fprintf(&b, "total: %d %s, %d %s, %d Modbus %s per round\n", len(p.Ports), plural(len(p.Ports), "port"),
		points, plural(points, "point"), reqs, plural(reqs, "request"))
	_, err := io.WriteString(w, b.String())
	return err
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}

func layoutText(pt *Point) string {
	s := pt.Config.Type
	if pt.Layout.Type.Registers() > 1 && pt.Layout.WordOrder == value.LittleEndian {
		s += " word-swapped"
	}
	if pt.Layout.ByteOrder == value.LittleEndian {
		s += " byte-swapped"
	}
	return s
}

func scaleText(pt *Point) string {
	var s string
	if pt.Scale != 1 {
		s += fmt.Sprintf(" ×%g", pt.Scale)
	}
	if pt.Add != 0 && !math.IsNaN(pt.Add) {
		s += fmt.Sprintf(" %+g", pt.Add)
	}
	if u := pt.Config.Unit; u != "" {
		s += " " + u
	}
	return s
}
