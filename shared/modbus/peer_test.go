package modbus

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
)

// TestAgainstPymodbus runs our master against pymodbus's RTU server on a
// socat pseudo-terminal pair.
func TestAgainstPymodbus(t *testing.T) {
	t.Parallel()
	b := testpeer.Pymodbus(t, `ModbusSlaveContext(
    di=ModbusSequentialDataBlock(0, [0, 1, 1, 0, 1]),
    co=ModbusSequentialDataBlock(0, [1, 0, 1, 1] + [0] * 20),
    hr=ModbusSequentialDataBlock(0, [1234, 65534, 0x4366, 0x199A] + [0] * 16),
    ir=ModbusSequentialDataBlock(0, [7, 8, 9]),
    zero_mode=True)`, 9600)
	port, err := Open(b, PortConfig{Baud: 9600})
	if err != nil {
		t.Fatal(err)
	}
	defer port.Close()
	m := NewMaster(port, Options{Baud: 9600, Timeout: 300 * time.Millisecond})
	ctx := context.Background()

	// Wait for the server to come up (Python takes a moment to import).
	var regs []uint16
	for deadline := time.Now().Add(15 * time.Second); ; {
		regs, err = m.ReadHoldingRegisters(ctx, 1, 0, 4)
		if err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil || !slices.Equal(regs, []uint16{1234, 65534, 0x4366, 0x199A}) {
		t.Fatalf("fc 3: %04x, %v", regs, err)
	}
	if regs, err := m.ReadInputRegisters(ctx, 1, 1, 2); err != nil || !slices.Equal(regs, []uint16{8, 9}) {
		t.Errorf("fc 4: %v, %v", regs, err)
	}
	if bits, err := m.ReadCoils(ctx, 1, 0, 4); err != nil || !slices.Equal(bits, []bool{true, false, true, true}) {
		t.Errorf("fc 1: %v, %v", bits, err)
	}
	if bits, err := m.ReadDiscreteInputs(ctx, 1, 0, 5); err != nil || !slices.Equal(bits, []bool{false, true, true, false, true}) {
		t.Errorf("fc 2: %v, %v", bits, err)
	}
	if err := m.WriteSingleRegister(ctx, 1, 5, 555); err != nil {
		t.Errorf("fc 6: %v", err)
	}
	if err := m.WriteMultipleRegisters(ctx, 1, 6, []uint16{66, 77}); err != nil {
		t.Errorf("fc 16: %v", err)
	}
	if regs, err := m.ReadHoldingRegisters(ctx, 1, 5, 3); err != nil || !slices.Equal(regs, []uint16{555, 66, 77}) {
		t.Errorf("registers after fc 6 and 16: %v, %v", regs, err)
	}
	if err := m.WriteSingleCoil(ctx, 1, 10, true); err != nil {
		t.Errorf("fc 5: %v", err)
	}
	if err := m.WriteMultipleCoils(ctx, 1, 11, []bool{true, false, true}); err != nil {
		t.Errorf("fc 15: %v", err)
	}
	if bits, err := m.ReadCoils(ctx, 1, 10, 4); err != nil || !slices.Equal(bits, []bool{true, true, false, true}) {
		t.Errorf("coils after fc 5 and 15: %v, %v", bits, err)
	}
	// Past the end of its data block pymodbus answers "illegal data address".
	var ex *ExceptionError
	if _, err := m.ReadInputRegisters(ctx, 1, 2, 5); !errors.As(err, &ex) || ex.Code != ExIllegalDataAddress {
		t.Errorf("read past the block: %v, want exception 2", err)
	}
}
