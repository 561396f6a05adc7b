package testpeer

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// SocatPair starts `socat pty,raw,echo=0,link=A pty,raw,echo=0,link=B` and
// returns the two linked pseudo-terminal paths once they exist; socat stops
// when the test ends.
func SocatPair(t testing.TB) (a, b string) {
	t.Helper()
	socat := Need(t, "socat")
	dir := t.TempDir()
	a, b = filepath.Join(dir, "A"), filepath.Join(dir, "B")
	pair := exec.Command(socat, "pty,raw,echo=0,link="+a, "pty,raw,echo=0,link="+b)
	if err := pair.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pair.Process.Kill(); _ = pair.Wait() })
	Eventually(t, 5*time.Second, "socat's links "+a+" and "+b, func() bool {
		_, errA := os.Stat(a)
		_, errB := os.Stat(b)
		return errA == nil && errB == nil
	})
	return a, b
}

// Python is Debian's interpreter, the one that imports python3-pymodbus (a
// pyenv python earlier on PATH would not).
const Python = "/usr/bin/python3"

// pymodbusServer is the RTU slave of Debian's pymodbus 3.0; %s is the
// datastore expression (a ModbusSlaveContext), %d the baud rate.
const pymodbusServer = `
import sys
from pymodbus.server import StartSerialServer
from pymodbus.datastore import ModbusSequentialDataBlock, ModbusSlaveContext, ModbusServerContext
from pymodbus.framer.rtu_framer import ModbusRtuFramer
store = %s
StartSerialServer(context=ModbusServerContext(slaves={1: store}, single=False),
                  framer=ModbusRtuFramer, port=sys.argv[1], baudrate=%d, timeout=0.005)
`

// Pymodbus starts Debian's pymodbus RTU server as unit 1 with the given
// datastore (Python: a ModbusSlaveContext expression) on one end of a socat
// pair, and returns the other end for the master under test. The server
// needs a moment to import: the caller retries its first request.
func Pymodbus(t testing.TB, store string, baud int) string {
	t.Helper()
	if err := exec.Command(Python, "-c", "import pymodbus.server, serial_asyncio").Run(); err != nil {
		Missing(t, fmt.Sprintf("python3-pymodbus not importable by %s: %v", Python, err))
	}
	a, b := SocatPair(t)
	script := filepath.Join(t.TempDir(), "server.py")
	if err := os.WriteFile(script, fmt.Appendf(nil, pymodbusServer, store, baud), 0o644); err != nil {
		t.Fatal(err)
	}
	server := exec.Command(Python, script, a)
	var stderr bytes.Buffer
	server.Stderr = &stderr
	if err := server.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = server.Process.Kill()
		_ = server.Wait()
		if t.Failed() {
			t.Logf("pymodbus server's stderr:\n%s", stderr.String())
		}
	})
	return b
}
