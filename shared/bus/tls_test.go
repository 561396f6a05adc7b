package bus

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
)

// mosquittoWith starts Debian's mosquitto with body as its configuration
// (a listener on port among it) until the test ends.
func mosquittoWith(t *testing.T, port int, body string) {
	t.Helper()
	bin := testpeer.Need(t, "mosquitto")
	conf := filepath.Join(t.TempDir(), "mosquitto.conf")
	// As root, mosquitto drops to its own user before it reads its files,
	// which that user cannot reach in the test's directory.
	body += "persistence false\nuser root\nlog_dest stderr\nlog_type error\n"
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-c", conf)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	if err := testpeer.WaitPort(addr(port), 10*time.Second); err != nil {
		t.Fatalf("%v; mosquitto: %s", err, stderr.String())
	}
}

// Through the bus's API to mosquitto over TLS, with a CA made here: the
// right CA connects (by IP address or by name); a wrong CA and a wrong
// server name are refused, the error naming why; a CA file that cannot be
// used is Dial's error at once.
func TestTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := testpeer.NewCA(t, dir, "tinyscada-test-ca")
	other := testpeer.NewCA(t, dir, "other-ca")
	certFile, keyFile := ca.Issue(t, dir)
	port := testpeer.FreePort(t)
	mosquittoWith(t, port, fmt.Sprintf("listener %d 127.0.0.1\ncafile %s\ncertfile %s\nkeyfile %s\nallow_anonymous true\n",
		port, ca.File, certFile, keyFile))

	c := dial(t, port, Options{CleanSession: true, TLS: &TLS{CAFile: ca.File}})
	h, got := collect()
	if err := c.Subscribe("tls/#", 1, h); err != nil {
		t.Fatal(err)
	}
	publish(t, c, "tls/1", 1, "over TLS")
	expect(t, got, msg{"tls/1", "over TLS"})
	byName := dial(t, port, Options{CleanSession: true, TLS: &TLS{CAFile: ca.File, ServerName: "localhost"}})
	publish(t, byName, "tls/2", 1, "by name")
	expect(t, got, msg{"tls/2", "by name"})

	for _, tc := range []struct {
		name string
		tls  TLS
		want string
	}{
		{"wrong CA", TLS{CAFile: other.File}, "certificate signed by unknown authority"},
		{"wrong server name", TLS{CAFile: ca.File, ServerName: "broker.example"}, "not broker.example"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := Dial(ctx, Options{Address: addr(port), ClientID: "tls-refused", RetryMax: 100 * time.Millisecond, TLS: &tc.tls})
		cancel()
		if !errors.Is(err, ErrClosed) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Dial = %v; want ErrClosed and %q", tc.name, err, tc.want)
		}
		t.Logf("%s: %v", tc.name, err)
	}

	junk := filepath.Join(dir, "junk.pem")
	if err := os.WriteFile(junk, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		tls  TLS
		want string
	}{
		{"missing CA file", TLS{CAFile: filepath.Join(dir, "missing.pem")}, "missing.pem"},
		{"CA file without PEM", TLS{CAFile: junk}, "no PEM certificate"},
		{"certificate without key", TLS{CAFile: ca.File, CertFile: certFile}, "both CertFile and KeyFile"},
	} {
		_, err := Dial(context.Background(), Options{Address: addr(port), TLS: &tc.tls})
		if err == nil || errors.Is(err, ErrClosed) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Dial = %v; want an error at once naming %q", tc.name, err, tc.want)
		}
	}
	if _, err := Dial(context.Background(), Options{Address: "unix:/run/x.sock", TLS: &TLS{CAFile: ca.File}}); err == nil {
		t.Error("Dial with TLS over a unix socket succeeded")
	}
}
