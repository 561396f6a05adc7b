package config

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
)

// BenchmarkParseEffective parses the effective default configuration,
// every key written out, as `tinyscada run` hands it to each role: what a
// role allocates before it starts (and mostly keeps as heap).
func BenchmarkParseEffective(b *testing.B) {
	doc, err := Default().Encode()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse("x.toml", doc); err != nil {
			b.Fatal(err)
		}
	}
}

// Parsing the effective configuration allocates well under a megabyte
// (it was 10 MB: the fields of a key's path were listed again for every
// key, and every role kept most of that as heap). Bytes allocated, not a
// timing: it does not depend on the machine's load (no test of this
// package runs in parallel with it).
func TestParseEffectiveAllocates(t *testing.T) {
	doc, err := Default().Encode()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Parse("x.toml", doc); err != nil { // what is cached, once
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if _, err := Parse("x.toml", doc); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if n := after.TotalAlloc - before.TotalAlloc; n > 2<<20 {
		t.Errorf("Parse of the %d-byte effective configuration allocated %d bytes, want under 2 MiB", len(doc), n)
	}
}

// BenchmarkParseRetained parses a field configuration (50 devices of 20
// holding registers, the shape of internal/fieldbench's field workload)
// and reports the heap the parsed configuration keeps after a collection
// (retained-B): what every role that keeps its configuration holds for
// as long as it runs.
func BenchmarkParseRetained(b *testing.B) {
	var doc strings.Builder
	doc.WriteString("version = 1\nstate_dir = \"/tmp/x\"\n[[poller.port]]\nname = \"field\"\ndevice = \"/dev/ttyS0\"\nbaud = 115200\ntimeout = \"200ms\"\n")
	for u := 1; u <= 50; u++ {
		fmt.Fprintf(&doc, "\n[[poller.device]]\nname = \"meter%02d\"\nport = \"field\"\nunit = %d\ninterval = \"1s\"\n", u, u)
		for r := range 20 {
			fmt.Fprintf(&doc, "[[poller.device.point]]\nname = \"r%02d\"\ntable = \"holding\"\naddress = %d\n", r, r)
		}
	}
	data := []byte(doc.String())
	live := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	var kept *Config
	var retained uint64
	for b.Loop() {
		kept = nil
		before := live()
		c, err := Parse("field.toml", data)
		if err != nil {
			b.Fatal(err)
		}
		kept = c
		retained = live() - before
	}
	runtime.KeepAlive(kept)
	b.ReportMetric(float64(retained), "retained-B")
}
