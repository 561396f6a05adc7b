package poller

import (
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
)

// The poller reads a slave it did not write: Debian's pymodbus RTU server
// on a socat pseudo-terminal pair, every table, a float over two registers.
func TestPollerReadsPymodbus(t *testing.T) {
	t.Parallel()
	path := testpeer.Pymodbus(t, `ModbusSlaveContext(
    di=ModbusSequentialDataBlock(0, [0, 1, 1, 0, 1]),
    co=ModbusSequentialDataBlock(0, [1, 0, 1, 1]),
    hr=ModbusSequentialDataBlock(0, [1234, 65534, 0x4366, 0x199A, 2301]),
    ir=ModbusSequentialDataBlock(0, [7, 8, 9]),
    zero_mode=True)`, 19200)
	cfg := testConfig(t, t.TempDir(), `
[[poller.port]]
name = "peer"
device = "`+path+`"
baud = 19200
timeout = "300ms"

[[poller.device]]
name = "pm"
port = "peer"
unit = 1
interval = "200ms"

[[poller.device.point]]
name = "count"
table = "holding"
address = 0
[[poller.device.point]]
name = "neg"
table = "holding"
address = 1
type = "s16"
[[poller.device.point]]
name = "voltage"
table = "holding"
address = 2
type = "f32"
[[poller.device.point]]
name = "tenths"
table = "holding"
address = 4
scale = 0.1
[[poller.device.point]]
name = "in1"
table = "input"
address = 1
[[poller.device.point]]
name = "coil2"
table = "coil"
address = 2
[[poller.device.point]]
name = "di3"
table = "discrete"
address = 3
`)
	rec := newRecorder()
	startPoller(t, cfg, rec)
	from := 0
	// pymodbus takes a few seconds to import: wait for a round with every
	// point good.
	m := rec.wait(t, &from, "tinyscada/data/pm", 30*time.Second, "a round with every point read", allGood)
	d := parseData(t, m)
	want := map[string]string{
		"count": "1234", "neg": "-2", "voltage": "230.1", "tenths": "230.1",
		"in1": "8", "coil2": "true", "di3": "false",
	}
	for k, w := range want {
		if got := string(d.V[k]); got != w {
			t.Errorf("%s = %s, want %s (message %s)", k, got, w, m.Payload)
		}
	}
}
