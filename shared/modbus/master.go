package modbus

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Port is what a Master needs of a serial line. A Line (Open) implements
// it, and so does go.bug.st/serial's serial.Port; tests can use a fake.
type Port interface {
	// Read blocks until at least one byte arrives, the read timeout expires
	// (then it returns 0, nil) or the port fails (an error).
	Read(p []byte) (int, error)
	// Write sends p; it may return before the bytes have left the line.
	Write(p []byte) (int, error)
	// SetReadTimeout sets the timeout of the following Reads.
	SetReadTimeout(d time.Duration) error
	// ResetInputBuffer discards received bytes not yet read.
	ResetInputBuffer() error
}

// Options configure a Master. The zero value is usable.
type Options struct {
	// Baud is the line speed, used for the RTU timing (inter-frame silence,
	// transmission time of the request). 0 means 9600.
	Baud int
	// Timeout is how long one attempt waits for the reply, counted from the
	// moment the request has left the line. 0 means 1 s.
	Timeout time.Duration
	// Retries is the number of further attempts after an attempt failed with
	// ErrTimeout, ErrCRC, ErrShortFrame or ErrUnexpectedReply. Exception
	// replies, port errors and a done context are not retried.
	Retries int
}

// Stats counts a Master's transactions since it was made.
type Stats struct {
	Requests    uint64 // transactions started (a retried one counts once)
	Retries     uint64 // further attempts
	Timeouts    uint64 // attempts that ended in ErrTimeout
	CRCErrors   uint64 // attempts that ended in ErrCRC
	ShortFrames uint64 // attempts that ended in ErrShortFrame
	Unexpected  uint64 // attempts that ended in ErrUnexpectedReply
	Exceptions  uint64 // exception replies
	Discarded   uint64 // received bytes skipped while looking for the reply
}

// Master is a Modbus RTU master on one port. Its methods may be called from
// several goroutines; transactions run one at a time. Each transaction
// waits for the inter-frame silence after the last bus activity, discards
// unread input, sends the request and reads the reply with one deadline,
// skipping bytes that do not form a reply to this request (garbage, a late
// reply to an earlier request of another function, quantity or echo).
//
// Limitation of the protocol: RTU has no transaction id, so a late reply to
// an earlier request identical in slave id, function code and length (and
// echo, for writes) cannot be told from the reply to the current one.
type Master struct {
	port    Port
	baud    int
	timeout time.Duration
	retries int
	silence time.Duration
	mu      sync.Mutex // serialises transactions; guards the fields below
	lastBus time.Time  // when the line was last busy (sent or received)
	cur     Request    // the request in progress
	// turn is, per slave id, how long after a request's end its reply
	// began (as last measured, see readReply): the first read of a reply
	// waits that long plus the reply's own time on the line (and one
	// character more), so that a device that keeps its pace costs one
	// wake-up a transaction. whole counts, per slave id, the first reads
	// in a row that found the whole reply (see learnTurn).
	turn     [256]time.Duration
	whole    [256]uint8
	sleep    Sleeper
	txbuf    [MaxFrame]byte
	rxbuf    [2 * MaxFrame]byte
	requests atomic.Uint64
	retried  atomic.Uint64
	timeouts atomic.Uint64
	crcs     atomic.Uint64
	shorts   atomic.Uint64
	unexp    atomic.Uint64
	excepts  atomic.Uint64
	discard  atomic.Uint64
}

// NewMaster returns a Master on port. It does not own the port: closing
// the port is the caller's business (and ends a transaction in progress
// with an ErrPort error).
func NewMaster(port Port, opts Options) *Master {
	if opts.Baud <= 0 {
		opts.Baud = 9600
	}
	if opts.Timeout <= 0 {
		opts.Timeout = time.Second
	}
	if opts.Retries < 0 {
		opts.Retries = 0
	}
	return &Master{
		port:    port,
		baud:    opts.Baud,
		timeout: opts.Timeout,
		retries: opts.Retries,
		silence: Silence(opts.Baud),
	}
}

// Stats returns a snapshot of the counters.
func (m *Master) Stats() Stats {
	return Stats{
		Requests:    m.requests.Load(),
		Retries:     m.retried.Load(),
		Timeouts:    m.timeouts.Load(),
		CRCErrors:   m.crcs.Load(),
		ShortFrames: m.shorts.Load(),
		Unexpected:  m.unexp.Load(),
		Exceptions:  m.excepts.Load(),
		Discarded:   m.discard.Load(),
	}
}

// Do runs one transaction: req is sent (and retried as Options.Retries
// says) until a reply to it arrives. timeout > 0 replaces Options.Timeout
// for this call (a per-device timeout); the context's deadline, if sooner,
// ends the wait too. Outcomes:
//   - (data, nil): the reply's data, for reads the bytes after the byte
//     count (see DecodeRegisters, UnpackBits), for writes nil. data aliases
//     the Master's buffer and is valid until the next transaction.
//   - (nil, *ExceptionError): the slave answered with an exception.
//   - (nil, err) with err wrapping ErrTimeout, ErrCRC, ErrShortFrame or
//     ErrUnexpectedReply: the last attempt failed so.
//   - ErrInvalidRequest: req is malformed; nothing was sent.
//   - ErrPort: the port failed; reopen it.
//   - the context's error, wrapped, when ctx ended first.
//
// A request to unit 0 (broadcast) is sent once and (nil, nil) returned at
// once: slaves do not answer broadcasts. Reads cannot be broadcast.
func (m *Master) Do(ctx context.Context, req *Request, timeout time.Duration) ([]byte, error) {
	if timeout <= 0 {
		timeout = m.timeout
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	frame, err := req.AppendFrame(m.txbuf[:0])
	// Work on a copy, so that the caller's request does not escape to the
	// heap through error messages; the reply checks do not need Data.
	if err != nil {
		return nil, err
	}
	m.cur = *req
	m.cur.Data = nil
	r := &m.cur
	if r.Unit == 0 && r.ReplyLen() != 8 {
		return nil, fmt.Errorf("%w: %v: a read cannot be broadcast", ErrInvalidRequest, r)
	}
	m.requests.Add(1)
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			m.retried.Add(1)
		}
		data, err := m.attempt(ctx, r, frame, timeout)
		switch {
		case err == nil:
			return data, nil
		case errors.Is(err, ErrTimeout):
			m.timeouts.Add(1)
		case errors.Is(err, ErrCRC):
			m.crcs.Add(1)
		case errors.Is(err, ErrShortFrame):
			m.shorts.Add(1)
		case errors.Is(err, ErrUnexpectedReply):
			m.unexp.Add(1)
		default:
			var ex *ExceptionError
			if errors.As(err, &ex) {
				m.excepts.Add(1)
			}
			return nil, err
		}
		if attempt >= m.retries {
			if m.retries > 0 {
				return nil, fmt.Errorf("%w (after %d attempts)", err, attempt+1)
			}
			return nil, err
		}
	}
}

// attempt sends frame once and reads the reply.
func (m *Master) attempt(ctx context.Context, req *Request, frame []byte, timeout time.Duration) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("modbus: %v: %w", req, err)
	}
	m.wait(time.Until(m.lastBus.Add(m.silence)), m.silence)
	if err := m.port.ResetInputBuffer(); err != nil {
		return nil, fmt.Errorf("%w: flush input: %w", ErrPort, err)
	}
	if _, err := m.port.Write(frame); err != nil {
		return nil, fmt.Errorf("%w: write: %w", ErrPort, err)
	}
	sent := time.Now().Add(LineTime(m.baud, len(frame)))
	m.lastBus = sent
	if req.Unit == 0 {
		return nil, nil
	}
	deadline := sent.Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	// No reply can be complete before the device's turnaround and the
	// reply's own time on the line have passed since the request left:
	// sleep until then, so that the reply is taken with one read instead
	// of a wake-up for its first bytes and more for the rest. One
	// character more for a last byte that comes a little late (a
	// device's or a driver's jitter): that costs the transaction one
	// character time, where a read a little early costs a wake-up and a
	// wait for the rest.
	m.wait(time.Until(sent.Add(m.turn[req.Unit]+LineTime(m.baud, req.ReplyLen()+1))), time.Until(deadline))
	return m.readReply(ctx, req, sent, deadline)
}

// wait sleeps d, at most left, never less; see Sleeper.
func (m *Master) wait(d, left time.Duration) {
	if d = min(d, left); d > 0 {
		m.sleep.Sleep(d)
	}
}

// maxReadSlice bounds one Read so a cancelled context is noticed soon.
const maxReadSlice = 100 * time.Millisecond

// readReply reads until a reply to req has arrived or the deadline passed.
// It reads no further than the frame it expects, and scans byte by byte
// past anything that is not a reply to req.
func (m *Master) readReply(ctx context.Context, req *Request, sent, deadline time.Time) ([]byte, error) {
	buf := m.rxbuf[:]
	start, end := 0, 0
	var sawCRC, sawOther bool
	first, firstAt := 0, time.Time{} // what the first read that got bytes got, and when
	quick := true                    // the first read only takes what is there
	for {
		// Look for a reply at each offset of the buffered bytes.
		want := 0
		for want == 0 {
			n, st := req.matchReply(buf[start:end])
			switch st {
			case replyOK:
				if start == 0 {
					m.learnTurn(req.Unit, sent, first, n, firstAt)
				}
				m.discard.Add(uint64(start))
				data, err := replyData(req, buf[start:start+n])
				if err != nil {
					return nil, fmt.Errorf("%v: %w", req, err)
				}
				return data, nil
			case replyMore:
				if n == 0 {
					// Its length is not known yet: read up to the normal
					// reply's (an exception is shorter; what follows it is
					// flushed before the next request anyway).
					n = max(5, req.ReplyLen())
				}
				want = start + n
			case replyBadCRC:
				sawCRC = true
				start++
			case replyNoMatch:
				sawOther = true
				start++
			}
		}
		if want > len(buf) {
			copy(buf, buf[start:end])
			end -= start
			want -= start
			m.discard.Add(uint64(start))
			start = 0
		}
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("modbus: %v: %w", req, err)
		}
		left := time.Until(deadline)
		if left <= 0 {
			m.discard.Add(uint64(end))
			switch {
			case sawCRC:
				return nil, fmt.Errorf("%w: reply to %v", ErrCRC, req)
			case end > start:
				return nil, fmt.Errorf("%w: %d of %d bytes of the reply to %v", ErrShortFrame, end-start, want-start, req)
			case sawOther:
				return nil, fmt.Errorf("%w: %d bytes, none a reply to %v", ErrUnexpectedReply, end, req)
			}
			return nil, fmt.Errorf("%w: no reply to %v", ErrTimeout, req)
		}
		if end > start {
			// Part of a frame is here and the rest is on its way: its time on
			// the line is known, so sleep until it should have arrived and
			// take it with one read instead of waking for every few bytes
			// (one wake-up per byte at 115200 baud otherwise). The bytes
			// here arrived over LineTime(end-start) up to now.
			rest := LineTime(m.baud, want-end)
			if rest >= CharTime(m.baud) {
				m.wait(rest, left)
				if left = time.Until(deadline); left <= 0 {
					left = time.Millisecond // one last look at what came
				}
			}
		}
		// The first read comes after the reply should have arrived (see
		// attempt): it does not wait, so that the thread does not block
		// in the kernel when the reply is there, as it mostly is. When
		// nothing came yet, the next read waits for the first bytes.
		timeout := min(left, maxReadSlice)
		if quick {
			timeout, quick = 0, false
		}
		if err := m.port.SetReadTimeout(timeout); err != nil {
			return nil, fmt.Errorf("%w: set read timeout: %w", ErrPort, err)
		}
		k, err := m.port.Read(buf[end:want])
		if k > 0 {
			end += k
			m.lastBus = time.Now()
			if first == 0 {
				first, firstAt = k, m.lastBus
			}
		}
		if err != nil {
			return nil, fmt.Errorf("%w: read: %w", ErrPort, err)
		}
	}
}

// learnTurn updates unit's turnaround from a reply of n bytes whose first
// read got first bytes at firstAt. Part of the reply: it began about its
// line time before firstAt. All of it: it was there sooner than assumed,
// by an unknown amount; after wholeRun such reads in a row the estimate
// shrinks by an eighth (an estimate too long only delays each reply, too
// short costs a wake-up: the shrinking finds a device that got faster, or
// an estimate taken from one slow reply, and costs a partial read now and
// then). The caller skips a reply read with bytes before it (noise, a
// late reply).
func (m *Master) learnTurn(unit byte, sent time.Time, first, n int, firstAt time.Time) {
	switch {
	case first <= 0 || first > n: // nothing read (cannot be), or more than the reply
	case first == n:
		if m.whole[unit]++; m.whole[unit] >= wholeRun {
			m.turn[unit] -= m.turn[unit] / 8
			m.whole[unit] = 0
		}
	default:
		began := firstAt.Add(-LineTime(m.baud, first)).Sub(sent)
		m.turn[unit] = min(max(began, 0), m.timeout)
		m.whole[unit] = 0
	}
}

// wholeRun is how many whole first reads in a row shrink a turnaround.
const wholeRun = 4

// ReadCoils reads quantity coils (function 1) from address on unit.
func (m *Master) ReadCoils(ctx context.Context, unit byte, address, quantity uint16) ([]bool, error) {
	return m.readBits(ctx, unit, FuncReadCoils, address, quantity)
}

// ReadDiscreteInputs reads quantity discrete inputs (function 2).
func (m *Master) ReadDiscreteInputs(ctx context.Context, unit byte, address, quantity uint16) ([]bool, error) {
	return m.readBits(ctx, unit, FuncReadDiscreteInputs, address, quantity)
}

// ReadHoldingRegisters reads quantity holding registers (function 3).
func (m *Master) ReadHoldingRegisters(ctx context.Context, unit byte, address, quantity uint16) ([]uint16, error) {
	return m.ReadRegisters(ctx, unit, FuncReadHoldingRegisters, address, make([]uint16, quantity))
}

// ReadInputRegisters reads quantity input registers (function 4).
func (m *Master) ReadInputRegisters(ctx context.Context, unit byte, address, quantity uint16) ([]uint16, error) {
	return m.ReadRegisters(ctx, unit, FuncReadInputRegisters, address, make([]uint16, quantity))
}

// ReadRegisters reads len(dst) registers with function (3 or 4) into dst
// and returns dst: the allocation-free form of ReadHoldingRegisters and
// ReadInputRegisters. Errors are those of Do.
func (m *Master) ReadRegisters(ctx context.Context, unit, function byte, address uint16, dst []uint16) ([]uint16, error) {
	if function != FuncReadHoldingRegisters && function != FuncReadInputRegisters {
		return nil, fmt.Errorf("%w: function %d does not read registers", ErrInvalidRequest, function)
	}
	if len(dst) > MaxReadRegisters {
		return nil, fmt.Errorf("%w: %d registers, at most %d per read", ErrInvalidRequest, len(dst), MaxReadRegisters)
	}
	req := Request{Unit: unit, Function: function, Address: address, Quantity: uint16(len(dst))}
	data, err := m.Do(ctx, &req, 0)
	if err != nil {
		return nil, err
	}
	for i := range dst {
		dst[i] = binary.BigEndian.Uint16(data[2*i:])
	}
	return dst, nil
}

// ReadBits reads len(dst) coils or discrete inputs with function (1 or 2)
// into dst and returns dst. Errors are those of Do.
func (m *Master) ReadBits(ctx context.Context, unit, function byte, address uint16, dst []bool) ([]bool, error) {
	if function != FuncReadCoils && function != FuncReadDiscreteInputs {
		return nil, fmt.Errorf("%w: function %d does not read bits", ErrInvalidRequest, function)
	}
	if len(dst) > MaxReadBits {
		return nil, fmt.Errorf("%w: %d bits, at most %d per read", ErrInvalidRequest, len(dst), MaxReadBits)
	}
	req := Request{Unit: unit, Function: function, Address: address, Quantity: uint16(len(dst))}
	data, err := m.Do(ctx, &req, 0)
	if err != nil {
		return nil, err
	}
	UnpackBits(dst, data) // the byte count was checked against the quantity
	return dst, nil
}

func (m *Master) readBits(ctx context.Context, unit, function byte, address, quantity uint16) ([]bool, error) {
	if quantity > MaxReadBits {
		return nil, fmt.Errorf("%w: %d bits, at most %d per read", ErrInvalidRequest, quantity, MaxReadBits)
	}
	return m.ReadBits(ctx, unit, function, address, make([]bool, quantity))
}

// WriteSingleCoil sets one coil (function 5). Errors are those of Do.
func (m *Master) WriteSingleCoil(ctx context.Context, unit byte, address uint16, on bool) error {
	req := Request{Unit: unit, Function: FuncWriteSingleCoil, Address: address, Value: CoilOff}
	if on {
		req.Value = CoilOn
	}
	_, err := m.Do(ctx, &req, 0)
	return err
}

// WriteSingleRegister writes one holding register (function 6).
func (m *Master) WriteSingleRegister(ctx context.Context, unit byte, address, value uint16) error {
	req := Request{Unit: unit, Function: FuncWriteSingleRegister, Address: address, Value: value}
	_, err := m.Do(ctx, &req, 0)
	return err
}

// WriteMultipleCoils writes len(values) coils from address (function 15;
// 1 to 1968 coils, else ErrInvalidRequest).
func (m *Master) WriteMultipleCoils(ctx context.Context, unit byte, address uint16, values []bool) error {
	if len(values) == 0 || len(values) > MaxWriteBits {
		return fmt.Errorf("%w: %d coils, 1..%d per write", ErrInvalidRequest, len(values), MaxWriteBits)
	}
	var data [MaxWriteBits / 8]byte
	req := Request{Unit: unit, Function: FuncWriteMultipleCoils, Address: address,
		Quantity: uint16(len(values)), Data: PackBits(data[:0], values)}
	_, err := m.Do(ctx, &req, 0)
	return err
}

// WriteMultipleRegisters writes len(values) holding registers from address
// (function 16; 1 to 123 registers, else ErrInvalidRequest).
func (m *Master) WriteMultipleRegisters(ctx context.Context, unit byte, address uint16, values []uint16) error {
	if len(values) == 0 || len(values) > MaxWriteRegisters {
		return fmt.Errorf("%w: %d registers, 1..%d per write", ErrInvalidRequest, len(values), MaxWriteRegisters)
	}
	var data [2 * MaxWriteRegisters]byte
	req := Request{Unit: unit, Function: FuncWriteMultipleRegisters, Address: address,
		Quantity: uint16(len(values)), Data: AppendRegisters(data[:0], values)}
	_, err := m.Do(ctx, &req, 0)
	return err
}

// AppendRegisters appends values as big-endian bytes, as Modbus sends them.
func AppendRegisters(dst []byte, values []uint16) []byte {
	for _, v := range values {
		dst = binary.BigEndian.AppendUint16(dst, v)
	}
	return dst
}

// DecodeRegisters appends the big-endian registers in data to dst (an odd
// last byte is ignored) and returns the extended slice.
func DecodeRegisters(dst []uint16, data []byte) []uint16 {
	for i := 0; i+1 < len(data); i += 2 {
		dst = append(dst, binary.BigEndian.Uint16(data[i:]))
	}
	return dst
}
