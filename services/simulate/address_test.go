package simulate

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/shared/modbus"
)

// rawExchange writes a raw request frame (CRC appended) to the simulator
// on a real pseudo-terminal and returns the reply bytes that arrive
// within a bounded time (as many as the reply's length says, or what came
// before the deadline).
func rawExchange(t *testing.T, sim *Sim, pdu []byte) []byte {
	t.Helper()
	port, err := modbus.Open(sim.Path(), modbus.PortConfig{Baud: 115200})
	if err != nil {
		t.Fatal(err)
	}
	defer port.Close()
	crc := modbus.CRC(pdu)
	frame := append(bytes.Clone(pdu), byte(crc), byte(crc>>8))
	if _, err := port.Write(frame); err != nil {
		t.Fatal(err)
	}
	if err := port.SetReadTimeout(50 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	var got []byte
	buf := make([]byte, 64)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		n, err := port.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
		// An exception reply is 5 bytes; a read reply announces its length.
		if len(got) >= 5 && got[1]&0x80 != 0 || len(got) >= 3 && len(got) >= 5+int(got[2]) {
			break
		}
	}
	return got
}

// A read whose range ends past address 65535 is an illegal data address
// (exception 2), as the Modbus application protocol specification says
// (its state diagrams check the quantity first: exception 3, then the
// address range: exception 2). A bad quantity stays exception 3.
func TestReadPastLastAddressIsException2(t *testing.T) {
	m := mustParse(t, "baud = 115200\n[[unit]]\nid = 1\n")
	ctx, cancel := context.WithCancel(context.Background())
	sim, err := Start(ctx, m, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); sim.Wait() })

	cases := []struct {
		name string
		pdu  []byte
		code byte
	}{
		{"holding 65535 qty 2", []byte{1, 3, 0xFF, 0xFF, 0, 2}, modbus.ExIllegalDataAddress},
		{"input 65500 qty 100", []byte{1, 4, 0xFF, 0xDC, 0, 100}, modbus.ExIllegalDataAddress},
		{"coils 65535 qty 8", []byte{1, 1, 0xFF, 0xFF, 0, 8}, modbus.ExIllegalDataAddress},
		{"write registers 65535 qty 2", []byte{1, 16, 0xFF, 0xFF, 0, 2, 4, 0, 1, 0, 2}, modbus.ExIllegalDataAddress},
		{"holding qty 126", []byte{1, 3, 0, 0, 0, 126}, modbus.ExIllegalDataValue},
		{"holding 65535 qty 126", []byte{1, 3, 0xFF, 0xFF, 0, 126}, modbus.ExIllegalDataValue},
	}
	for _, tc := range cases {
		got := rawExchange(t, sim, tc.pdu)
		want := modbus.AppendException(nil, 1, tc.pdu[1], tc.code)
		if !bytes.Equal(got, want) {
			t.Errorf("%s: reply % X, want % X (exception %d)", tc.name, got, want, tc.code)
		}
	}
	// And one in range is answered.
	if got := rawExchange(t, sim, []byte{1, 3, 0xFF, 0xFF, 0, 1}); len(got) != 7 || got[1] != 3 {
		t.Errorf("holding 65535 qty 1: reply % X, want a 7-byte read reply", got)
	}
}
