package bus

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
)

// TLS configures a TLS connection to the broker (Options.TLS), for brokers
// other than the local one. The broker's certificate is always verified:
// there is no setting to skip that, and a setting that cannot be loaded is
// Dial's error, never a fallback to less.
type TLS struct {
	// CAFile is a PEM file of the certificate authorities that sign the
	// broker's certificate; empty means the system's roots.
	CAFile string
	// CertFile and KeyFile are a PEM client certificate and its key, for
	// brokers that authenticate clients by certificate; both or neither.
	CertFile, KeyFile string
	// ServerName is the name the broker's certificate must carry; empty
	// means the host of the address (a name or an IP address).
	ServerName string
}

// config returns the tls.Config for a broker at addr (host:port), or an
// error naming the setting and file that could not be used.
func (t *TLS) config(addr string) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName}
	if c.ServerName == "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("bus address %q: %w", addr, err)
		}
		c.ServerName = host
	}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("bus TLS CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("bus TLS CA file %s: no PEM certificate in it", t.CAFile)
		}
		c.RootCAs = pool
	}
	switch {
	case t.CertFile != "" && t.KeyFile != "":
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("bus TLS client certificate %s, key %s: %w", t.CertFile, t.KeyFile, err)
		}
		c.Certificates = []tls.Certificate{cert}
	case t.CertFile != "" || t.KeyFile != "":
		return nil, errors.New("bus TLS: a client certificate needs both CertFile and KeyFile")
	}
	return c, nil
}
