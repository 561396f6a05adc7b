package config

import "testing"

// CheckName is the rule for device and point names, in the configuration
// and (through the logger) from the bus.
func TestCheckName(t *testing.T) {
	for _, s := range []string{"meter", "voltage_L1", "Zähler", "a.b-c"} {
		if err := CheckName(s); err != nil {
			t.Errorf("%q refused: %v", s, err)
		}
	}
	for _, s := range []string{"", "a\x00b", "a\x01b", "a\tb", "a\nb", "a\u0085b", "a/b", "+", "a#", "$SYS", "\xff"} {
		if err := CheckName(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
}
