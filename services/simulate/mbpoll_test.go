package simulate

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
)

const peerMap = `
baud = 9600
byte_timing = true
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
address = 0
type = "f32"
value = 230.5
[[unit.register]]
table = "input"
address = 2
type = "f32"
word_order = "little"
value = -17.25
[[unit.register]]
table = "input"
address = 4
type = "s32"
value = -100000
[[unit.register]]
table = "coil"
address = 1
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
id = 17
[[unit.register]]
table = "holding"
address = 9
type = "u16"
value = 17
`

// TestMbpollReadsSimulator has Debian's mbpoll, a Modbus master we did not
// write, read and write the simulator (with byte timing on).
func TestMbpollReadsSimulator(t *testing.T) {
	t.Parallel()
	mbpoll := testpeer.Need(t, "mbpoll")
	ctx, cancel := context.WithCancel(context.Background())
	sim, err := Start(ctx, mustParse(t, peerMap), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		if err := sim.Wait(); err != nil {
			t.Error(err)
		}
	}()
	// poll runs mbpoll with args, then the device, then values to write.
	// mbpoll numbers references from 1 (-r 1 is address 0); -1 polls once.
	poll := func(args []string, values ...string) string {
		t.Helper()
		full := append([]string{"-m", "rtu", "-b", "9600", "-P", "none", "-o", "1"}, args...)
		full = append(append(full, sim.Path()), values...)
		cmd := exec.Command(mbpoll, full...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("mbpoll %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"-a", "1", "-t", "4", "-r", "1", "-c", "3", "-1"}, []string{"[1]: \t1234\n", "[2]: \t65534 (-2)\n", "[3]: \t0\n"}},
		{[]string{"-a", "1", "-t", "3:float", "-B", "-r", "1", "-c", "1", "-1"}, []string{"[1]: \t230.5\n"}},
		{[]string{"-a", "1", "-t", "3:float", "-r", "3", "-c", "1", "-1"}, []string{"[3]: \t-17.25\n"}}, // mbpoll's default: low word first
		{[]string{"-a", "1", "-t", "3:int", "-B", "-r", "5", "-c", "1", "-1"}, []string{"[5]: \t-100000\n"}},
		{[]string{"-a", "1", "-t", "0", "-r", "1", "-c", "3", "-1"}, []string{"[1]: \t0\n", "[2]: \t1\n", "[3]: \t0\n"}},
		{[]string{"-a", "1", "-t", "1", "-r", "1", "-c", "3", "-1"}, []string{"[1]: \t1\n", "[2]: \t0\n", "[3]: \t1\n"}},
		{[]string{"-a", "17", "-t", "4", "-0", "-r", "9", "-c", "1", "-1"}, []string{"[9]: \t17\n"}},
	} {
		out := poll(c.args)
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("mbpoll %s: no %q in\n%s", strings.Join(c.args, " "), w, out)
			}
		}
	}
	// Writes by mbpoll land in the device.
	poll([]string{"-a", "1", "-t", "4", "-r", "11"}, "777", "65533")
	poll([]string{"-a", "1", "-t", "0", "-r", "6"}, "1")
	if regs, _ := sim.Device.Registers(1, HoldingRegisters, 10, 2); regs[0] != 777 || regs[1] != 0xFFFD {
		t.Errorf("holding 10-11 after mbpoll's write: %v", regs)
	}
	if bits, _ := sim.Device.Registers(1, Coils, 5, 1); bits[0] != 1 {
		t.Errorf("coil 5 after mbpoll's write: %v", bits)
	}
	// A unit that is not there: mbpoll reports a timeout, the simulator
	// keeps serving.
	start := time.Now()
	cmd := exec.Command(mbpoll, "-m", "rtu", "-b", "9600", "-P", "none", "-o", "0.2", "-a", "5", "-t", "4", "-1", sim.Path())
	if out, err := cmd.CombinedOutput(); err == nil && !strings.Contains(string(out), "timed out") {
		t.Errorf("mbpoll of an absent unit succeeded after %v:\n%s", time.Since(start), out)
	}
	if !strings.Contains(poll([]string{"-a", "1", "-t", "4", "-r", "1", "-1"}), "[1]: \t1234\n") {
		t.Error("simulator not answering after the absent-unit poll")
	}
}
