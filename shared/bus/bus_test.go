package bus

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
)

// TestMain runs up to 8 tests at once: they wait on brokers, keep-alive
// intervals and retries much more than they compute.
func TestMain(m *testing.M) { os.Exit(testpeer.Main(m, 8)) }

func TestBrokerURL(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		bad      bool
	}{
		{in: "127.0.0.1:1883", want: "tcp://127.0.0.1:1883"},
		{in: "[::1]:1883", want: "tcp://[::1]:1883"},
		{in: "unix:/run/tinyscada/broker.sock", want: "unix:///run/tinyscada/broker.sock"},
		{in: "unix:", bad: true},
		{in: "", bad: true},
	} {
		got, err := BrokerURL(tc.in)
		if (err != nil) != tc.bad || got != tc.want {
			t.Errorf("BrokerURL(%q) = %q, %v; want %q, error %v", tc.in, got, err, tc.want, tc.bad)
		}
	}
}

// With nothing listening, Dial keeps retrying until its context ends and
// then says it gave up, with the last connection error.
func TestDialGivesUpWhenContextEnds(t *testing.T) {
	t.Parallel()
	addr := fmt.Sprintf("127.0.0.1:%d", testpeer.FreePort(t)) // ours, and nothing listens there
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	attempts := 0
	_, err := Dial(ctx, Options{
		Address:     addr,
		ClientID:    "t",
		RetryMax:    100 * time.Millisecond,
		Credentials: func() (string, string, error) { attempts++; return "u", "p", nil },
	})
	if !errors.Is(err, ErrClosed) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Dial = %v; want ErrClosed and DeadlineExceeded", err)
	}
	if attempts < 3 {
		t.Errorf("%d connection attempts in 700ms with a 100ms backoff cap; want several", attempts)
	}
}

func TestDialBadAddress(t *testing.T) {
	_, err := Dial(context.Background(), Options{Address: "unix:"})
	if err == nil || errors.Is(err, ErrClosed) {
		t.Fatalf("Dial with a bad address = %v; want an address error at once", err)
	}
}
