package bus

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
)

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string // its certificate, PEM
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func newCA(t *testing.T, dir, name string) *testCA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ca := &testCA{cert: cert, key: key, file: filepath.Join(dir, name+".pem")}
	writePEM(t, ca.file, "CERTIFICATE", der)
	return ca
}

// issue writes a server certificate for localhost and 127.0.0.1 and its
// key, signed by ca, and returns their files.
func (ca *testCA) issue(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key")
	writePEM(t, certFile, "CERTIFICATE", der)
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, keyFile, "EC PRIVATE KEY", kder)
	return certFile, keyFile
}

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
	dir := t.TempDir()
	ca := newCA(t, dir, "tinyscada-test-ca")
	other := newCA(t, dir, "other-ca")
	certFile, keyFile := ca.issue(t, dir)
	port := testpeer.FreePort(t)
	mosquittoWith(t, port, fmt.Sprintf("listener %d 127.0.0.1\ncafile %s\ncertfile %s\nkeyfile %s\nallow_anonymous true\n",
		port, ca.file, certFile, keyFile))

	c := dial(t, port, Options{CleanSession: true, TLS: &TLS{CAFile: ca.file}})
	h, got := collect()
	if err := c.Subscribe("tls/#", 1, h); err != nil {
		t.Fatal(err)
	}
	publish(t, c, "tls/1", 1, "over TLS")
	expect(t, got, msg{"tls/1", "over TLS"})
	byName := dial(t, port, Options{CleanSession: true, TLS: &TLS{CAFile: ca.file, ServerName: "localhost"}})
	publish(t, byName, "tls/2", 1, "by name")
	expect(t, got, msg{"tls/2", "by name"})

	for _, tc := range []struct {
		name string
		tls  TLS
		want string
	}{
		{"wrong CA", TLS{CAFile: other.file}, "certificate signed by unknown authority"},
		{"wrong server name", TLS{CAFile: ca.file, ServerName: "broker.example"}, "not broker.example"},
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
		{"certificate without key", TLS{CAFile: ca.file, CertFile: certFile}, "both CertFile and KeyFile"},
	} {
		_, err := Dial(context.Background(), Options{Address: addr(port), TLS: &tc.tls})
		if err == nil || errors.Is(err, ErrClosed) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Dial = %v; want an error at once naming %q", tc.name, err, tc.want)
		}
	}
	if _, err := Dial(context.Background(), Options{Address: "unix:/run/x.sock", TLS: &TLS{CAFile: ca.file}}); err == nil {
		t.Error("Dial with TLS over a unix socket succeeded")
	}
}
