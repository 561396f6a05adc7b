package connbuf

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// tcpPair returns both ends of a real loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// Everything written arrives, in order, including what is still buffered
// when Close is called.
func TestCoalescingConnKeepsOrderAndFlushesOnClose(t *testing.T) {
	client, server := tcpPair(t)
	cc := newCoalescingConn(server, 0)
	var want bytes.Buffer
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(client)
		got <- b
	}()
	for i := range 20000 {
		p := []byte{byte(i), byte(i >> 8), 0xAB}
		want.Write(p)
		if n, err := cc.Write(p); n != len(p) || err != nil {
			t.Fatalf("Write %d: %d, %v", i, n, err)
		}
	}
	if err := cc.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-got:
		if !bytes.Equal(b, want.Bytes()) {
			t.Fatalf("received %d bytes, want %d, or out of order", len(b), want.Len())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("reader never saw the end of the stream")
	}
	if _, err := cc.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Write after Close: %v, want net.ErrClosed", err)
	}
}

// A write error of the socket surfaces on a later Write, so mochi drops the
// client as it would have.
func TestCoalescingConnReportsWriteErrors(t *testing.T) {
	_, server := tcpPair(t)
	cc := newCoalescingConn(server, 0)
	server.Close() // the socket under the wrapper fails from now on
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := cc.Write([]byte("data")); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("writes kept succeeding on a closed socket")
		}
		time.Sleep(time.Millisecond)
	}
	cc.Close()
}

// A peer that stops reading makes writes fail after the write timeout
// instead of holding them for good (the broker drops such a client).
func TestCoalescingConnWriteTimeout(t *testing.T) {
	_, server := tcpPair(t) // the client end never reads
	cc := Coalesce(server, 200*time.Millisecond)
	defer cc.Close()
	chunk := make([]byte, 64<<10)
	start := time.Now()
	for {
		if _, err := cc.Write(chunk); err != nil {
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				t.Fatalf("write failed with %v, want a timeout", err)
			}
			break
		}
		if time.Since(start) > 20*time.Second {
			t.Fatal("writes to a peer that never reads kept succeeding")
		}
	}
}

// Deadlines set on a coalescing conn bound reads only: mochi's keep-alive
// deadline must not cut a flush that is under way.
func TestCoalescingConnDeadlineIsForReads(t *testing.T) {
	client, server := tcpPair(t)
	cc := Coalesce(server, 0)
	defer cc.Close()
	if err := cc.SetDeadline(time.Now().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	var ne net.Error
	if _, err := cc.Read(make([]byte, 1)); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Read after a past deadline: %v, want a timeout", err)
	}
	if _, err := cc.Write([]byte("still writes")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 12)
	_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(client, buf); err != nil || string(buf) != "still writes" {
		t.Fatalf("peer read %q, %v", buf, err)
	}
}
