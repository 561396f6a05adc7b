package poller

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/shared/modbus/value"
	"github.com/tinyscada/tinyscada/shared/pty"
)

var kvCases = []struct {
	line string
	want string // "k=v|k=v" or "error: …"
}{
	{"V=230.1 I=12", "V=230.1|I=12"},
	{"  a=1,b=2;c=3\t", "a=1|b=2|c=3"},
	{"id=7 status=ok empty=", "id=7|status=ok|empty="},
	{"url=http://x/?q=1", "url=http://x/?q=1"},
	{"noequals", `error: field "noequals" has no '=' (want key=value)`},
	{"a=1 =2", `error: field "=2" has no key`},
	{" ,; ", "error: empty record"},
	{"", "error: empty record"},
}

func fieldsText(fs []field) string {
	var parts []string
	for _, f := range fs {
		parts = append(parts, string(f.key)+"="+string(f.val))
	}
	return strings.Join(parts, "|")
}

func TestParseKV(t *testing.T) {
	for _, tc := range kvCases {
		fs, err := parseKV([]byte(tc.line), nil)
		got := fieldsText(fs)
		if err != nil {
			got = "error: " + err.Error()
		}
		if got != tc.want {
			t.Errorf("parseKV(%q) = %s, want %s", tc.line, got, tc.want)
		}
	}
}

var regexCases = []struct {
	re, line, want string
}{
	{`^ST,GS,\s*(?P<weight>[-+0-9.]+)\s*(?P<unit>kg|g)$`, "ST,GS,  +12.345 kg", "weight=+12.345|unit=kg"},
	{`T=(?P<t>\d+)(?: H=(?P<h>\d+))?`, "T=21", "t=21"},
	{`T=(?P<t>\d+)`, "nothing", "error: record does not match line_regex"},
}

func TestParseRegex(t *testing.T) {
	for _, tc := range regexCases {
		fs, err := parseRegex(regexp.MustCompile(tc.re), []byte(tc.line), nil)
		got := fieldsText(fs)
		if err != nil {
			got = "error: " + err.Error()
		}
		if got != tc.want {
			t.Errorf("parseRegex(%q, %q) = %s, want %s", tc.re, tc.line, got, tc.want)
		}
	}
}

func TestParseValue(t *testing.T) {
	cases := []struct {
		typ  value.Type
		text string
		want string
	}{
		{value.Bool, "ON", "true"}, {value.Bool, "0", "false"}, {value.Bool, "yes", `error: "yes" is not a boolean`},
		{value.U16, "65535", "65535"}, {value.U16, "65536", `error: "65536" is not a u16`},
		{value.S16, "-32768", "-32768"}, {value.S32, "x", `error: "x" is not an s32`},
		{value.U64, "18446744073709551615", "18446744073709551615"},
		{value.F32, "1e3", "1000"}, {value.F64, "-0.25", "-0.25"}, {value.F64, "nan", "NaN"},
	}
	for _, tc := range cases {
		v, err := parseValue(tc.typ, []byte(tc.text))
		got := v.String()
		if err != nil {
			got = "error: " + err.Error()
		}
		if got != tc.want {
			t.Errorf("parseValue(%v, %q) = %s, want %s", tc.typ, tc.text, got, tc.want)
		}
	}
}

// FuzzLineRecord feeds arbitrary records to both parsers and the value
// parser: they must not panic, and what they return must alias the line.
func FuzzLineRecord(f *testing.F) {
	for _, tc := range kvCases {
		f.Add(tc.line)
	}
	for _, tc := range regexCases {
		f.Add(tc.line)
	}
	re := regexp.MustCompile(regexCases[0].re)
	f.Fuzz(func(t *testing.T, line string) {
		fs, err := parseKV([]byte(line), nil)
		if err == nil && len(fs) == 0 {
			t.Fatal("no error and no field")
		}
		for _, fl := range fs {
			if len(fl.key) == 0 || !strings.Contains(line, string(fl.key)+"="+string(fl.val)) {
				t.Fatalf("field %q=%q is not in %q", fl.key, fl.val, line)
			}
			for typ := value.Bool; typ <= value.F64; typ++ {
				parseValue(typ, fl.val)
			}
		}
		parseRegex(re, []byte(line), nil)
	})
}

// TestLinePort reads records from a pseudo-terminal as a scale would send
// them, good and bad, and goes offline when the records stop.
func TestLinePort(t *testing.T) {
	t.Parallel()
	pt, cfg := linePort(t, t.TempDir(), "100ms", `
[[poller.device]]
name = "meter"
port = "ascii"
interval = "100ms"
[[poller.device.point]]
name = "voltage"
key = "V"
scale = 0.1
unit = "V"
[[poller.device.point]]
name = "count"
type = "u32"
[[poller.device.point]]
name = "on"
type = "bool"
`)
	rec := newRecorder()
	p := startPoller(t, cfg, rec)
	<-p.Started()
	write := func(s string) {
		if _, err := pt.Master.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	// The first line may be a partial one: it is skipped.
	time.Sleep(100 * time.Millisecond)
	write("tail of a record\r\n")
	write("V=2301 count=7 on=1\r\nrubbish\nV=2302 on=0 count=x\n")
	write(strings.Repeat("x", maxLine+10) + "\nV=2303 count=9 on=true\n")

	from := 0
	topic := "tinyscada/data/meter"
	var got []string
	for range 3 {
		m := rec.wait(t, &from, topic, 5*time.Second, "a record", nil)
		d := parseData(t, m)
		v, _ := json.Marshal(d.V)
		b, _ := json.Marshal(d.Bad)
		got = append(got, string(v)+" "+string(b))
	}
	want := []string{
		`{"count":7,"on":true,"voltage":230.1} null`,
		`{"on":false,"voltage":230.2} {"count":"\"x\" is not a u32"}`,
		`{"count":9,"on":true,"voltage":230.3} null`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("records:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if n := p.Stats().BadRecords; n != 2 {
		t.Errorf("%d bad records, want 2 (rubbish, too long)", n)
	}
	sfrom := 0
	rec.wait(t, &sfrom, "tinyscada/device/meter/state", 5*time.Second, "online", isState("online"))
	m := rec.wait(t, &sfrom, "tinyscada/device/meter/state", 5*time.Second, "offline after silence", isState("offline"))
	if s := parseState(t, m); s.Error != "no record for 300ms" {
		t.Errorf("offline state %s", m.Payload)
	}
	write("V=1 count=1 on=0\n")
	rec.wait(t, &sfrom, "tinyscada/device/meter/state", 5*time.Second, "online again", isState("online"))
}

// TestLinePortAllFields: a line device without points publishes every
// field as a number.
func TestLinePortAllFields(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pt, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer pt.Close()
	cfg := testConfig(t, dir, fmt.Sprintf(`
[[poller.port]]
name = "ascii"
device = %q
mode = "line"
line_format = "regex"
line_regex = 'T=(?P<temp>\S+) H=(?P<hum>\S+)'
[[poller.device]]
name = "room"
port = "ascii"
`, pt.SlavePath))
	rec := newRecorder()
	p := startPoller(t, cfg, rec)
	<-p.Started()
	time.Sleep(100 * time.Millisecond)
	pt.Master.Write([]byte("\nT=21.5 H=40\nT=22 H=?\n"))
	from := 0
	m1 := rec.wait(t, &from, "tinyscada/data/room", 5*time.Second, "a record", nil)
	m2 := rec.wait(t, &from, "tinyscada/data/room", 5*time.Second, "a record", nil)
	if d := parseData(t, m1); string(d.V["temp"]) != "21.5" || string(d.V["hum"]) != "40" || d.Bad != nil {
		t.Errorf("first record %s", m1.Payload)
	}
	if d := parseData(t, m2); string(d.V["temp"]) != "22" || d.Bad["hum"] != "not a number" {
		t.Errorf("second record %s", m2.Payload)
	}
}
