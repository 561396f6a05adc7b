package store

import (
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
)

const goodMsg = `{"run":"a1b2c3","seq":7,"t":1700000000123,"m":5000000000,"b":"boot-1","v":{"voltage":230.1,"energy":12345,"alarm":false,"on":true,"big":18446744073709551615,"neg":-9223372036854775808},"bad":{"current":"exception 2 (\"x\")"}}`

func TestDecodeGood(t *testing.T) {
	var m Message
	if err := Decode([]byte(goodMsg), &m); err != nil {
		t.Fatal(err)
	}
	if string(m.Run) != "a1b2c3" || m.Seq != 7 || m.Wall != 1700000000123 || m.Mono != 5e9 || string(m.Boot) != "boot-1" || !m.HasID {
		t.Fatalf("header = %+v", m)
	}
	want := []Value{
		{Name: []byte("voltage"), Kind: KindFloat, F: 230.1},
		{Name: []byte("energy"), Kind: KindInt, I: 12345},
		{Name: []byte("alarm"), Kind: KindBool, I: 0},
		{Name: []byte("on"), Kind: KindBool, I: 1},
		{Name: []byte("big"), Kind: KindText, Text: []byte("18446744073709551615")},
		{Name: []byte("neg"), Kind: KindInt, I: math.MinInt64},
	}
	if len(m.Values) != len(want) {
		t.Fatalf("values = %+v", m.Values)
	}
	for i, w := range want {
		g := m.Values[i]
		if string(g.Name) != string(w.Name) || g.Kind != w.Kind || g.I != w.I || g.F != w.F || string(g.Text) != string(w.Text) {
			t.Errorf("value %d = %+v, want %+v", i, g, w)
		}
	}
	if len(m.Bad) != 1 || string(m.Bad[0].Name) != "current" || string(m.Bad[0].Why) != `exception 2 ("x")` {
		t.Errorf("bad = %q", m.Bad)
	}
}

func TestDecodeVariants(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		check    func(*Message) bool
	}{
		{"whitespace and order", " {\n\"v\" : { } , \"m\":0,\"t\":5,\"seq\":1,\"run\":\"r\" }\t", func(m *Message) bool {
			return m.Seq == 1 && m.Wall == 5 && len(m.Values) == 0 && len(m.Boot) == 0
		}},
		{"unknown keys skipped", `{"run":"r","seq":2,"t":1,"m":1,"v":{"a":1e3},"x":[1,{"y":null},"z"],"w":{"q":[true]}}`, func(m *Message) bool {
			return len(m.Values) == 1 && m.Values[0].Kind == KindFloat && m.Values[0].F == 1000
		}},
		{"escaped names", `{"run":"r","seq":3,"t":1,"m":1,"v":{"temp \u00b0C":1.5,"a\"b":2,"\ud83d\ude00":3}}`, func(m *Message) bool {
			return len(m.Values) == 3 && string(m.Values[0].Name) == "temp °C" && string(m.Values[1].Name) == `a"b` && string(m.Values[2].Name) == "😀"
		}},
		{"float beyond int64", `{"run":"r","seq":4,"t":1,"m":1,"v":{"a":-9223372036854775809,"b":123456789012345678901234}}`, func(m *Message) bool {
			return len(m.Values) == 2 && m.Values[0].Kind == KindFloat && m.Values[1].Kind == KindFloat && m.Values[1].F == 1.2345678901234568e23
		}},
	} {
		var m Message
		if err := Decode([]byte(tc.in), &m); err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if !tc.check(&m) {
			t.Errorf("%s: decoded %+v", tc.name, m)
		}
	}
}

// badMsgs are payloads that are not data messages; hasID says whether the
// run and seq could still be read.
var badMsgs = []struct {
	in    string
	hasID bool
	why   string
}{
	{``, false, "not a JSON object"},
	{`null`, false, "not a JSON object"},
	{`[1,2]`, false, "not a JSON object"},
	{`{"run":"r","seq":1,"t":1,"m":1}`, true, `no "v"`},
	{`{"seq":1,"t":1,"m":1,"v":{}}`, false, `no "run"`},
	{`{"run":"r","t":1,"m":1,"v":{}}`, false, `no "seq"`},
	{`{"run":"r","seq":1,"m":1,"v":{}}`, true, `no "t"`},
	{`{"run":"r","seq":1,"t":1,"v":{}}`, true, `no "m"`},
	{`{"run":"r","seq":0,"t":1,"m":1,"v":{}}`, false, "seq 0"},
	{`{"run":"r","seq":-1,"t":1,"m":1,"v":{}}`, false, "seq -1"},
	{`{"run":"r","seq":1.5,"t":1,"m":1,"v":{}}`, false, "not an integer"},
	{`{"run":"r","seq":99999999999999999999,"t":1,"m":1,"v":{}}`, false, "out of range"},
	{`{"run":"","seq":1,"t":1,"m":1,"v":{}}`, false, "empty run"},
	{`{"run":"a b","seq":1,"t":1,"m":1,"v":{}}`, false, "printable"},
	{`{"run":"r","seq":1,"t":1,"m":-1,"v":{}}`, true, "negative m"},
	{`{"run":"r","seq":1,"t":1,"m":1,"v":{"a":null}}`, true, "want a number"},
	{`{"run":"r","seq":1,"t":1,"m":1,"v":{"a":"1"}}`, true, "want a number"},
	{`{"run":"r","seq":1,"t":1,"m":1,"v":{"a":NaN}}`, true, "want a number"},
	{`{"run":"r","seq":1,"t":1,"m":1,"v":{"a":1e999}}`, true, "out of range"},
	{`{"run":"r","seq":1,"t":1,"m":1,"v":{"a":01}}`, true, "want ',' or '}'"},
	{`{"run":"r","seq":1,"t":1,"m":1,"v":{"a":1.}}`, true, "no digits after"},
	{`{"run":"r","seq":1,"t":1,"m":1,"v":{"a":1,"a":2}}`, true, "repeated"},
	{`{"run":"r","seq":1,"t":1,"m":1,"v":{"":1}}`, true, "bad point name"},
	{`{"run":"r","seq":1,"t":-1,"m":1,"v":{}}`, true, "t -1 out of range"},
	{`{"run":"r","seq":1,"t":9223372036854775807,"m":1,"v":{}}`, true, "out of range"},
	// Names obey the configuration's rule (config.NameProblem).
	{`{"run":"r","seq":1,"t":1,"m":1,"v":{"a\u0000b":1}}`, true, "bad point name"},
	{`{"run":"r","seq":1,"t":1,"m":1,"v":{"a\u001bb":1}}`, true, "control character"},
	{`{"run":"r","seq":1,"t":1,"m":1,"v":{"a\u0085":1}}`, true, "control character"},
	{`{"run":"r","seq":1,"t":1,"m":1,"v":{"a/b":1}}`, true, "bad point name"},
	{`{"run":"r","seq":1,"t":1,"m":1,"v":{"a+":1}}`, true, "wildcard"},
	{`{"run":"r","seq":1,"t":1,"m":1,"v":{},"bad":{"x\n":"why"}}`, true, "control character"},
	{`{"run":"r","seq":1,"t":1,"m":1,"v":{"a":1},"bad":{"a":"x"}}`, true, "both in v and bad"},
	{`{"run":"r","seq":1,"t":1,"m":1,"v":{"a":1},"bad":{"b":3}}`, true, "want a string"},
	{`{"run":"r","seq":1,"seq":2,"t":1,"m":1,"v":{}}`, true, "repeated"},
	{`{"run":"r","seq":1,"t":1,"m":1,"v":{}} x`, true, "text after"},
	{`{"run":"r","seq":1,"t":1,"m":1,"v":{}`, true, "want ',' or '}'"},
	{`{"run":"r","seq":1,"t":1,"m":1,"v":{"a":1}`, true, "want ',' or '}'"},
	{`{"run":"r","seq":1,"t":1,"m":1,"v":{"a` + "\x01" + `":1}}`, true, "control character"},
	{`{"run":"r","seq":1,"t":1,"m":1,"v":{"` + "\xff" + `":1}}`, true, "bad point name"},
	{`{"run":"r","seq":1,"t":1,"m":1,"v":{"a\q":1}}`, true, "bad escape"},
	{`{"run":"r","seq":1,"t":1,"m":1,"v":{},"x":` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}`, true, "nested deeper"},
	{`{"run":"r","seq":1,"t":1,"m":1,"v":{},"x":tru}`, true, "want a number"},
}

func TestDecodeMalformed(t *testing.T) {
	for _, tc := range badMsgs {
		var m Message
		err := Decode([]byte(tc.in), &m)
		if err == nil {
			t.Errorf("%q: accepted", tc.in)
			continue
		}
		var de *DecodeError
		if !errors.As(err, &de) {
			t.Errorf("%q: error %T is not a *DecodeError", tc.in, err)
		}
		if !strings.Contains(err.Error(), tc.why) {
			t.Errorf("%q: error %q does not say %q", tc.in, err, tc.why)
		}
		if m.HasID != tc.hasID {
			t.Errorf("%q: HasID = %v, want %v", tc.in, m.HasID, tc.hasID)
		}
	}
}

func TestDecodeNoAllocs(t *testing.T) {
	payload := []byte(`{"run":"a1b2c3d4","seq":123,"t":1700000000123,"m":5000000000,"b":"0b1c2d3e-0000-4000-8000-1234567890ab","v":{"voltage":230.1,"current":1.25,"power":287.6,"energy":123456,"frequency":49.99,"ct_ratio":100,"breaker_closed":true,"alarm":false}}`)
	var m Message
	if err := Decode(payload, &m); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() { _ = Decode(payload, &m) }); n != 0 {
		t.Errorf("Decode allocates %v times per message", n)
	}
}

// FuzzDecode: no payload makes Decode panic; whatever it accepts is valid
// JSON, and the values it reads are the ones encoding/json reads.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(goodMsg))
	for _, tc := range badMsgs {
		f.Add([]byte(tc.in))
	}
	f.Add([]byte(`{"run":"r","seq":1,"t":1,"m":1,"v":{"a":-0.0,"b":1E+2,"c":"\u0000"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var m Message
		if Decode(data, &m) != nil {
			return
		}
		if !json.Valid(data) {
			t.Fatalf("accepted invalid JSON %q", data)
		}
		// Keys compared exactly (a struct would match them case-insensitively).
		var top map[string]json.RawMessage
		if err := json.Unmarshal(data, &top); err != nil {
			t.Fatalf("encoding/json refuses what Decode accepted: %v\n%q", err, data)
		}
		var ref struct {
			Run string
			Seq uint64
			T   int64
			M   int64
			B   string
			V   map[string]any
			Bad map[string]string
		}
		for _, f := range []struct {
			key string
			dst any
		}{{"run", &ref.Run}, {"seq", &ref.Seq}, {"t", &ref.T}, {"m", &ref.M}, {"b", &ref.B}, {"v", &ref.V}, {"bad", &ref.Bad}} {
			if raw, ok := top[f.key]; ok {
				if err := json.Unmarshal(raw, f.dst); err != nil {
					t.Fatalf("encoding/json refuses %q of what Decode accepted: %v\n%q", f.key, err, data)
				}
			}
		}
		if ref.Run != string(m.Run) || ref.Seq != m.Seq || ref.T != m.Wall || ref.M != m.Mono || ref.B != string(m.Boot) {
			t.Fatalf("header differs: ours %+v, encoding/json %+v", m, ref)
		}
		if len(ref.V) != len(m.Values) {
			t.Fatalf("values: ours %d, encoding/json %d", len(m.Values), len(ref.V))
		}
		for _, v := range m.Values {
			r, ok := ref.V[string(v.Name)]
			if !ok {
				t.Fatalf("point %q not seen by encoding/json", v.Name)
			}
			switch v.Kind {
			case KindBool:
				if r != (v.I == 1) {
					t.Fatalf("point %q: %v vs %v", v.Name, v.I, r)
				}
			case KindInt:
				if f, _ := r.(float64); f != float64(v.I) {
					t.Fatalf("point %q: %v vs %v", v.Name, v.I, r)
				}
			case KindFloat:
				if f, _ := r.(float64); f != v.F {
					t.Fatalf("point %q: %v vs %v", v.Name, v.F, r)
				}
			case KindText:
				if _, ok := r.(float64); !ok {
					t.Fatalf("point %q: %q vs %v", v.Name, v.Text, r)
				}
			}
		}
		for _, b := range m.Bad {
			if ref.Bad[string(b.Name)] != string(b.Why) && len(b.Why) < maxWhyLen {
				t.Fatalf("bad %q: %q vs %q", b.Name, b.Why, ref.Bad[string(b.Name)])
			}
		}
	})
}

// A data message whose topic names no usable device is malformed, with its
// run and seq kept so that it can be recorded and acknowledged.
func TestDecodeItemDeviceName(t *testing.T) {
	payload := []byte(`{"run":"r","seq":4,"t":1,"m":1,"v":{"a":1}}`)
	for _, dev := range []string{"", "bad\xff", strings.Repeat("d", maxNameLen+1), "a\x00b", "a\x1bb", "a\tb", "a/b", "#", "$SYS"} {
		var it Item
		DecodeItem(&it, dev, payload)
		var de *DecodeError
		if !errors.As(it.Err, &de) || !it.Msg.HasID || it.Msg.Seq != 4 {
			t.Errorf("device %q: err %v, msg %+v", dev, it.Err, it.Msg)
		}
	}
	var it Item
	DecodeItem(&it, "meter", payload)
	if it.Err != nil || it.Device != "meter" || len(it.Msg.Values) != 1 {
		t.Errorf("device meter: err %v, item %+v", it.Err, it)
	}
}

// The logger holds a batch of decoded items: an item must keep none of its
// payload (each is hundreds of bytes, its names a few) and no spare room
// in its values; decoding again into it reuses its memory.
func TestDecodeItemDetaches(t *testing.T) {
	payload := []byte(goodMsg)
	var it Item
	DecodeItem(&it, "meter", payload)
	if it.Err != nil {
		t.Fatal(it.Err)
	}
	for i := range payload {
		payload[i] = 'X' // the payload's memory, reused by its next owner
	}
	m := &it.Msg
	if string(m.Run) != "a1b2c3" || string(m.Boot) != "boot-1" || len(m.Values) != 6 ||
		string(m.Values[0].Name) != "voltage" || m.Values[0].F != 230.1 ||
		string(m.Values[4].Name) != "big" || string(m.Values[4].Text) != "18446744073709551615" ||
		len(m.Bad) != 1 || string(m.Bad[0].Name) != "current" || string(m.Bad[0].Why) != `exception 2 ("x")` {
		t.Fatalf("after the payload was overwritten: %+v", *m)
	}
	if cap(m.Values) != len(m.Values) || cap(m.Bad) != len(m.Bad) {
		t.Errorf("values: len %d cap %d; bad: len %d cap %d", len(m.Values), cap(m.Values), len(m.Bad), cap(m.Bad))
	}
	// (goodMsg's escaped reason takes an allocation of Decode's own.)
	again := []byte(`{"run":"a1b2c3d4","seq":123,"t":1700000000123,"m":5000000000,"b":"0b1c2d3e-0000-4000-8000-1234567890ab","v":{"voltage":230.1,"current":1.25,"power":287.6,"energy":123456,"frequency":49.99,"ct_ratio":100,"breaker_closed":true,"alarm":false}}`)
	if n := testing.AllocsPerRun(100, func() { DecodeItem(&it, "meter", again) }); n != 0 {
		t.Errorf("decoding into a used item allocates %v times", n)
	}
	// A malformed message keeps its run for the gap it is recorded as.
	DecodeItem(&it, "meter", []byte(`{"run":"r9","seq":4,"t":"x"}`))
	if it.Err == nil || !it.Msg.HasID || string(it.Msg.Run) != "r9" {
		t.Errorf("malformed: err %v, msg %+v", it.Err, it.Msg)
	}
}
