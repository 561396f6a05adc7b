package modbus

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// fakePort answers each written request with what reply returns; a Read
// with nothing pending waits for the read timeout (capped at 5 ms, the
// tests' timeouts are measured in fake reads, not in wall time).
type fakePort struct {
	mu      sync.Mutex
	reply   func(req []byte) []byte
	in      []byte
	chunk   int // bytes per Read, 0 = all
	writes  [][]byte
	flushes int
	readErr error
}

func (p *fakePort) Read(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.readErr != nil {
		return 0, p.readErr
	}
	if len(p.in) == 0 {
		p.mu.Unlock()
		time.Sleep(time.Millisecond)
		p.mu.Lock()
		return 0, nil
	}
	n := len(b)
	if p.chunk > 0 && n > p.chunk {
		n = p.chunk
	}
	n = copy(b[:n], p.in)
	p.in = p.in[n:]
	return n, nil
}

func (p *fakePort) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.writes = append(p.writes, slices.Clone(b))
	if p.reply != nil {
		p.in = append(p.in, p.reply(b)...)
	}
	return len(b), nil
}

func (p *fakePort) SetReadTimeout(time.Duration) error { return nil }

func (p *fakePort) ResetInputBuffer() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.flushes++
	p.in = nil
	return nil
}

// frame returns hex s with its CRC appended.
func frame(s string) []byte { return appendCRC2(unhex(s), 0) }

func newTestMaster(p *fakePort, retries int) *Master {
	return NewMaster(p, Options{Baud: 115200, Timeout: 20 * time.Millisecond, Retries: retries})
}

func TestMasterReads(t *testing.T) {
	p := &fakePort{chunk: 3, reply: func(req []byte) []byte {
		switch req[1] {
		case 1, 2:
			return frame(fmt.Sprintf("01 %02X 02 CD 01", req[1]))
		case 3, 4:
			return frame(fmt.Sprintf("01 %02X 04 00 0A FF FE", req[1]))
		}
		return nil
	}}
	m := newTestMaster(p, 0)
	ctx := context.Background()
	regs, err := m.ReadHoldingRegisters(ctx, 1, 0, 2)
	if err != nil || !slices.Equal(regs, []uint16{10, 0xFFFE}) {
		t.Fatalf("ReadHoldingRegisters = %v, %v", regs, err)
	}
	regs, err = m.ReadInputRegisters(ctx, 1, 0, 2)
	if err != nil || !slices.Equal(regs, []uint16{10, 0xFFFE}) {
		t.Fatalf("ReadInputRegisters = %v, %v", regs, err)
	}
	want := []bool{true, false, true, true, false, false, true, true, true}
	bits, err := m.ReadCoils(ctx, 1, 0, 9)
	if err != nil || !slices.Equal(bits, want) {
		t.Fatalf("ReadCoils = %v, %v", bits, err)
	}
	bits, err = m.ReadDiscreteInputs(ctx, 1, 0, 9)
	if err != nil || !slices.Equal(bits, want) {
		t.Fatalf("ReadDiscreteInputs = %v, %v", bits, err)
	}
	if !bytes.Equal(p.writes[0], unhex("01 03 00 00 00 02 C4 0B")) {
		t.Fatalf("request % x", p.writes[0])
	}
	if p.flushes != 4 {
		t.Fatalf("%d flushes for 4 requests", p.flushes)
	}
	if s := m.Stats(); s.Requests != 4 || s.Retries != 0 || s.Discarded != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestMasterWrites(t *testing.T) {
	echo := func(req []byte) []byte { return frame(hexOf(req[:6])) }
	p := &fakePort{reply: echo}
	m := newTestMaster(p, 0)
	ctx := context.Background()
	if err := m.WriteSingleCoil(ctx, 1, 172, true); err != nil {
		t.Fatal(err)
	}
	if err := m.WriteSingleRegister(ctx, 1, 1, 3); err != nil {
		t.Fatal(err)
	}
	if err := m.WriteMultipleCoils(ctx, 1, 19, []bool{true, false, true, true, false, false, true, true, true, false}); err != nil {
		t.Fatal(err)
	}
	if err := m.WriteMultipleRegisters(ctx, 1, 1, []uint16{10, 258}); err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{"01 05 00 AC FF 00 4C 1B", "01 06 00 01 00 03 98 0B",
		"01 0F 00 13 00 0A 02 CD 01 72 CB", "01 10 00 01 00 02 04 00 0A 01 02 92 30"} {
		if !bytes.Equal(p.writes[i], unhex(want)) {
			t.Errorf("write %d: % x, want %s", i, p.writes[i], want)
		}
	}
	// A reply echoing another value is not this write's reply.
	p.reply = func(req []byte) []byte { return frame("01 06 00 01 00 04") }
	if err := m.WriteSingleRegister(ctx, 1, 1, 3); !errors.Is(err, ErrUnexpectedReply) {
		t.Fatalf("wrong echo: %v", err)
	}
	// Broadcast: sent, not answered, not waited for.
	p.reply = nil
	if err := m.WriteSingleRegister(ctx, 0, 1, 3); err != nil {
		t.Fatalf("broadcast: %v", err)
	}
	if _, err := m.ReadHoldingRegisters(ctx, 0, 1, 3); !errors.Is(err, ErrInvalidRequest) {
		t.Fatalf("broadcast read: %v", err)
	}
}

func hexOf(b []byte) string {
	const digits = "0123456789ABCDEF"
	var s []byte
	for _, c := range b {
		s = append(s, digits[c>>4], digits[c&15], ' ')
	}
	return string(s)
}

func TestMasterSkipsGarbageAndLateReplies(t *testing.T) {
	good := frame("01 03 04 00 0A 00 0B")
	for name, prefix := range map[string][]byte{
		"garbage":                  {0x00, 0xFF, 0x01, 0x03, 0x7F, 0x55},
		"header-like garbage":      {0x01, 0x03, 0x04, 0x00},
		"late reply, other length": frame("01 03 02 00 63"),
		"reply of another unit":    frame("02 03 04 00 63 00 64"),
		"late write echo":          frame("01 06 00 05 00 01"),
		"bad-CRC frame":            append(unhex("01 03 04 00 0A 00 0B"), 0, 0),
	} {
		for _, chunk := range []int{0, 1, 5} {
			p := &fakePort{chunk: chunk, reply: func([]byte) []byte { return append(slices.Clone(prefix), good...) }}
			// A byte a read, each followed by a wait for the rest's line
			// time: more than newTestMaster's 20 ms on a slow (emulated)
			// machine. Everything arrives; the timeout only bounds it.
			m := NewMaster(p, Options{Baud: 115200, Timeout: time.Second})
			regs, err := m.ReadHoldingRegisters(context.Background(), 1, 0, 2)
			if err != nil || !slices.Equal(regs, []uint16{10, 11}) {
				t.Errorf("%s, chunk %d: %v, %v", name, chunk, regs, err)
			}
			if d := m.Stats().Discarded; d != uint64(len(prefix)) {
				t.Errorf("%s, chunk %d: %d bytes discarded, want %d", name, chunk, d, len(prefix))
			}
		}
	}
}

func TestMasterFailures(t *testing.T) {
	for _, c := range []struct {
		name  string
		reply []byte
		want  error
	}{
		{"no answer", nil, ErrTimeout},
		{"bad CRC", append(unhex("01 03 04 00 0A 00 0B"), 1, 2), ErrCRC},
		{"truncated", unhex("01 03 04 00 0A"), ErrShortFrame},
		{"other unit", frame("02 03 04 00 0A 00 0B"), ErrUnexpectedReply},
		{"other function", frame("01 04 04 00 0A 00 0B"), ErrUnexpectedReply},
	} {
		p := &fakePort{reply: func([]byte) []byte { return c.reply }}
		m := newTestMaster(p, 2)
		_, err := m.ReadHoldingRegisters(context.Background(), 1, 0, 2)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
		if len(p.writes) != 3 {
			t.Errorf("%s: %d attempts, want 3", c.name, len(p.writes))
		}
		s := m.Stats()
		if s.Requests != 1 || s.Retries != 2 {
			t.Errorf("%s: stats %+v", c.name, s)
		}
		if c.want == ErrTimeout && s.Timeouts != 3 || c.want == ErrCRC && s.CRCErrors != 3 ||
			c.want == ErrShortFrame && s.ShortFrames != 3 || c.want == ErrUnexpectedReply && s.Unexpected != 3 {
			t.Errorf("%s: stats %+v", c.name, s)
		}
	}
}

func TestMasterExceptionNotRetried(t *testing.T) {
	p := &fakePort{reply: func([]byte) []byte { return frame("01 83 02") }}
	m := newTestMaster(p, 3)
	_, err := m.ReadHoldingRegisters(context.Background(), 1, 0, 2)
	var ex *ExceptionError
	if !errors.As(err, &ex) || ex.Code != ExIllegalDataAddress || ex.Function != 3 {
		t.Fatalf("err %v, want exception 2 of function 3", err)
	}
	if len(p.writes) != 1 || m.Stats().Exceptions != 1 {
		t.Fatalf("%d attempts, stats %+v", len(p.writes), m.Stats())
	}
}

func TestMasterLimits(t *testing.T) {
	p := &fakePort{}
	m := newTestMaster(p, 0)
	ctx := context.Background()
	for name, err := range map[string]error{
		"126 registers": func() error { _, err := m.ReadHoldingRegisters(ctx, 1, 0, 126); return err }(),
		"2001 bits":     func() error { _, err := m.ReadCoils(ctx, 1, 0, 2001); return err }(),
		"0 registers":   func() error { _, err := m.ReadInputRegisters(ctx, 1, 0, 0); return err }(),
		"past 65535":    func() error { _, err := m.ReadInputRegisters(ctx, 1, 65535, 2); return err }(),
		"124 writes":    m.WriteMultipleRegisters(ctx, 1, 0, make([]uint16, 124)),
		"1969 coils":    m.WriteMultipleCoils(ctx, 1, 0, make([]bool, 1969)),
		"no coils":      m.WriteMultipleCoils(ctx, 1, 0, nil),
	} {
		if !errors.Is(err, ErrInvalidRequest) {
			t.Errorf("%s: %v, want ErrInvalidRequest", name, err)
		}
	}
	if len(p.writes) != 0 {
		t.Fatalf("%d invalid requests were sent", len(p.writes))
	}
}

func TestMasterPortErrorAndContext(t *testing.T) {
	p := &fakePort{readErr: errors.New("port has been closed")}
	m := newTestMaster(p, 3)
	if _, err := m.ReadHoldingRegisters(context.Background(), 1, 0, 1); !errors.Is(err, ErrPort) {
		t.Fatalf("read error: %v, want ErrPort", err)
	}
	if len(p.writes) != 1 {
		t.Fatalf("port error retried: %d attempts", len(p.writes))
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := m.ReadHoldingRegisters(ctx, 1, 0, 1); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
}

func FuzzMasterReply(f *testing.F) {
	for _, c := range replyCases {
		f.Add(c.req.Function, c.req.Quantity, unhex(c.frame), 0)
	}
	f.Add(byte(3), uint16(2), append([]byte{0, 1, 3, 4}, frame("01 03 04 00 0A 00 0B")...), 1)
	f.Fuzz(func(t *testing.T, fc byte, qty uint16, in []byte, chunk int) {
		p := &fakePort{chunk: chunk & 7, reply: func([]byte) []byte { return in }}
		m := NewMaster(p, Options{Baud: 115200, Timeout: 2 * time.Millisecond})
		req := Request{Unit: 1, Function: fc, Quantity: qty}
		if fc == 15 {
			req.Data = make([]byte, (int(qty)+7)/8)
		} else if fc == 16 {
			req.Data = make([]byte, 2*int(qty))
		}
		data, err := m.Do(context.Background(), &req, 0)
		if err != nil {
			return
		}
		if n := req.ReplyLen(); n != 8 && len(data) != n-5 {
			t.Fatalf("%d data bytes for %v from % x", len(data), &req, in)
		}
	})
}

// The turnaround a first read teaches: part of the reply says when it
// began; all of it shrinks the estimate; nothing else moves it.
func TestLearnTurn(t *testing.T) {
	m := NewMaster(nil, Options{Baud: 9600, Timeout: time.Second})
	sent := time.Unix(1000, 0)
	// 5 of a 45-byte reply, read 20 ms plus their line time after sent.
	m.learnTurn(7, sent, 5, 45, sent.Add(20*time.Millisecond+LineTime(9600, 5)))
	if got := m.turn[7]; got != 20*time.Millisecond {
		t.Fatalf("after a partial first read: %v, want 20ms", got)
	}
	for i := 1; i < wholeRun; i++ {
		m.learnTurn(7, sent, 45, 45, sent.Add(time.Second))
		if got := m.turn[7]; got != 20*time.Millisecond {
			t.Fatalf("after %d whole first reads: %v, want it unchanged until %d", i, got, wholeRun)
		}
	}
	m.learnTurn(7, sent, 45, 45, sent.Add(time.Second))
	if got := m.turn[7]; got != 20*time.Millisecond-20*time.Millisecond/8 {
		t.Errorf("after %d whole first reads: %v, want it an eighth shorter", wholeRun, got)
	}
	// A partial read starts the count again.
	m.learnTurn(9, sent, 5, 45, sent.Add(20*time.Millisecond+LineTime(9600, 5)))
	for range wholeRun - 1 {
		m.learnTurn(9, sent, 45, 45, sent.Add(time.Second))
	}
	m.learnTurn(9, sent, 5, 45, sent.Add(20*time.Millisecond+LineTime(9600, 5)))
	m.learnTurn(9, sent, 45, 45, sent.Add(time.Second))
	if got := m.turn[9]; got != 20*time.Millisecond {
		t.Errorf("a whole read after a partial one shrank it: %v", got)
	}
	before := m.turn[7]
	m.learnTurn(7, sent, 50, 45, sent.Add(time.Millisecond))
	if m.turn[7] != before {
		t.Errorf("a first read longer than the reply moved it: %v", m.turn[7])
	}
	m.learnTurn(8, sent, 5, 45, sent.Add(5*time.Millisecond+LineTime(9600, 5)))
	if m.turn[7] != before || m.turn[8] != 5*time.Millisecond {
		t.Errorf("another unit's reply: unit 7 %v (was %v), unit 8 %v, want 5ms", m.turn[7], before, m.turn[8])
	}
	// Never below zero, never above the timeout.
	m.learnTurn(7, sent, 5, 45, sent)
	if m.turn[7] != 0 {
		t.Errorf("bytes before their time: %v, want 0", m.turn[7])
	}
	m.learnTurn(7, sent, 5, 45, sent.Add(time.Hour))
	if m.turn[7] != time.Second {
		t.Errorf("an hour late: %v, want the timeout", m.turn[7])
	}
}

// The Sleeper never wakes early (every wait of the master is a "no sooner
// than"), on a timerfd or the fallback alike.
func TestSleeperNeverEarly(t *testing.T) {
	var s Sleeper
	for _, d := range []time.Duration{50 * time.Microsecond, 1750 * time.Microsecond, 3 * time.Millisecond} {
		start := time.Now()
		s.Sleep(d)
		if got := time.Since(start); got < d {
			t.Errorf("sleep(%v) returned after %v", d, got)
		}
	}
	if s.f == nil {
		t.Log("no timerfd here: the time.Sleep fallback was tested")
	}
}
