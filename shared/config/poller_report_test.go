package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// keyErrors returns the validation errors of doc as "key: msg" lines.
func keyErrors(t *testing.T, doc string) []string {
	t.Helper()
	_, err := Parse("t.toml", []byte(doc))
	if err == nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(err.Error(), "\n") {
		out = append(out, line)
	}
	// Every problem is an *Error with its key.
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error is not a *config.Error: %v", err)
	}
	return out
}

// One problem does not hide another: each case's problems are all
// reported, each at its key, and a missing key is reported as missing.
func TestPollerReportsEveryProblem(t *testing.T) {
	const port = "version = 1\n[[poller.port]]\nname = \"bus1\"\ndevice = \"/dev/ttyUSB0\"\n"
	cases := []struct {
		name string
		doc  string
		want []string // substrings, each in some error line
		not  []string // substrings in no error line
	}{
		{"unknown port and unit out of range",
			port + "[[poller.device]]\nname = \"m\"\nport = \"bus2\"\nunit = 300\n[[poller.device.point]]\nname = \"v\"\ntable = \"input\"\n",
			[]string{`poller.device[0].port: unknown port "bus2"`, "poller.device[0].unit: 300 is out of range (want 1 to 247)"}, nil},
		{"unknown port and a point's address out of range",
			port + "[[poller.device]]\nname = \"m\"\nport = \"bus2\"\nunit = 1\n[[poller.device.point]]\nname = \"v\"\ntable = \"input\"\ntype = \"u32\"\naddress = 65535\n",
			[]string{`unknown port "bus2"`, "poller.device[0].point[0].address: 65535 is out of range"}, nil},
		{"bad type and address out of range",
			port + "[[poller.device]]\nname = \"m\"\nport = \"bus1\"\nunit = 1\n[[poller.device.point]]\nname = \"v\"\ntable = \"holding\"\ntype = \"float\"\naddress = 70000\n",
			[]string{`poller.device[0].point[0].type: "float" is not one of`, "poller.device[0].point[0].address: 70000 is out of range"}, nil},
		{"bit type and address out of range",
			port + "[[poller.device]]\nname = \"m\"\nport = \"bus1\"\nunit = 1\n[[poller.device.point]]\nname = \"v\"\ntable = \"coil\"\ntype = \"u16\"\naddress = -1\n",
			[]string{"poller.device[0].point[0].type: a coil is one bit", "poller.device[0].point[0].address: -1 is out of range"}, nil},
		{"bad table and address out of range",
			port + "[[poller.device]]\nname = \"m\"\nport = \"bus1\"\nunit = 1\n[[poller.device.point]]\nname = \"v\"\ntable = \"inputs\"\naddress = 65536\n",
			[]string{`poller.device[0].point[0].table: "inputs" is not one of`, "poller.device[0].point[0].address: 65536 is out of range"}, nil},
		{"missing unit",
			port + "[[poller.device]]\nname = \"m\"\nport = \"bus1\"\n[[poller.device.point]]\nname = \"v\"\ntable = \"input\"\n",
			[]string{"poller.device[0].unit: missing: the Modbus slave id, 1 to 247"}, []string{"0 is out of range"}},
		{"unit 0 written",
			port + "[[poller.device]]\nname = \"m\"\nport = \"bus1\"\nunit = 0\n[[poller.device.point]]\nname = \"v\"\ntable = \"input\"\n",
			[]string{"poller.device[0].unit: 0 is out of range (want 1 to 247)"}, []string{"missing"}},
	}
	for _, tc := range cases {
		errs := keyErrors(t, tc.doc)
		all := strings.Join(errs, "\n")
		for _, w := range tc.want {
			if !strings.Contains(all, w) {
				t.Errorf("%s: no error %q in:\n%s", tc.name, w, all)
			}
		}
		for _, n := range tc.not {
			if strings.Contains(all, n) {
				t.Errorf("%s: unwanted %q in:\n%s", tc.name, n, all)
			}
		}
	}
}

// The effective configuration shows the values in force: a device's
// timeout where it comes from its port (rtu) or from its interval (line),
// and no line_format or line_regex on an rtu port, where they do not
// apply; the line port shows its kv default. It decodes to itself.
func TestPollerEffectiveShowsValuesInForce(t *testing.T) {
	doc := `version = 1
[[poller.port]]
name = "bus1"
device = "/dev/ttyUSB0"
timeout = "300ms"
[[poller.port]]
name = "ascii"
device = "/dev/ttyS1"
mode = "line"
[[poller.device]]
name = "m"
port = "bus1"
unit = 1
[[poller.device.point]]
name = "v"
table = "input"
[[poller.device]]
name = "scale"
port = "ascii"
interval = "2s"
`
	c, err := Parse("t.toml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Poller.Device[0].Timeout.Duration; got != 300*time.Millisecond {
		t.Errorf("rtu device timeout in force = %v, want the port's 300ms", got)
	}
	if got := c.Poller.Device[1].Timeout.Duration; got != 6*time.Second {
		t.Errorf("line device timeout in force = %v, want 3 × 2s", got)
	}
	b, err := c.Encode()
	if err != nil {
		t.Fatal(err)
	}
	enc := string(b)
	for _, bad := range []string{"timeout = '0s'", "line_format = ''", "line_regex = ''", "key = ''", "table = ''", "unit = 0"} {
		if strings.Contains(enc, "\n"+bad+"\n") {
			t.Errorf("effective configuration shows %q, not the value in force:\n%s", bad, enc)
		}
	}
	for _, want := range []string{"timeout = '300ms'", "timeout = '6s'", "line_format = 'kv'"} {
		if !strings.Contains(enc, want) {
			t.Errorf("effective configuration lacks %q:\n%s", want, enc)
		}
	}
	again, err := Parse("effective.toml", b)
	if err != nil {
		t.Fatalf("the effective configuration is refused: %v", err)
	}
	b2, _ := again.Encode()
	if string(b2) != enc {
		t.Errorf("the effective configuration does not decode to itself:\n%s\nthen\n%s", enc, b2)
	}
}

// NameProblem is the name rule of the configuration, which the poller
// also applies to the fields of line records: control characters, invalid
// UTF-8, wildcards, '/' and a leading '$' are refused.
func TestNameProblem(t *testing.T) {
	for _, s := range []string{"voltage", "temp_1", "Wärme", "a.b-c"} {
		if msg := NameProblem(s); msg != "" {
			t.Errorf("NameProblem(%q) = %q, want ok", s, msg)
		}
	}
	for _, s := range []string{"", "\x01\x02", "a\tb", "\xff\xfe", "a+b", "#", "$SYS", "x/y", "a\x7f", "a\u0085"} {
		if NameProblem(s) == "" {
			t.Errorf("NameProblem(%q) accepts it", s)
		}
	}
	doc := "version = 1\n[[poller.port]]\nname = \"bus1\"\ndevice = \"/dev/ttyUSB0\"\n[[poller.device]]\nname = \"m\\u0001\"\nport = \"bus1\"\nunit = 1\n[[poller.device.point]]\nname = \"v\"\ntable = \"input\"\n"
	if errs := strings.Join(keyErrors(t, doc), "\n"); !strings.Contains(errs, "poller.device[0].name: \"m\\x01\" holds a control character") {
		t.Errorf("a device name with a control character: %q", errs)
	}
}
