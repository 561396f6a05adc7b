package connbuf

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// Raw moves bytes both ways in order, several MB at once (so that writes
// wait for a full socket buffer and reads take it in pieces).
func TestRawCarriesBytes(t *testing.T) {
	client, server := tcpPair(t)
	a, b := Raw(client), Raw(server)
	if _, ok := a.(*rawConn); !ok {
		t.Fatalf("Raw of a TCP connection is a %T, want its raw form", a)
	}
	want := bytes.Repeat([]byte("0123456789abcdef"), 4<<20/16)
	got := make(chan []byte, 1)
	go func() {
		buf, _ := io.ReadAll(b)
		got <- buf
	}()
	if n, err := a.Write(want); n != len(want) || err != nil {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(want))
	}
	a.Close()
	select {
	case buf := <-got:
		if !bytes.Equal(buf, want) {
			t.Fatalf("read %d bytes, not the %d written in order", len(buf), len(want))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the reader did not see the end of the stream")
	}
}

// Deadlines, a closed connection and a closed peer fail as net's own
// Read and Write do.
func TestRawErrorsAsNet(t *testing.T) {
	client, server := tcpPair(t)
	a, b := Raw(client), Raw(server)
	buf := make([]byte, 16)

	a.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, err := a.Read(buf)
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Read past its deadline: %v, want a timeout", err)
	}
	a.SetReadDeadline(time.Time{})

	b.Write([]byte("hi"))
	if n, err := a.Read(buf); err != nil || string(buf[:n]) != "hi" {
		t.Fatalf("Read = %q, %v; want hi", buf[:n], err)
	}

	b.Close()
	if n, err := a.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("Read after the peer closed = %d, %v; want 0, EOF", n, err)
	}
	// Writing to a peer that is gone fails (EPIPE or ECONNRESET), and does
	// not kill the process with SIGPIPE.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := a.Write(make([]byte, 64<<10)); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("writes to a closed peer kept succeeding")
		}
	}

	a.Close()
	if _, err := a.Read(buf); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read after Close: %v, want net.ErrClosed", err)
	}
	if _, err := a.Write(buf); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close: %v, want net.ErrClosed", err)
	}
}

// A connection without a descriptor of its own is returned as it is.
func TestRawKeepsOtherConns(t *testing.T) {
	p, q := net.Pipe()
	defer p.Close()
	defer q.Close()
	if c := Raw(p); c != p {
		t.Fatalf("Raw(net.Pipe) = %T, want the pipe itself", c)
	}
}
