// Package config loads, validates and prints the tinyscada configuration: one
// strict TOML file with a section per role and built-in demo defaults.
package config

import (
	"time"

	"github.com/tinyscada/tinyscada/shared/topics"
)

// DefaultPath is where the services look for their configuration when no
// -config flag and no TINYSCADA_CONFIG variable names one.
const DefaultPath = "/etc/tinyscada/tinyscada.toml"

// Config is the whole configuration of one gateway.
type Config struct {
	// Version of the file format; must be 1.
	Version int `toml:"version"`
	// Node names this gateway upstream (one topic level); Load fills in
	// the host name when it is empty.
	Node string `toml:"node"`
	// StateDir holds credentials, crash reports and the database. Load
	// makes it absolute, relative to the current directory.
	StateDir string `toml:"state_dir"`
	// TopicPrefix is the first level of every topic.
	TopicPrefix string `toml:"topic_prefix"`

	Log    Log    `toml:"log"`
	Bus    Bus    `toml:"bus"`
	Broker Broker `toml:"broker"`
	Run    Run    `toml:"run"`
	Poller Poller `toml:"poller"`
	Logger Logger `toml:"logger"`
	Uplink Uplink `toml:"uplink"`
	Health Health `toml:"health"`
}

// Log configures logging to stderr (the journal under systemd).
type Log struct {
	// Level is debug, info, warn or error.
	Level string `toml:"level"`
}

// Bus says how every role reaches the broker.
type Bus struct {
	// Address is host:port for TCP or unix:PATH for a unix socket.
	Address string `toml:"address"`
	// HeartbeatInterval is how often each role publishes its heartbeat.
	HeartbeatInterval Duration `toml:"heartbeat_interval"`
	// KeepAlive is the MQTT keep-alive interval.
	KeepAlive Duration `toml:"keep_alive"`
	// RetryMax caps the backoff between connection attempts.
	RetryMax Duration `toml:"retry_max"`
}

// Broker configures the embedded MQTT broker.
type Broker struct {
	// Listen lists TCP listen addresses (host:port). Anonymous clients are
	// accepted only on loopback addresses; any other address requires
	// credentials.
	Listen []string `toml:"listen"`
	// UnixSocket, when set, adds a listener on that socket path; it is
	// treated like loopback.
	UnixSocket string `toml:"unix_socket"`
	// TLSCert and TLSKey, when both set, make every non-loopback listener
	// use TLS.
	TLSCert string `toml:"tls_cert"`
	TLSKey  string `toml:"tls_key"`
	// SysInterval is how often $SYS topics are published; 0 disables them.
	SysInterval Duration `toml:"sys_interval"`
	// ClientBuffer is the per-client read and write buffer size.
	ClientBuffer Size `toml:"client_buffer"`
	// MaxPending caps the messages queued for one client before the broker
	// drops (watch $SYS/broker/messages/dropped).
	MaxPending int `toml:"max_pending"`
	// MaxInflight caps unacknowledged QoS 1/2 messages per client.
	MaxInflight int `toml:"max_inflight"`
	// MaxPacketSize is the largest MQTT packet the broker takes; a
	// client that sends a larger one is disconnected before its body is
	// read.
	MaxPacketSize Size `toml:"max_packet_size"`
}

// Run configures `tinyscada run`, the stack without systemd.
type Run struct {
	// Roles lists the roles to start, in dependency order.
	Roles []string `toml:"roles"`
	// ReadyTimeout is how long a role may take to send READY=1.
	ReadyTimeout Duration `toml:"ready_timeout"`
	// RestartBackoff is the first delay before restarting a dead role;
	// it doubles up to RestartBackoffMax and resets after a stable minute.
	RestartBackoff    Duration `toml:"restart_backoff"`
	RestartBackoffMax Duration `toml:"restart_backoff_max"`
}

// Default returns the built-in demo configuration: everything works with no
// file, state lives in ./tinyscada-state.
func Default() *Config {
	return &Config{
		Version:     1,
		StateDir:    "./tinyscada-state",
		TopicPrefix: "tinyscada",
		Log:         Log{Level: "info"},
		Bus: Bus{
			Address:           "127.0.0.1:1883",
			HeartbeatInterval: Duration{5 * time.Second},
			KeepAlive:         Duration{30 * time.Second},
			RetryMax:          Duration{5 * time.Second},
		},
		Broker: Broker{
			Listen:       []string{"127.0.0.1:1883"},
			SysInterval:  Duration{30 * time.Second},
			ClientBuffer: 4 << 10,
			MaxPending:   1024,
			MaxInflight:  1024,
			// Room for a poll round of a device with a few thousand
			// points; see docs/configuration.md.
			MaxPacketSize: 256 << 10,
		},
		Run: Run{
			Roles:             topics.Names(topics.Roles()),
			ReadyTimeout:      Duration{30 * time.Second},
			RestartBackoff:    Duration{500 * time.Millisecond},
			RestartBackoffMax: Duration{30 * time.Second},
		},
		Poller: defaultPoller(),
		Logger: defaultLogger(),
		Uplink: defaultUplink(),
		Health: defaultHealth(),
	}
}
