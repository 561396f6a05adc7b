package simulate

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/shared/modbus"
)

// BenchmarkRound measures one read of N holding registers from the
// simulator over a real pseudo-terminal, with byte timing on, against the
// line-time floor: the bytes on the wire at 11 bits per character plus two
// 3.5-character silences (before the request, and the slave's end-of-frame
// detection before it answers). It reports floor-ns/op and x-floor (ns/op
// divided by the floor).
func BenchmarkRound(b *testing.B) {
	for _, c := range []struct{ baud, n int }{{9600, 10}, {115200, 10}, {115200, 125}} {
		b.Run(fmt.Sprintf("baud=%d/regs=%d", c.baud, c.n), func(b *testing.B) {
			m := mustParse(b, fmt.Sprintf("baud = %d\nbyte_timing = true\n[[unit]]\nid = 1\n", c.baud))
			_, master := startSim(b, m, modbus.Options{Timeout: time.Second})
			ctx := context.Background()
			dst := make([]uint16, c.n)
			onWire := 8 + 5 + 2*c.n
			floor := modbus.LineTime(c.baud, onWire) + 2*modbus.Silence(c.baud)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if _, err := master.ReadRegisters(ctx, 1, modbus.FuncReadHoldingRegisters, 0, dst); err != nil {
					b.Fatal(err)
				}
			}
			perOp := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
			b.ReportMetric(float64(floor.Nanoseconds()), "floor-ns/op")
			b.ReportMetric(perOp/float64(floor.Nanoseconds()), "x-floor")
		})
	}
}
