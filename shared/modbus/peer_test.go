package modbus

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// needTool skips the test when a tool is missing, or fails it when the
// environment variable CI is "true".
func needTool(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s: %v", what, err)
	}
	t.Skipf("%s not available: %v", what, err)
}

// pymodbusServer is an RTU slave written by others: Debian's pymodbus 3.0.
const pymodbusServer = `
import sys, logging
from pymodbus.server import StartSerialServer
from pymodbus.datastore import ModbusSequentialDataBlock, ModbusSlaveContext, ModbusServerContext
from pymodbus.framer.rtu_framer import ModbusRtuFramer
store = ModbusSlaveContext(
    di=ModbusSequentialDataBlock(0, [0, 1, 1, 0, 1]),
    co=ModbusSequentialDataBlock(0, [1, 0, 1, 1] + [0] * 20),
    hr=ModbusSequentialDataBlock(0, [1234, 65534, 0x4366, 0x199A] + [0] * 16),
    ir=ModbusSequentialDataBlock(0, [7, 8, 9]),
    zero_mode=True)
StartSerialServer(context=ModbusServerContext(slaves={1: store}, single=False),
                  framer=ModbusRtuFramer, port=sys.argv[1], baudrate=9600, timeout=0.005)
`

// TestAgainstPymodbus runs our master against pymodbus's RTU server on a
// socat pseudo-terminal pair.
func TestAgainstPymodbus(t *testing.T) {
	socat, err := exec.LookPath("socat")
	needTool(t, "socat", err)
	const python = "/usr/bin/python3" // Debian's, which has python3-pymodbus
	err = exec.Command(python, "-c", "import pymodbus.server, serial_asyncio").Run()
	needTool(t, "python3-pymodbus", err)

	dir := t.TempDir()
	a, b := filepath.Join(dir, "A"), filepath.Join(dir, "B")
	pair := exec.Command(socat, "pty,raw,echo=0,link="+a, "pty,raw,echo=0,link="+b)
	if err := pair.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pair.Process.Kill(); pair.Wait() })
	waitFor(t, a, b)

	script := filepath.Join(dir, "server.py")
	os.WriteFile(script, []byte(pymodbusServer), 0o644)
	server := exec.Command(python, script, a)
	var stderr bytes.Buffer
	server.Stderr = &stderr
	if err := server.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		server.Process.Kill()
		server.Wait()
		if t.Failed() {
			t.Logf("pymodbus server's stderr:\n%s", stderr.String())
		}
	})

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

func waitFor(t *testing.T, paths ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for _, p := range paths {
		for {
			if _, err := os.Stat(p); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s did not appear", p)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}
