package poller

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/shared/clock"
	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/modbus/value"
)

var jsonStrings = []string{"", "plain", `q"uote\back`, "tab\tnl\ncr\r", "\x00\x1f\x7f", "°C µs 日本", "bad\xffutf8", "\u2028"}

func TestAppendJSONString(t *testing.T) {
	for _, s := range jsonStrings {
		checkJSONString(t, s)
	}
}

func checkJSONString(t *testing.T, s string) {
	b := appendJSONString([]byte("x"), s)
	var back string
	if err := json.Unmarshal(b[1:], &back); err != nil {
		t.Fatalf("%q → %s: %v", s, b[1:], err)
	}
	want := strings.ToValidUTF8(s, "\ufffd")
	if back != want {
		t.Fatalf("%q → %s → %q", s, b[1:], back)
	}
}

func FuzzAppendJSONString(f *testing.F) {
	for _, s := range jsonStrings {
		f.Add(s)
	}
	f.Fuzz(checkJSONString)
}

func TestMessage(t *testing.T) {
	at := clock.Stamp{Wall: time.UnixMilli(1700000000123), Mono: 42 * time.Second, Boot: "b-1"}
	var m message
	m.begin("abc", 7, at)
	m.good([]byte(`"a":`), []byte("1.5"))
	m.failed([]byte(`"b":`), `exception 2 ("x")`)
	m.good([]byte(`"c":`), []byte("true"))
	got := string(m.end())
	want := `{"run":"abc","seq":7,"t":1700000000123,"m":42000000000,"b":"b-1","v":{"a":1.5,"c":true},"bad":{"b":"exception 2 (\"x\")"}}`
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	m.begin("abc", 8, at)
	if got := string(m.end()); got != `{"run":"abc","seq":8,"t":1700000000123,"m":42000000000,"b":"b-1","v":{}}` {
		t.Errorf("empty message %s", got)
	}
}

func TestAppendValue(t *testing.T) {
	point := func(typ string, scale, offset float64) *Point {
		pc := &config.PollerPoint{Name: "p", Type: typ, Scale: scale, Offset: offset, WordOrder: "big", ByteOrder: "big"}
		pt, err := compilePoint(pc)
		if err != nil {
			t.Fatal(err)
		}
		return &pt
	}
	f32 := func(f float32) value.Value { return value.Value{Type: value.F32, Bits: uint64(math.Float32bits(f))} }
	cases := []struct {
		pt   *Point
		raw  value.Value
		want string
	}{
		{point("u16", 1, 0), value.Value{Type: value.U16, Bits: 2301}, "2301"},
		{point("u16", 0.1, 0), value.Value{Type: value.U16, Bits: 2301}, "230.1"},
		{point("u16", 0.01, 0), value.Value{Type: value.U16, Bits: 5000}, "50"},
		{point("s16", 0.1, 0), value.Value{Type: value.S16, Bits: 0xFF85}, "-12.3"},
		{point("u32", 2, 0.5), value.Value{Type: value.U32, Bits: 10}, "20.5"},
		{point("f32", 1, 0), f32(230.1), "230.1"},
		{point("f32", 1, 0), f32(float32(math.NaN())), "bad: not a number (NaN)"},
		{point("f64", 1, 0), value.Value{Type: value.F64, Bits: math.Float64bits(math.Inf(-1))}, "bad: not a number (-Inf)"},
		{point("u64", 1, 0), value.Value{Type: value.U64, Bits: math.MaxUint64}, "18446744073709551615"},
		{point("bool", 1, 0), value.Value{Type: value.Bool, Bits: 1}, "true"},
	}
	for _, tc := range cases {
		b, why := appendValue(nil, tc.pt, tc.raw)
		got := string(b)
		if why != "" {
			got = "bad: " + why
		}
		if got != tc.want {
			t.Errorf("%v ×%g %+g: %s, want %s", tc.raw, tc.pt.Scale, tc.pt.Add, got, tc.want)
		}
	}
}

func TestPlanText(t *testing.T) {
	c := config.Default()
	c.StateDir = "/var/lib/tinyscada"
	p, err := MakePlan(&c.Poller, c.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := p.Write(&b); err != nil {
		t.Fatal(err)
	}
	want := `port sim: /var/lib/tinyscada/run/sim-tty, rtu 9600 8N1, timeout 500ms, retries 0 (simulated)
  device meter: unit 1, every 1s, timeout 500ms, 3 requests per round
    fc 2 read discrete inputs 0-1 (2): breaker_closed@0 alarm@1
    fc 3 read holding registers 0 (1): ct_ratio@0(u16)
    fc 4 read input registers 0-8 (9): voltage@0(f32 V) current@2(f32 A) power@4(f32 W) energy@6(u32 Wh) frequency@8(u16 ×0.01 Hz)
  device climate: unit 2, every 1s, timeout 500ms, 4 requests per round
    fc 1 read coils 0-1 (2): fan@0 heater@1
    fc 2 read discrete inputs 0 (1): door_open@0
    fc 3 read holding registers 0 (1): setpoint@0(s16 ×0.1 °C)
    fc 4 read input registers 0-5 (6): temperature@0(s16 ×0.1 °C) humidity@1(u16 ×0.1 %) uptime@2(u32 word-swapped s) pressure@4(f32 word-swapped hPa)
total: 1 port, 16 points, 7 Modbus requests per round
`
	if b.String() != want {
		t.Errorf("plan:\n%s\nwant\n%s", b.String(), want)
	}
}

func TestOutbox(t *testing.T) {
	o := NewOutbox(3)
	now := time.Now()
	for i := range 3 {
		if !o.Reserve() {
			t.Fatalf("reserve %d failed", i)
		}
		o.Add("t", now, func(seq uint64) []byte { return []byte{byte(seq)} })
	}
	if o.Reserve() {
		t.Fatal("a fourth place in an outbox of 3")
	}
	due := o.Due(now, time.Second, 10, nil)
	if len(due) != 3 || due[0].Seq != 1 || due[2].Seq != 3 || due[0].Resent {
		t.Fatalf("due %+v", due)
	}
	if d := o.Due(now.Add(500*time.Millisecond), time.Second, 10, nil); len(d) != 0 {
		t.Fatalf("due again before the resend time: %+v", d)
	}
	if d := o.Due(now.Add(time.Second), time.Second, 10, nil); len(d) != 3 || !d[0].Resent {
		t.Fatalf("not due again after the resend time: %+v", d)
	}
	if n := o.Ack(2); n != 2 {
		t.Fatalf("ack 2 dropped %d", n)
	}
	if o.Ack(1) != 0 {
		t.Fatal("an old ack dropped something")
	}
	if !o.Reserve() {
		t.Fatal("no room after an ack")
	}
	o.Release()
	o.Unsent()
	if d := o.Due(now, time.Hour, 10, nil); len(d) != 1 || d[0].Seq != 3 || !d[0].Resent {
		t.Fatalf("after Unsent: %+v", d)
	}
	s := o.Stats(now.Add(time.Second))
	if s.Depth != 1 || s.Oldest != time.Second || s.Seq != 3 || s.Acked != 2 || s.Full {
		t.Fatalf("stats %+v", s)
	}
}

// Fresh counts the messages at the end of the outbox never published:
// what the sender has not taken yet.
func TestOutboxFresh(t *testing.T) {
	o := NewOutbox(10)
	add := func() {
		if !o.Reserve() {
			t.Fatal("outbox full")
		}
		o.Add("d", time.Now(), func(uint64) []byte { return []byte("x") })
	}
	add()
	add()
	if n := o.Fresh(10); n != 2 {
		t.Fatalf("Fresh = %d after two adds, want 2", n)
	}
	o.Due(time.Now(), time.Hour, 64, nil)
	add()
	if n := o.Fresh(10); n != 1 {
		t.Fatalf("Fresh = %d after a publish and an add, want 1", n)
	}
	if n := o.Fresh(0); n != 0 {
		t.Fatalf("Fresh(0) = %d", n)
	}
	o.Unsent() // after a reconnect everything goes again, but it is not new
	if n := o.Fresh(10); n != 1 {
		t.Fatalf("Fresh = %d after Unsent, want 1", n)
	}
}
