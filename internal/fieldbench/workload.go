package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// The field workload: what a busy gateway does all day. One RS-485 line at
// 115200 baud with 50 meters on it, each read every second for 20 holding
// registers: 1000 readings/s, 50 Modbus transactions/s. The simulator
// serves every unit on one pseudo-terminal with byte timing, so the line
// takes as long as a real one.
const (
	fieldUnits     = 50
	fieldRegisters = 20
	fieldBaud      = 115200
)

// setup is what one run of a workload needs, written into its directory.
type setup struct {
	// Config is the tinyscada configuration `run` is started with.
	Config string
	// DB is the logger's database.
	DB string
	// SimMap and SimLink, when SimMap is set, are a simulator the bench
	// starts itself (`tinyscada simulate -map SimMap -link SimLink`)
	// before `run`: `run` starts simulators only with the built-in demo
	// map. When SimMap is empty, `run` starts the simulator.
	SimMap, SimLink string
}

// workloads are the names -workload takes.
var workloads = []string{"field", "demo"}

// prepare writes the files of workload into dir (which must exist) for a
// stack whose broker listens on 127.0.0.1:port, and says where they are.
func prepare(workload, dir string, port int) (*setup, error) {
	stateDir := filepath.Join(dir, "state")
	addr := "127.0.0.1:" + strconv.Itoa(port)
	s := &setup{Config: filepath.Join(dir, "tinyscada.toml"), DB: filepath.Join(stateDir, "readings.db")}
	var cfg string
	switch workload {
	case "field":
		s.SimMap = filepath.Join(dir, "field-map.toml")
		s.SimLink = filepath.Join(dir, "field-tty")
		if err := os.WriteFile(s.SimMap, []byte(fieldMap(fieldUnits, fieldRegisters, fieldBaud)), 0o600); err != nil {
			return nil, err
		}
		cfg = fieldConfig(stateDir, addr, s.SimLink, fieldUnits, fieldRegisters, fieldBaud)
	case "demo":
		cfg = demoConfig(stateDir, addr)
	default:
		return nil, fmt.Errorf("unknown workload %q (want %s)", workload, strings.Join(workloads, " or "))
	}
	if err := os.WriteFile(s.Config, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	return s, nil
}

// describe says what workload is, for the report.
func describe(workload string) string {
	switch workload {
	case "field":
		return fmt.Sprintf("field: %d simulated devices × %d holding registers every 1s on one line at %d baud (byte timing), value topics on",
			fieldUnits, fieldRegisters, fieldBaud)
	case "demo":
		return "demo: the built-in demo configuration (2 devices, 16 points every 1s at 9600 baud) on its own state dir and port"
	}
	return workload
}

// demoConfig is the built-in demo with its state in stateDir and its broker
// on addr: a key left out of a file keeps its default, and the defaults are
// the demo (docs/configuration.md), simulator included.
func demoConfig(stateDir, addr string) string {
	return fmt.Sprintf(`# fieldbench: the built-in demo on its own state directory and port.
version = 1
state_dir = %q

[bus]
address = %q

[broker]
listen = [%q]
`, stateDir, addr, addr)
}

// fieldConfig polls units devices of regs holding registers each on the
// pseudo-terminal link, every second. The roles are the ones the issue
// sums (the uplink is not built yet).
func fieldConfig(stateDir, addr, link string, units, regs, baud int) string {
	var b strings.Builder
	fmt.Fprintf(&b, `# fieldbench: the field workload.
version = 1
state_dir = %q

[bus]
address = %q

[broker]
listen = [%q]

[run]
roles = ["broker", "poller", "logger", "health"]

[[poller.port]]
name = "field"
device = %q
baud = %d
timeout = "200ms"
`, stateDir, addr, addr, link, baud)
	for u := 1; u <= units; u++ {
		fmt.Fprintf(&b, "\n[[poller.device]]\nname = \"meter%02d\"\nport = \"field\"\nunit = %d\ninterval = \"1s\"\n", u, u)
		for r := 0; r < regs; r++ {
			fmt.Fprintf(&b, "[[poller.device.point]]\nname = \"r%02d\"\ntable = \"holding\"\naddress = %d\n", r, r)
		}
	}
	return b.String()
}

// fieldMap is the simulator's map for fieldConfig: every unit has regs
// holding registers from address 0, of which most change between polls as
// measurements do (so the value topics carry traffic): half are sine waves
// of different periods, a quarter count per read, the rest are constants
// (settings, status words). Units are strict, so a register the poller
// reads that the map lacks answers an exception and shows as bad readings.
func fieldMap(units, regs, baud int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# fieldbench: %d units × %d holding registers.\nbaud = %d\nbyte_timing = true\n", units, regs, baud)
	for u := 1; u <= units; u++ {
		fmt.Fprintf(&b, "\n[[unit]]\nid = %d\nstrict = true\n", u)
		for r := 0; r < regs; r++ {
			fmt.Fprintf(&b, "[[unit.register]]\nname = \"r%02d\"\ntable = \"holding\"\naddress = %d\ntype = \"u16\"\n", r, r)
			switch r % 4 {
			case 0, 1:
				fmt.Fprintf(&b, "gen = \"sine\"\namplitude = 500.0\noffset = 1000.0\nperiod = \"%ds\"\n", 30+u+r)
			case 2:
				fmt.Fprintf(&b, "gen = \"counter\"\nstart = %d.0\n", u*100+r)
			default:
				fmt.Fprintf(&b, "value = %d\n", u*1000+r)
			}
		}
	}
	return b.String()
}
