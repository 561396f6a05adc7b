package broker

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
	cc := newCoalescingConn(server)
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
	cc := newCoalescingConn(server)
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
