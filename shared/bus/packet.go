package bus

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// MQTT 3.1.1 control packet types (the high nibble of the first byte).
const (
	typeConnect    = 1
	typeConnack    = 2
	typePublish    = 3
	typePuback     = 4
	typeSubscribe  = 8
	typeSuback     = 9
	typePingreq    = 12
	typePingresp   = 13
	typeDisconnect = 14
)

// maxPacket is the largest remaining length (everything after the fixed
// header) the client accepts from the broker: 1 MiB, far above anything a
// role publishes (a data message is a few hundred bytes). A larger packet
// drops the connection as a protocol error, since its bytes cannot be
// skipped without reading them all.
const maxPacket = 1 << 20

var (
	pingreq    = []byte{typePingreq << 4, 0}
	disconnect = []byte{typeDisconnect << 4, 0}
)

// errProtocol marks a packet the broker must not send; it drops the
// connection.
var errProtocol = errors.New("bus: MQTT protocol error")

// packet is one decoded packet from the broker: CONNACK, PUBLISH, PUBACK,
// SUBACK or PINGRESP.
type packet struct {
	typ     byte
	qos     byte // PUBLISH
	dup     bool // PUBLISH
	retain  bool // PUBLISH
	present bool // CONNACK: session present
	code    byte // CONNACK return code; SUBACK: the first return code
	id      uint16
	topic   string
	payload []byte
}

// appendLength appends MQTT's variable-length remaining length.
func appendLength(b []byte, n int) []byte {
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		b = append(b, d)
		if n == 0 {
			return b
		}
	}
}

func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

func appendBytes(b []byte, p []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(p)))
	return append(b, p...)
}

// connectFields is what a CONNECT carries.
type connectFields struct {
	clientID   string
	clean      bool
	keepAlive  uint16 // seconds
	user, pass string
	will       *Message
}

// check returns an error for fields a CONNECT cannot encode.
func (f *connectFields) check() error {
	for _, s := range []string{f.clientID, f.user, f.pass} {
		if len(s) > 0xffff {
			return errors.New("bus: client id, user or password longer than 65535 bytes")
		}
	}
	if w := f.will; w != nil {
		if err := checkPublish(w.Topic, w.QoS, len(w.Payload)); err != nil {
			return fmt.Errorf("will: %w", err)
		}
		if len(w.Payload) > 0xffff {
			return errors.New("bus: will payload longer than 65535 bytes")
		}
	}
	return nil
}

func appendConnect(b []byte, f *connectFields) []byte {
	n := 10 + 2 + len(f.clientID)
	var flags byte
	if f.clean {
		flags |= 0x02
	}
	if w := f.will; w != nil {
		flags |= 0x04 | w.QoS<<3
		if w.Retain {
			flags |= 0x20
		}
		n += 2 + len(w.Topic) + 2 + len(w.Payload)
	}
	// As paho: a password only with a user name ([MQTT-3.1.2-22]).
	if f.user != "" {
		flags |= 0x80
		n += 2 + len(f.user)
		if f.pass != "" {
			flags |= 0x40
			n += 2 + len(f.pass)
		}
	}
	b = append(b, typeConnect<<4)
	b = appendLength(b, n)
	b = append(b, 0, 4, 'M', 'Q', 'T', 'T', 4, flags)
	b = binary.BigEndian.AppendUint16(b, f.keepAlive)
	b = appendString(b, f.clientID)
	if w := f.will; w != nil {
		b = appendString(b, w.Topic)
		b = appendBytes(b, w.Payload)
	}
	if f.user != "" {
		b = appendString(b, f.user)
		if f.pass != "" {
			b = appendString(b, f.pass)
		}
	}
	return b
}

// checkPublish returns an error for a message a PUBLISH cannot carry.
func checkPublish(topic string, qos byte, payload int) error {
	switch {
	case qos > 1:
		return fmt.Errorf("bus: QoS %d not supported (0 and 1 are)", qos)
	case topic == "" || len(topic) > 0xffff:
		return fmt.Errorf("bus: topic of %d bytes (want 1 to 65535)", len(topic))
	case payload > 268435455-2-len(topic)-2:
		return fmt.Errorf("bus: payload of %d bytes too large for MQTT", payload)
	}
	return nil
}

func appendPublish(b []byte, topic string, payload []byte, qos byte, retain, dup bool, id uint16) []byte {
	h := byte(typePublish<<4) | qos<<1
	if retain {
		h |= 0x01
	}
	if dup {
		h |= 0x08
	}
	n := 2 + len(topic) + len(payload)
	if qos > 0 {
		n += 2
	}
	b = append(b, h)
	b = appendLength(b, n)
	b = appendString(b, topic)
	if qos > 0 {
		b = binary.BigEndian.AppendUint16(b, id)
	}
	return append(b, payload...)
}

func appendPuback(b []byte, id uint16) []byte {
	return append(b, typePuback<<4, 2, byte(id>>8), byte(id))
}

// appendSubscribe encodes a SUBSCRIBE of one filter.
func appendSubscribe(b []byte, id uint16, filter string, qos byte) []byte {
	b = append(b, typeSubscribe<<4|0x02)
	b = appendLength(b, 2+2+len(filter)+1)
	b = binary.BigEndian.AppendUint16(b, id)
	b = appendString(b, filter)
	return append(b, qos)
}

// topicCache interns the topic names of incoming messages: a client sees
// the same few topics again and again, and a hit costs no allocation.
type topicCache map[string]string

const maxCachedTopics = 256

func (tc topicCache) get(b []byte) string {
	if s, ok := tc[string(b)]; ok {
		return s
	}
	if len(tc) >= maxCachedTopics {
		clear(tc)
	}
	s := string(b)
	tc[s] = s
	return s
}

// readPacket reads one packet sent by a broker. A PUBLISH's payload is a
// new slice of its own (the handler keeps it); its topic comes from tc when
// tc is not nil. The error is errProtocol (wrapped) for a packet that is
// malformed, of a type a broker does not send to a client, or longer than
// maxLen; otherwise the reader's error (io.ErrUnexpectedEOF inside a
// packet).
func readPacket(r *bufio.Reader, maxLen int, tc topicCache) (packet, error) {
	var p packet
	h, err := r.ReadByte()
	if err != nil {
		return p, err
	}
	n, err := readLength(r)
	if err != nil {
		return p, err
	}
	if n > maxLen {
		return p, fmt.Errorf("%w: packet type %d of %d bytes, more than the %d accepted", errProtocol, h>>4, n, maxLen)
	}
	p.typ = h >> 4
	flags := h & 0x0f
	if p.typ != typePublish && flags != 0 {
		return p, fmt.Errorf("%w: packet type %d with flags %#x", errProtocol, p.typ, flags)
	}
	switch p.typ {
	case typeConnack:
		if n != 2 {
			return p, fmt.Errorf("%w: CONNACK of %d bytes", errProtocol, n)
		}
		v, err := readUint16(r)
		if err != nil {
			return p, err
		}
		if v>>8&^1 != 0 {
			return p, fmt.Errorf("%w: CONNACK flags %#x", errProtocol, v>>8)
		}
		p.present, p.code = v>>8 == 1, byte(v)
	case typePuback:
		if n != 2 {
			return p, fmt.Errorf("%w: PUBACK of %d bytes", errProtocol, n)
		}
		if p.id, err = readUint16(r); err != nil {
			return p, err
		}
	case typeSuback:
		if n < 3 {
			return p, fmt.Errorf("%w: SUBACK of %d bytes", errProtocol, n)
		}
		if p.id, err = readUint16(r); err != nil {
			return p, err
		}
		if p.code, err = r.ReadByte(); err != nil {
			return p, eofInside(err)
		}
		if _, err := r.Discard(n - 3); err != nil {
			return p, eofInside(err)
		}
	case typePingresp:
		if n != 0 {
			return p, fmt.Errorf("%w: PINGRESP of %d bytes", errProtocol, n)
		}
	case typePublish:
		return readPublish(r, p, flags, n, tc)
	default:
		return p, fmt.Errorf("%w: packet type %d not expected from a broker", errProtocol, p.typ)
	}
	if p.typ != typeConnack && p.typ != typePingresp && p.id == 0 {
		return p, fmt.Errorf("%w: packet type %d with packet id 0", errProtocol, p.typ)
	}
	return p, nil
}

func readPublish(r *bufio.Reader, p packet, flags byte, n int, tc topicCache) (packet, error) {
	p.dup, p.qos, p.retain = flags&0x08 != 0, flags>>1&3, flags&1 != 0
	if p.qos > 1 {
		return p, fmt.Errorf("%w: PUBLISH with QoS %d (subscriptions ask for at most 1)", errProtocol, p.qos)
	}
	if n < 2 {
		return p, fmt.Errorf("%w: PUBLISH of %d bytes", errProtocol, n)
	}
	v, err := readUint16(r)
	if err != nil {
		return p, err
	}
	tl := int(v)
	n -= 2
	if tl == 0 || tl > n {
		return p, fmt.Errorf("%w: PUBLISH topic of %d bytes in %d", errProtocol, tl, n)
	}
	if tc != nil && tl <= r.Size() {
		t, err := r.Peek(tl)
		if err != nil {
			return p, eofInside(err)
		}
		p.topic = tc.get(t)
		_, _ = r.Discard(tl)
	} else {
		t := make([]byte, tl)
		if _, err := io.ReadFull(r, t); err != nil {
			return p, eofInside(err)
		}
		p.topic = string(t)
	}
	n -= tl
	if p.qos > 0 {
		if n < 2 {
			return p, fmt.Errorf("%w: PUBLISH without packet id", errProtocol)
		}
		if p.id, err = readUint16(r); err != nil {
			return p, err
		}
		n -= 2
		if p.id == 0 {
			return p, fmt.Errorf("%w: PUBLISH with packet id 0", errProtocol)
		}
	}
	p.payload = make([]byte, n)
	if _, err := io.ReadFull(r, p.payload); err != nil {
		return p, eofInside(err)
	}
	return p, nil
}

func readUint16(r *bufio.Reader) (uint16, error) {
	hi, err := r.ReadByte()
	if err != nil {
		return 0, eofInside(err)
	}
	lo, err := r.ReadByte()
	if err != nil {
		return 0, eofInside(err)
	}
	return uint16(hi)<<8 | uint16(lo), nil
}

// readLength reads a remaining length of at most four bytes.
func readLength(r *bufio.Reader) (int, error) {
	n, shift := 0, 0
	for i := 0; i < 4; i++ {
		d, err := r.ReadByte()
		if err != nil {
			return 0, eofInside(err)
		}
		n |= int(d&0x7f) << shift
		if d&0x80 == 0 {
			return n, nil
		}
		shift += 7
	}
	return 0, fmt.Errorf("%w: remaining length longer than 4 bytes", errProtocol)
}

// eofInside turns an EOF in the middle of a packet into ErrUnexpectedEOF.
func eofInside(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// connackReasons are the MQTT 3.1.1 CONNACK refusal codes.
var connackReasons = [...]string{
	1: "unacceptable protocol version",
	2: "identifier rejected",
	3: "server unavailable",
	4: "bad user name or password",
	5: "not authorized",
}

// refusedError is a broker's refusal of the connection: a CONNACK return
// code other than 0.
type refusedError struct {
	code byte
}

func (e *refusedError) Error() string {
	reason := "unknown reason"
	if int(e.code) < len(connackReasons) && connackReasons[e.code] != "" {
		reason = connackReasons[e.code]
	}
	return fmt.Sprintf("broker refused the connection: %s (code %d)", reason, e.code)
}
