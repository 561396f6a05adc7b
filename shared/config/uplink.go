package config

import (
	"path/filepath"
	"strings"
	"time"
)

// Uplink configures the uplink role: the upstream MQTT broker (an ordinary
// one: mosquitto, EMQX, a cloud IoT hub), how stored readings are batched
// and sent there, and the crash-report and remote-configuration loops.
// docs/uplink.md explains each choice and the upstream payloads.
type Uplink struct {
	// Address is the upstream broker's host:port; empty means no upstream:
	// `tinyscada run` does not start the uplink, and `tinyscada uplink`
	// refuses to start.
	Address string `toml:"address"`
	// Prefix is the first level(s) of the upstream topics:
	// <prefix>/<node>/data, …/state, …/crash, …/config/….
	Prefix string `toml:"prefix"`
	// ClientID is the stable MQTT client id upstream; empty means
	// "tinyscada-<node>".
	ClientID string `toml:"client_id"`
	// TLS makes the connection TLS, the broker's certificate always
	// verified (against CAFile, or the system's roots when it is empty,
	// for the name ServerName, or the host of Address when it is empty).
	TLS        bool   `toml:"tls"`
	CAFile     string `toml:"ca_file"`
	CertFile   string `toml:"cert_file"`
	KeyFile    string `toml:"key_file"`
	ServerName string `toml:"server_name"`
	// Username, when set, is sent with the password read from
	// PasswordFile (relative to state_dir; whitespace around it is
	// dropped).
	Username     string `toml:"username"`
	PasswordFile string `toml:"password_file"`
	// KeepAlive is the MQTT keep-alive upstream.
	KeepAlive Duration `toml:"keep_alive"`
	// RetryMax caps the jittered exponential backoff between connection
	// attempts (from 1s up), so a fleet that lost its broker does not come
	// back all at once.
	RetryMax Duration `toml:"retry_max"`
	// Bandwidth caps the payload bytes sent upstream per second; 0: no cap.
	Bandwidth Size `toml:"bandwidth"`
	// BatchReadings and BatchBytes bound one data batch (readings, and
	// bad points, counted together; encoded JSON bytes before gzip). A
	// single poll round larger than either is sent alone.
	BatchReadings int  `toml:"batch_readings"`
	BatchBytes    Size `toml:"batch_bytes"`
	// Gzip compresses every data batch (the payload then starts with the
	// gzip magic bytes 1f 8b).
	Gzip bool `toml:"gzip"`
	// Window is how many batches may wait for their acknowledgement at once.
	Window int `toml:"window"`
	// BatchDelay is how long the uplink waits after new rows were
	// committed for more before it sends a batch that is not full.
	BatchDelay Duration `toml:"batch_delay"`
	// PollInterval is how often the database is looked at when no commit
	// announcement came (the logger's announcements are only a wake-up).
	PollInterval Duration `toml:"poll_interval"`
	// CrashInterval is how often the crash directory is scanned for
	// reports to send (and once at start).
	CrashInterval Duration `toml:"crash_interval"`
	// ConfigDeadline is how long after applying a remote configuration
	// the stack must report healthy before the previous one is restored.
	ConfigDeadline Duration `toml:"config_deadline"`
}

// CursorFile is where the uplink keeps its cursor, relative to state_dir.
const CursorFile = "uplink.cursor"

// Configured reports whether an upstream broker is set.
func (u *Uplink) Configured() bool { return u.Address != "" }

// ID returns the client id upstream: ClientID, or "tinyscada-<node>".
func (u *Uplink) ID(node string) string {
	if u.ClientID != "" {
		return u.ClientID
	}
	return "tinyscada-" + node
}

// Password returns the path of the password file: PasswordFile itself
// when absolute, else relative to stateDir.
func (u *Uplink) Password(stateDir string) string {
	if filepath.IsAbs(u.PasswordFile) {
		return u.PasswordFile
	}
	return filepath.Join(stateDir, u.PasswordFile)
}

func defaultUplink() Uplink {
	return Uplink{
		Prefix:         "tinyscada",
		KeepAlive:      Duration{60 * time.Second},
		RetryMax:       Duration{2 * time.Minute},
		BatchReadings:  5000,
		BatchBytes:     256 << 10,
		Gzip:           true,
		Window:         4,
		BatchDelay:     Duration{2 * time.Second},
		PollInterval:   Duration{30 * time.Second},
		CrashInterval:  Duration{time.Minute},
		ConfigDeadline: Duration{2 * time.Minute},
	}
}

func (u *Uplink) validate(ch *checker) {
	if u.Address != "" {
		ch.hostPort("address", u.Address, false)
	}
	ch.topic("prefix", u.Prefix, false)
	if u.ClientID != "" {
		switch {
		case len(u.ClientID) > 256:
			ch.errorf("client_id", "%d bytes long (want at most 256)", len(u.ClientID))
		case strings.ContainsRune(u.ClientID, 0):
			ch.errorf("client_id", "%q holds a NUL byte", u.ClientID)
		}
	}
	if !u.TLS {
		for _, k := range []struct{ key, v string }{
			{"ca_file", u.CAFile}, {"cert_file", u.CertFile}, {"key_file", u.KeyFile}, {"server_name", u.ServerName},
		} {
			if k.v != "" {
				ch.errorf(k.key, "is set but tls is false: set tls = true (a certificate setting is never ignored)")
			}
		}
	}
	for _, k := range []struct{ key, v string }{{"ca_file", u.CAFile}, {"cert_file", u.CertFile}, {"key_file", u.KeyFile}} {
		if k.v != "" {
			ch.absPath(k.key, k.v, 0)
		}
	}
	switch {
	case u.CertFile != "" && u.KeyFile == "":
		ch.errorf("key_file", "must be set when cert_file is")
	case u.CertFile == "" && u.KeyFile != "":
		ch.errorf("cert_file", "must be set when key_file is")
	}
	switch {
	case u.Username != "" && u.PasswordFile == "":
		ch.errorf("password_file", "must be set when username is")
	case u.Username == "" && u.PasswordFile != "":
		ch.errorf("username", "must be set when password_file is")
	}
	if strings.IndexByte(u.PasswordFile, 0) >= 0 {
		ch.errorf("password_file", "%q holds a NUL byte", u.PasswordFile)
	}
	ch.atLeast("keep_alive", u.KeepAlive, time.Second)
	ch.atMost("keep_alive", u.KeepAlive, 65535*time.Second)
	ch.atLeast("retry_max", u.RetryMax, time.Second)
	ch.atMost("retry_max", u.RetryMax, time.Hour)
	if u.Bandwidth != 0 {
		ch.sizeRange("bandwidth", u.Bandwidth, 1<<10, 1<<40)
	}
	ch.intRange("batch_readings", u.BatchReadings, 1, 1000000)
	// Upstream brokers commonly take packets of 256 MiB at most; the
	// default mosquitto message_size_limit is that too.
	ch.sizeRange("batch_bytes", u.BatchBytes, 1<<10, 64<<20)
	ch.intRange("window", u.Window, 1, 64)
	ch.atMost("batch_delay", u.BatchDelay, time.Hour)
	ch.atLeast("poll_interval", u.PollInterval, 100*time.Millisecond)
	ch.atLeast("crash_interval", u.CrashInterval, time.Second)
	ch.atLeast("config_deadline", u.ConfigDeadline, time.Second)
}
