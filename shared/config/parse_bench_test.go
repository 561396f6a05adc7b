package config

import (
	"runtime"
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
