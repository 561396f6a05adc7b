package config

import "testing"

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
