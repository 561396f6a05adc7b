package config

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestUplinkGood(t *testing.T) {
	c, err := Parse("u.toml", []byte(doc(
		"version = 1",
		"node = 'cab4'",
		"[uplink]",
		"address = 'fleet.example:8883'",
		"tls = true",
		"ca_file = '/etc/tinyscada/fleet-ca.pem'",
		"cert_file = '/etc/tinyscada/dev.pem'",
		"key_file = '/etc/tinyscada/dev.key'",
		"username = 'cab4'",
		"password_file = 'uplink.password'",
		"bandwidth = '2KiB'",
		"gzip = false",
	)))
	if err != nil {
		t.Fatal(err)
	}
	u := c.Uplink
	if !u.Configured() || u.ID(c.Node) != "tinyscada-cab4" || u.Bandwidth != 2048 || u.Gzip || !u.TLS {
		t.Errorf("uplink = %+v", u)
	}
	if got := u.Password("/state"); got != "/state/uplink.password" {
		t.Errorf("Password = %q", got)
	}
	if u.ConfigDeadline.Duration != 2*time.Minute || u.CrashInterval.Duration != time.Minute {
		t.Errorf("defaults lost: %+v", u)
	}
	if Default().Uplink.Configured() {
		t.Error("the demo configures an upstream")
	}
}

// Every problem of the section is reported, each at its key; a
// certificate setting without tls is an error, never ignored.
func TestUplinkBad(t *testing.T) {
	_, err := Parse("u.toml", []byte(doc(
		"version = 1",
		"[uplink]",
		"address = 'fleet.example'", // 3
		"ca_file = 'ca.pem'",
		"cert_file = '/c.pem'",
		"username = 'x'",
		"retry_max = '10ms'",
		"batch_readings = 0",
		"batch_bytes = '10'",
		"window = 0", // 10
		"bandwidth = 5",
	)))
	if err == nil {
		t.Fatal("no error")
	}
	for _, w := range []string{
		"u.toml:3: uplink.address: bad address",
		"u.toml:4: uplink.ca_file: is set but tls is false",
		`u.toml:4: uplink.ca_file: "ca.pem" is not an absolute path`,
		"u.toml:5: uplink.cert_file: is set but tls is false",
		"uplink.key_file: must be set when cert_file is",
		"uplink.password_file: must be set when username is",
		"u.toml:7: uplink.retry_max: 10ms is too short",
		"u.toml:8: uplink.batch_readings: 0 is out of range",
		"u.toml:9: uplink.batch_bytes",
		"u.toml:10: uplink.window: 0 is out of range",
		"u.toml:11: uplink.bandwidth",
	} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q:\n%v", w, err)
		}
	}
}

// docs/uplink.md names every key of [uplink].
func TestUplinkDocs(t *testing.T) {
	b, err := os.ReadFile("../../docs/uplink.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range documentedKeysOf(t, "uplink") {
		if !strings.Contains(string(b), "`"+strings.TrimPrefix(k, "uplink.")+"`") {
			t.Errorf("docs/uplink.md does not document `%s`", k)
		}
	}
}

// documentedKeysOf returns the key paths of section in the encoded demo
// configuration.
func documentedKeysOf(t *testing.T, section string) []string {
	t.Helper()
	enc, err := demo(t).Encode()
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, e := range newIndex(enc).entries {
		if s, _, _ := strings.Cut(e.path, "."); s == section && strings.Contains(e.path, ".") {
			keys = append(keys, e.path)
		}
	}
	if len(keys) == 0 {
		t.Fatalf("no keys of [%s]", section)
	}
	return keys
}
