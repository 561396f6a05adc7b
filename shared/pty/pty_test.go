package pty

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestRawBothWays(t *testing.T) {
	p, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	peer, err := os.OpenFile(p.SlavePath, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()

	// Bytes a cooked terminal would translate, swallow or echo.
	msg := []byte{0x00, 0x03, '\r', '\n', 0x11, 0x13, 0x7f, 0xff, 0x04, 0x1a}
	if _, err := peer.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := readN(t, p.Master, len(msg))
	if !bytes.Equal(got, msg) {
		t.Fatalf("master read % x, want % x", got, msg)
	}
	if _, err := p.Master.Write(msg); err != nil {
		t.Fatal(err)
	}
	got = readN(t, peer, len(msg))
	if !bytes.Equal(got, msg) {
		t.Fatalf("slave read % x, want % x", got, msg)
	}
	// No echo: nothing more comes back on the master.
	p.Master.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	var b [16]byte
	if n, err := p.Master.Read(b[:]); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("master read after exchange: %d bytes % x, err %v; want deadline exceeded", n, b[:n], err)
	}
}

func readN(t *testing.T, f *os.File, n int) []byte {
	t.Helper()
	buf := make([]byte, 0, n)
	if err := f.SetReadDeadline(time.Now().Add(2 * time.Second)); err != nil && !errors.Is(err, os.ErrNoDeadline) {
		t.Fatal(err)
	}
	for len(buf) < n {
		var b [64]byte
		k, err := f.Read(b[:n-len(buf)])
		if err != nil {
			t.Fatalf("read %s after %d bytes: %v", f.Name(), len(buf), err)
		}
		buf = append(buf, b[:k]...)
	}
	return buf
}

func TestPeerReopens(t *testing.T) {
	p, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for i := range 3 {
		peer, err := os.OpenFile(p.SlavePath, os.O_RDWR|unix.O_NOCTTY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := peer.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		peer.Close()
		if got := readN(t, p.Master, 1); got[0] != byte(i) {
			t.Fatalf("round %d: read %x", i, got)
		}
	}
	// With no peer open the master's read waits (no EIO) until its deadline.
	p.Master.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	var b [1]byte
	if _, err := p.Master.Read(b[:]); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read with no peer: %v, want deadline exceeded", err)
	}
}

func TestLink(t *testing.T) {
	dir := t.TempDir()
	link := filepath.Join(dir, "ttySIM")
	if err := os.Symlink("/nonexistent", link); err != nil { // stale link of a killed run
		t.Fatal(err)
	}
	p, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Link(link); err != nil {
		t.Fatal(err)
	}
	if dst, err := os.Readlink(link); err != nil || dst != p.SlavePath {
		t.Fatalf("link points to %q (%v), want %q", dst, err, p.SlavePath)
	}
	regular := filepath.Join(dir, "file")
	os.WriteFile(regular, nil, 0o644)
	if err := p.Link(regular); err == nil {
		t.Fatal("Link over a regular file succeeded")
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(link); !os.IsNotExist(err) {
		t.Fatalf("link still there after Close: %v", err)
	}
	if _, err := os.Stat(regular); err != nil {
		t.Fatalf("regular file touched: %v", err)
	}
}

func TestCloseEndsPendingRead(t *testing.T) {
	p, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		var b [1]byte
		_, err := p.Master.Read(b[:])
		done <- err
	}()
	time.Sleep(10 * time.Millisecond)
	p.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("read returned no error after Close")
		}
	case <-time.After(2 * time.Second):
		t.Fatal("read still blocked after Close")
	}
}
