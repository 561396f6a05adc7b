package bus

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
)

// brokerPackets are packets a broker sends, as bytes, with what readPacket
// makes of them: a packet, or an error containing wantErr.
var brokerPackets = []struct {
	name    string
	in      []byte
	want    packet
	wantErr string
}{
	{name: "connack accepted", in: []byte{0x20, 2, 0, 0}, want: packet{typ: typeConnack}},
	{name: "connack session present", in: []byte{0x20, 2, 1, 0}, want: packet{typ: typeConnack, present: true}},
	{name: "connack refused", in: []byte{0x20, 2, 0, 5}, want: packet{typ: typeConnack, code: 5}},
	{name: "puback", in: []byte{0x40, 2, 0x12, 0x34}, want: packet{typ: typePuback, id: 0x1234}},
	{name: "suback", in: []byte{0x90, 3, 0, 1, 1}, want: packet{typ: typeSuback, id: 1, code: 1}},
	{name: "suback failure", in: []byte{0x90, 3, 0, 2, 0x80}, want: packet{typ: typeSuback, id: 2, code: 0x80}},
	{name: "suback of two filters", in: []byte{0x90, 4, 0, 3, 0, 1}, want: packet{typ: typeSuback, id: 3}},
	{name: "pingresp", in: []byte{0xd0, 0}, want: packet{typ: typePingresp}},
	{name: "publish qos 0", in: appendPublish(nil, "a/b", []byte("hi"), 0, false, false, 0),
		want: packet{typ: typePublish, topic: "a/b", payload: []byte("hi")}},
	{name: "publish qos 1 retained dup", in: appendPublish(nil, "t", []byte{0, 1, 2}, 1, true, true, 9),
		want: packet{typ: typePublish, qos: 1, retain: true, dup: true, id: 9, topic: "t", payload: []byte{0, 1, 2}}},
	{name: "publish empty payload", in: appendPublish(nil, "t", nil, 1, false, false, 65535),
		want: packet{typ: typePublish, qos: 1, id: 65535, topic: "t", payload: []byte{}}},
	{name: "publish two-byte length", in: appendPublish(nil, "tinyscada/data/meter", bytes.Repeat([]byte("x"), 300), 1, false, false, 2),
		want: packet{typ: typePublish, qos: 1, id: 2, topic: "tinyscada/data/meter", payload: bytes.Repeat([]byte("x"), 300)}},

	{name: "empty input", in: nil, wantErr: "EOF"},
	{name: "truncated length", in: []byte{0x40}, wantErr: "unexpected EOF"},
	{name: "truncated body", in: []byte{0x40, 2, 0}, wantErr: "unexpected EOF"},
	{name: "truncated publish", in: []byte{0x30, 10, 0, 1, 't', 'x'}, wantErr: "unexpected EOF"},
	{name: "length of five bytes", in: []byte{0x30, 0x80, 0x80, 0x80, 0x80, 0x01}, wantErr: "longer than 4 bytes"},
	{name: "length above the limit", in: []byte{0x30, 0x81, 0x80, 0x40}, wantErr: "more than the"},
	{name: "connect from a broker", in: []byte{0x10, 0}, wantErr: "not expected"},
	{name: "type 0", in: []byte{0x00, 0}, wantErr: "not expected"},
	{name: "pubrec", in: []byte{0x50, 2, 0, 1}, wantErr: "not expected"},
	{name: "connack too long", in: []byte{0x20, 3, 0, 0, 0}, wantErr: "CONNACK of 3"},
	{name: "connack reserved flags", in: []byte{0x20, 2, 2, 0}, wantErr: "CONNACK flags"},
	{name: "puback with flags", in: []byte{0x42, 2, 0, 1}, wantErr: "flags"},
	{name: "puback id 0", in: []byte{0x40, 2, 0, 0}, wantErr: "packet id 0"},
	{name: "puback short", in: []byte{0x40, 1, 0}, wantErr: "PUBACK of 1"},
	{name: "suback short", in: []byte{0x90, 2, 0, 1}, wantErr: "SUBACK of 2"},
	{name: "pingresp with body", in: []byte{0xd0, 1, 0}, wantErr: "PINGRESP of 1"},
	{name: "publish qos 2", in: []byte{0x34, 5, 0, 1, 't', 0, 1}, wantErr: "QoS 2"},
	{name: "publish qos 3", in: []byte{0x36, 5, 0, 1, 't', 0, 1}, wantErr: "QoS 3"},
	{name: "publish empty topic", in: []byte{0x30, 2, 0, 0}, wantErr: "topic of 0"},
	{name: "publish topic past the end", in: []byte{0x30, 3, 0, 5, 't'}, wantErr: "topic of 5"},
	{name: "publish without id", in: []byte{0x32, 3, 0, 1, 't'}, wantErr: "without packet id"},
	{name: "publish id 0", in: []byte{0x32, 5, 0, 1, 't', 0, 0}, wantErr: "packet id 0"},
	{name: "publish of one byte", in: []byte{0x30, 1, 0}, wantErr: "PUBLISH of 1"},
}

func TestReadPacket(t *testing.T) {
	for _, tc := range brokerPackets {
		t.Run(tc.name, func(t *testing.T) {
			for _, tcache := range []topicCache{nil, {}} {
				got, err := readPacket(bufio.NewReader(bytes.NewReader(tc.in)), maxPacket, tcache)
				if tc.wantErr != "" {
					if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
						t.Fatalf("readPacket(% x) = %+v, %v; want error %q", tc.in, got, err, tc.wantErr)
					}
					continue
				}
				if err != nil || !reflect.DeepEqual(got, tc.want) {
					t.Fatalf("readPacket(% x) = %+v, %v; want %+v", tc.in, got, err, tc.want)
				}
			}
		})
	}
}

// A packet that is malformed or not for a client is a protocol error; a
// cut one is the reader's error.
func TestReadPacketErrorKinds(t *testing.T) {
	_, err := readPacket(bufio.NewReader(bytes.NewReader([]byte{0x10, 0})), maxPacket, nil)
	if !errors.Is(err, errProtocol) {
		t.Errorf("CONNECT from the broker: %v; want errProtocol", err)
	}
	_, err = readPacket(bufio.NewReader(bytes.NewReader([]byte{0x40, 2, 0})), maxPacket, nil)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("cut PUBACK: %v; want io.ErrUnexpectedEOF", err)
	}
}

// Packets follow each other in one stream, and a topic longer than the
// read buffer is read all the same.
func TestReadPacketStream(t *testing.T) {
	long := strings.Repeat("l/", 20000) + "x"
	var in []byte
	in = appendPublish(in, "a", []byte("1"), 1, false, false, 1)
	in = append(in, 0xd0, 0)
	in = appendPublish(in, long, []byte("2"), 0, false, false, 0)
	in = appendPublish(in, "a", []byte("3"), 0, false, false, 0)
	r := bufio.NewReaderSize(bytes.NewReader(in), 16)
	tc := topicCache{}
	var got []string
	for {
		p, err := readPacket(r, maxPacket, tc)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, p.topic+"="+string(p.payload))
	}
	want := []string{"a=1", "=", long + "=2", "a=3"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("stream gave %.40q; want %.40q", got, want)
	}
}

// Reading a message from the buffer costs one allocation, its payload.
func TestReadPublishAllocs(t *testing.T) {
	pkt := appendPublish(nil, "tinyscada/data/meter", make([]byte, 200), 1, false, false, 7)
	in := bytes.Repeat(pkt, 1000)
	br := bytes.NewReader(in)
	r := bufio.NewReaderSize(br, 1<<20)
	tc := topicCache{}
	if _, err := readPacket(r, maxPacket, tc); err != nil { // fills the buffer and the cache
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(500, func() {
		if _, err := readPacket(r, maxPacket, tc); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 1 {
		t.Errorf("%.1f allocations per PUBLISH read; want 1 (the payload)", allocs)
	}
}

func TestAppendConnect(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    connectFields
		want []byte
	}{
		{name: "bare", f: connectFields{clientID: "c", clean: true, keepAlive: 30},
			want: []byte{0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 30, 0, 1, 'c'}},
		{name: "no client id", f: connectFields{clean: true, keepAlive: 1},
			want: []byte{0x10, 12, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 1, 0, 0}},
		{name: "will and credentials", f: connectFields{clientID: "c", keepAlive: 0x0102, user: "u", pass: "pw",
			will: &Message{Topic: "w", QoS: 1, Retain: true, Payload: []byte("x")}},
			want: []byte{0x10, 26, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x80 | 0x40 | 0x20 | 0x08 | 0x04, 1, 2,
				0, 1, 'c', 0, 1, 'w', 0, 1, 'x', 0, 1, 'u', 0, 2, 'p', 'w'}},
		{name: "password without user is not sent", f: connectFields{clientID: "c", pass: "pw"},
			want: []byte{0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 4, 0, 0, 0, 0, 1, 'c'}},
	} {
		if got := appendConnect(nil, &tc.f); !bytes.Equal(got, tc.want) {
			t.Errorf("%s: CONNECT\n% x\nwant\n% x", tc.name, got, tc.want)
		}
	}
}

func TestAppendSmallPackets(t *testing.T) {
	for _, tc := range []struct {
		name      string
		got, want []byte
	}{
		{"subscribe", appendSubscribe(nil, 0x0102, "a/#", 1), []byte{0x82, 8, 1, 2, 0, 3, 'a', '/', '#', 1}},
		{"puback", appendPuback(nil, 0xfffe), []byte{0x40, 2, 0xff, 0xfe}},
		{"publish qos 0", appendPublish(nil, "t", []byte("p"), 0, false, false, 0), []byte{0x30, 4, 0, 1, 't', 'p'}},
		{"publish qos 1 retain", appendPublish(nil, "t", nil, 1, true, false, 5), []byte{0x33, 5, 0, 1, 't', 0, 5}},
		{"length 128", appendLength(nil, 128), []byte{0x80, 0x01}},
		{"length 16383", appendLength(nil, 16383), []byte{0xff, 0x7f}},
		{"length 2097152", appendLength(nil, 2097152), []byte{0x80, 0x80, 0x80, 0x01}},
	} {
		if !bytes.Equal(tc.got, tc.want) {
			t.Errorf("%s: % x; want % x", tc.name, tc.got, tc.want)
		}
	}
}

func TestCheckPublish(t *testing.T) {
	for _, tc := range []struct {
		topic string
		qos   byte
		ok    bool
	}{
		{"a", 0, true}, {"a", 1, true}, {"a", 2, false}, {"", 0, false}, {strings.Repeat("a", 65536), 0, false},
	} {
		if err := checkPublish(tc.topic, tc.qos, 10); (err == nil) != tc.ok {
			t.Errorf("checkPublish(%.10q, %d) = %v; want ok %v", tc.topic, tc.qos, err, tc.ok)
		}
	}
}

// FuzzReadPacket feeds the decoder arbitrary streams: it must not panic,
// must not make a payload longer than its input, and a PUBLISH it accepts
// must encode back to a packet that decodes the same.
func FuzzReadPacket(f *testing.F) {
	for _, tc := range brokerPackets {
		f.Add(tc.in)
	}
	var stream []byte
	for _, tc := range brokerPackets[:12] {
		stream = append(stream, tc.in...)
	}
	f.Add(stream)
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bufio.NewReaderSize(bytes.NewReader(in), 16)
		tc := topicCache{}
		for {
			p, err := readPacket(r, 4096, tc)
			if err != nil {
				return
			}
			if len(p.payload) > len(in) {
				t.Fatalf("payload of %d bytes from %d bytes of input", len(p.payload), len(in))
			}
			if p.typ != typePublish {
				continue
			}
			again, err := readPacket(bufio.NewReader(bytes.NewReader(
				appendPublish(nil, p.topic, p.payload, p.qos, p.retain, p.dup, p.id))), 4096, nil)
			if err != nil || !reflect.DeepEqual(again, p) {
				t.Fatalf("PUBLISH %+v encoded and read back: %+v, %v", p, again, err)
			}
		}
	})
}
