package simulate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/tinyscada/tinyscada/shared/modbus"
	"golang.org/x/sys/unix"
)

// Options configure a Server.
type Options struct {
	// Baud is the simulated line speed; 0 means 9600.
	Baud int
	// ByteTiming makes the server take as long as a real line: a request is
	// taken to arrive over its transmission time, the end of the frame is
	// noticed after 3.5 characters of silence, and the reply is written
	// byte by byte at the baud rate.
	ByteTiming bool
	// Logger receives protocol trouble at debug level; nil discards it.
	Logger *slog.Logger
}

// Server answers Modbus RTU requests on one line for a Device.
type Server struct {
	dev  *Device
	rw   io.ReadWriter
	opts Options
	log  *slog.Logger
}

// NewServer returns a Server for dev on rw (the master side of a
// pseudo-terminal, or any stream). If rw has SetReadDeadline (an *os.File
// on a pollable descriptor, a net.Conn), partial frames are dropped after
// an inter-character timeout and Run returns promptly when its context
// ends; otherwise a partial frame waits for more bytes and Run returns at
// the next read after its context ended.
func NewServer(dev *Device, rw io.ReadWriter, opts Options) *Server {
	if opts.Baud <= 0 {
		opts.Baud = 9600
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{dev: dev, rw: rw, opts: opts, log: log}
}

// deadliner is the part of *os.File and net.Conn that Run uses.
type deadliner interface{ SetReadDeadline(time.Time) error }

// resyncTimeout is how long a partial request may wait for its next byte
// before it is dropped: the RTU rule (1.5 characters) is too tight for a
// pseudo-terminal, whose writer may be descheduled mid-frame.
func (s *Server) resyncTimeout() time.Duration {
	return max(20*time.Millisecond, 4*modbus.Silence(s.opts.Baud))
}

// Run reads requests and answers them until ctx ends (then it returns nil)
// or reading or writing fails (then it returns the error). Requests are
// framed by their length (function codes 1-6, 15, 16); a partial frame
// followed by silence, an unknown function code or a wrong CRC is dropped
// and framing restarts with the next byte after the silence.
func (s *Server) Run(ctx context.Context) error {
	dl, _ := s.rw.(deadliner)
	if dl != nil {
		stop := context.AfterFunc(ctx, func() { dl.SetReadDeadline(time.Unix(1, 0)) })
		defer stop()
	}
	var in [2 * modbus.MaxFrame]byte
	var out [modbus.MaxFrame + 64]byte
	n := 0 // bytes buffered in in
	for {
		if ctx.Err() != nil {
			return nil
		}
		need := modbus.RequestLen(in[:n])
		if need > 0 && n >= need {
			frameEnd := time.Now()
			a := s.dev.handle(out[:0], in[:need], frameEnd)
			if err := s.send(ctx, a, need, frameEnd); err != nil {
				return err
			}
			n = copy(in[:], in[need:n])
			continue
		}
		// Wait for more: a partial frame only for the resync timeout.
		var deadline time.Time
		if n > 0 {
			deadline = time.Now().Add(s.resyncTimeout())
		}
		if dl != nil && ctx.Err() == nil {
			if err := dl.SetReadDeadline(deadline); err != nil {
				return fmt.Errorf("simulate: %w", err)
			}
		}
		k, err := s.rw.Read(in[n:])
		n += k
		switch {
		case err == nil:
			if need < 0 && n == len(in) { // an endless unknown frame
				s.resync(&n, in[:n])
			}
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, os.ErrDeadlineExceeded):
			if need < 0 {
				// An unknown function: answer it (illegal function) if its CRC is right.
				frameEnd := time.Now()
				a := s.dev.handle(out[:0], in[:n], frameEnd)
				if err := s.send(ctx, a, n, frameEnd); err != nil {
					return err
				}
				n = 0
				continue
			}
			s.resync(&n, in[:n])
		case errors.Is(err, unix.EIO):
			return fmt.Errorf("simulate: read: the line is gone: %w", err)
		default:
			return fmt.Errorf("simulate: read: %w", err)
		}
	}
}

// resync drops a partial frame.
func (s *Server) resync(n *int, partial []byte) {
	s.log.Debug("dropping partial frame", "bytes", fmt.Sprintf("% x", partial[:min(len(partial), 16)]), "len", len(partial))
	s.dev.mu.Lock()
	s.dev.stats.Resyncs++
	s.dev.mu.Unlock()
	*n = 0
}

// send writes an answer. With byte timing, the reply starts when the
// request (reqLen bytes, its last byte read at frameEnd as if it had been
// sent at once) would have finished on the line plus 3.5 characters, and
// every byte leaves one character time after the previous one.
func (s *Server) send(ctx context.Context, a answer, reqLen int, frameEnd time.Time) error {
	if a.reply == nil && a.pre == nil {
		return nil
	}
	start := frameEnd
	if s.opts.ByteTiming {
		start = start.Add(modbus.LineTime(s.opts.Baud, reqLen) + modbus.Silence(s.opts.Baud))
	}
	start = start.Add(a.delay)
	if a.delay > 0 {
		// Long waits on the Go timer, so a cancelled context ends them.
		t := time.NewTimer(time.Until(start))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
	if err := s.write(a.pre, &start); err != nil {
		return err
	}
	return s.write(a.reply, &start)
}

// chunkTime is the least time between two writes of one timed frame.
const chunkTime = 500 * time.Microsecond

// write writes b; with byte timing, byte i is written at *start + (i+1)
// character times, several bytes at once when they fall within chunkTime.
// *start is advanced past b.
func (s *Server) write(b []byte, start *time.Time) error {
	if len(b) == 0 {
		return nil
	}
	if !s.opts.ByteTiming {
		if _, err := s.rw.Write(b); err != nil {
			return fmt.Errorf("simulate: write: %w", err)
		}
		return nil
	}
	ct := modbus.CharTime(s.opts.Baud)
	perChunk := max(1, int(chunkTime/ct))
	for i := 0; i < len(b); {
		j := min(len(b), i+perChunk)
		modbus.Sleep(time.Until(start.Add(time.Duration(j) * ct)))
		if _, err := s.rw.Write(b[i:j]); err != nil {
			return fmt.Errorf("simulate: write: %w", err)
		}
		i = j
	}
	*start = start.Add(time.Duration(len(b)) * ct)
	return nil
}
