package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/pelletier/go-toml/v2/unstable"
)

// doc joins lines into a TOML document: line i of the file is lines[i-1].
func doc(lines ...string) string { return strings.Join(lines, "\n") + "\n" }

// want is one expected error: its line, its key and part of its message.
type want struct {
	line int
	key  string
	msg  string
}

var badCases = []struct {
	name string
	doc  string
	want []want
}{
	{"unknown top-level key", doc(
		"version = 1",
		"colour = 'blue'",
	), []want{{2, "colour", "unknown key"}}},
	{"unknown key in section", doc(
		"version = 1",
		"[bus]",
		"address = '127.0.0.1:1883'",
		"adress = '127.0.0.1:1884'",
	), []want{{4, "bus.adress", "unknown key (did you mean bus.address?)"}}},
	{"two unknown keys both reported", doc(
		"version = 1",
		"speed = 3",
		"[broker]",
		"max_pending = 10",
		"max_pendings = 20",
	), []want{{2, "speed", "unknown key"}, {5, "broker.max_pendings", "unknown key"}}},
	{"unknown table", doc(
		"version = 1",
		"[brokr]",
		"listen = []",
	), []want{{2, "brokr", "unknown table (did you mean broker?)"}}},
	{"unknown dotted key", doc(
		"version = 1",
		"log.colour = true",
	), []want{{2, "log.colour", "unknown key"}}},
	{"unknown key in inline table", doc(
		"version = 1",
		"log = { level = 'info', colour = true }",
	), []want{{2, "log.colour", "unknown key"}}},
	{"key with the wrong case", doc(
		"version = 1",
		"[log]",
		"Level = 'debug'",
	), []want{{3, "log.Level", "keys are case-sensitive (did you mean log.level?)"}}},
	{"string where int", doc(
		"version = 1",
		"[broker]",
		"max_pending = '1024'",
	), []want{{3, "broker.max_pending", "wrong type: got a TOML string, want an integer"}}},
	{"int where duration string", doc(
		"version = 1",
		"[bus]",
		"heartbeat_interval = 5",
	), []want{{3, "bus.heartbeat_interval", `bad duration "5" (want e.g. "500ms", "5s", "1m") (got a TOML integer)`}}},
	{"int where string", doc(
		"version = 1",
		"[bus]",
		"address = 1883",
	), []want{{3, "bus.address", "wrong type: got a TOML integer, want a string"}}},
	{"string where array", doc(
		"version = 1",
		"[broker]",
		"listen = '127.0.0.1:1883'",
	), []want{{3, "broker.listen", "wrong type: got a TOML string, want an array of strings"}}},
	{"int in array of strings", doc(
		"version = 1",
		"[broker]",
		"listen = [",
		"  '127.0.0.1:1883',",
		"  1884,",
		"]",
	), []want{{5, "broker.listen[1]", "wrong type: got a TOML integer, want a string"}}},
	{"value where table", doc(
		"version = 1",
		"log = 'debug'",
	), []want{{2, "log", "wrong type: got a TOML string, want a table"}}},
	{"array of tables where table", doc(
		"version = 1",
		"[[log]]",
		"level = 'debug'",
	), []want{{2, "log", "wrong type: got an array of tables ([[log]]), want a table ([log])"}}},
	{"bad duration", doc(
		"version = 1",
		"[bus]",
		"heartbeat_interval = \"5x\"",
	), []want{{3, "bus.heartbeat_interval", `bad duration "5x" (want e.g. "500ms", "5s", "1m")`}}},
	{"negative duration", doc(
		"version = 1",
		"[run]",
		"ready_timeout = '-1s'",
	), []want{{3, "run.ready_timeout", `bad duration "-1s": negative`}}},
	{"bad size", doc(
		"version = 1",
		"[broker]",
		"client_buffer = '4XB'",
	), []want{{3, "broker.client_buffer", `bad size "4XB"`}}},
	{"float size", doc(
		"version = 1",
		"[broker]",
		"client_buffer = 4.5",
	), []want{{3, "broker.client_buffer", `bad size "4.5" (want e.g. 4096, "4KiB", "64MiB") (got a TOML float)`}}},
	{"bad listen addresses", doc(
		"version = 1",
		"[broker]",
		"listen = ['127.0.0.1:1883', '127.0.0.1:99999', 'nohost', ':x']",
	), []want{
		{3, "broker.listen[1]", `bad address "127.0.0.1:99999": port "99999" is not a number from 1 to 65535`},
		{3, "broker.listen[2]", `bad address "nohost": missing port`},
		{3, "broker.listen[3]", `bad address ":x": port "x"`},
	}},
	{"bad listen address on its own line", doc(
		"version = 1",
		"[broker]",
		"listen = [",
		"  '127.0.0.1:1883',",
		"  'bad host!:1883',",
		"  '::1:1883',",
		"  '[fe80::1%eth0]:1883',",
		"  '127.0.0.1:0',",
		"]",
	), []want{
		{5, "broker.listen[1]", `host "bad host!" is neither an IP address nor a host name`},
		{6, "broker.listen[2]", "an IPv6 address needs brackets"},
		{8, "broker.listen[4]", `port "0" is not a number from 1 to 65535`},
	}},
	{"missing version", doc(
		"[log]",
		"level = 'debug'",
	), []want{{1, "version", "missing: a configuration file must set version = 1"}}},
	{"empty file", "", []want{{1, "version", "missing"}}},
	{"byte order mark", "\uFEFFversion = 1\nnode = 1\n", []want{{2, "node", "wrong type"}}},
	{"version 2", doc(
		"# comment",
		"version = 2",
	), []want{{2, "version", "unsupported version 2 (want 1)"}}},
	{"syntax error: junk after a value", doc(
		"version = 1",
		"[bus]",
		"address = '127.0.0.1:1883' junk",
		"unknown_key_not_reported = 1",
	), []want{{3, "bus.address", "syntax error: expected newline but got U+006A 'j'"}}},
	{"syntax error: junk line", doc(
		"version = 1",
		"",
		"]",
	), []want{{3, "", "syntax error: invalid character at start of key"}}},
	{"syntax error: unclosed table", doc(
		"version = 1",
		"[broker",
	), []want{{2, "broker", "syntax error: expected ']' to close table name"}}},
	{"syntax error: unterminated string", doc(
		"version = 1",
		"# a comment",
		"node = 'gw1",
	), []want{{3, "node", "syntax error"}}},
	{"syntax error: no value", "version = 1\nnode =", []want{{2, "node", "syntax error"}}},
	{"duplicate key", doc(
		"version = 1",
		"node = 'a'",
		"node = 'b'",
	), []want{{3, "node", "duplicate key (first set on line 2)"}}},
	{"duplicate table", doc(
		"version = 1",
		"[log]",
		"level = 'info'",
		"[log]",
		"level = 'debug'",
	), []want{{4, "log", "duplicate table (first defined on line 2)"}}},
	{"duplicates do not hide other problems", doc(
		"version = 1",
		"node = 'a'",
		"node = 'b'",
		"state_dir = ''",
		"[log]",
		"level = 'verbose'",
		"[log]",
		"level = 'debug'",
		"colour = 1",
	), []want{
		{3, "node", "duplicate key (first set on line 2)"},
		{4, "state_dir", "must not be empty"},
		{6, "log.level", `"verbose" is not one of`},
		{7, "log", "duplicate table (first defined on line 5)"},
	}},
	{"array of tables after an array", doc(
		"version = 1",
		"[poller]",
		"port = []",
		"[[poller.port]]",
		"name = 'x'",
	), []want{{4, "poller.port", "duplicate table (first defined on line 3)"}}},
	{"table where array of tables", doc(
		"version = 1",
		"[poller.device]",
		"name = 'm1'",
	), []want{{2, "poller.device", "wrong type: got a table ([poller.device]), want an array of tables ([[poller.device]])"}}},
	{"table where value", doc(
		"version = 1",
		"[node]",
		"name = 'x'",
	), []want{{2, "node", "wrong type: got a table ([node]), want a string"}}},
	{"dotted key through a value", doc(
		"version = 1",
		"node.name = 'x'",
	), []want{{2, "node", "wrong type: got a table (a dotted key), want a string"}}},
	{"inline table where value", doc(
		"version = 1",
		"[broker]",
		"client_buffer = { kib = 4 }",
	), []want{{3, "broker.client_buffer", "wrong type: got a TOML inline table, want a size"}}},
	{"wrong types inside an inline table and an array of them", doc(
		"version = 1",
		"log = { level = 5 }",
		"[poller]",
		"device = [{ name = 'm1' }, { name = 2 }]",
	), []want{
		{2, "log.level", "wrong type: got a TOML integer, want a string"},
		{4, "poller.device[1].name", "wrong type: got a TOML integer, want a string"},
	}},
	// This makes poller.device a table, which go-toml takes for an array
	// of one device (or for the last default device).
	{"point without its device", doc(
		"version = 1",
		"[[poller.device.point]]",
		"name = 'x'",
	), []want{{2, "poller.device", "wrong type: got a table ([[poller.device.point]]), want an array of tables ([[poller.device]])"}}},
	{"header under a value", doc(
		"version = 1",
		"[node.x]",
	), []want{{2, "node", "wrong type: got a table ([node.x]), want a string"}}},
	{"array of tables with the wrong case", doc(
		"version = 1",
		"[[poller.Device]]",
		"name = 'm1'",
	), []want{{2, "poller.Device", "keys are case-sensitive (did you mean poller.device?)"}}},
	{"number too large, and other problems", doc(
		"version = 1",
		"[broker]",
		"max_pending = 99999999999999999999",
		"max_inflight = 0",
		"sys_interval = 1979-05-27",
	), []want{
		{3, "broker.max_pending", "too large to fit in a 64-bit signed integer"},
		{4, "broker.max_inflight", "out of range"},
		{5, "broker.sys_interval", "wrong type: got a TOML local date, want a duration string"},
	}},
	{"several problems, all reported in line order", doc(
		"version = 1",
		"topic_prefix = 'a/#'",
		"[bus]",
		"heartbeat_interval = '5x'",
		"keep_alive = 30",
		"bogus = 1",
		"[broker]",
		"max_pending = 'many'",
		"listen = ['127.0.0.1:99999']",
	), []want{
		{2, "topic_prefix", "wildcard"},
		{4, "bus.heartbeat_interval", "bad duration"},
		{5, "bus.keep_alive", "bad duration"},
		{6, "bus.bogus", "unknown key"},
		{8, "broker.max_pending", "wrong type"},
		{9, "broker.listen[0]", "bad address"},
	}},

	// Validation of values.
	{"topic prefix with wildcard", doc("version = 1", "topic_prefix = 'a/+/b'"),
		[]want{{2, "topic_prefix", "wildcard"}}},
	{"topic prefix with empty level", doc("version = 1", "topic_prefix = 'a//b'"),
		[]want{{2, "topic_prefix", "empty topic level"}}},
	{"topic prefix with leading slash", doc("version = 1", "topic_prefix = '/a'"),
		[]want{{2, "topic_prefix", "empty topic level"}}},
	{"topic prefix with trailing slash", doc("version = 1", "topic_prefix = 'a/'"),
		[]want{{2, "topic_prefix", "empty topic level"}}},
	{"topic prefix with dollar", doc("version = 1", "topic_prefix = '$SYS'"),
		[]want{{2, "topic_prefix", "reserved"}}},
	{"empty topic prefix", doc("version = 1", "topic_prefix = ''"),
		[]want{{2, "topic_prefix", "must not be empty"}}},
	{"node with slash", doc("version = 1", "node = 'gw/1'"),
		[]want{{2, "node", "single topic level"}}},
	{"node with wildcard", doc("version = 1", "node = 'gw#'"),
		[]want{{2, "node", "wildcard"}}},
	{"empty state dir", doc("version = 1", "state_dir = ''"),
		[]want{{2, "state_dir", "must not be empty"}}},
	{"bad log level", doc("version = 1", "[log]", "level = 'verbose'"),
		[]want{{3, "log.level", `"verbose" is not one of debug, info, warn, error`}}},
	{"bus address without port", doc("version = 1", "[bus]", "address = 'localhost'"),
		[]want{{3, "bus.address", "missing port"}}},
	{"bus address without host", doc("version = 1", "[bus]", "address = ':1883'"),
		[]want{{3, "bus.address", "no host"}}},
	{"bus address with relative unix path", doc("version = 1", "[bus]", "address = 'unix:run/bus.sock'"),
		[]want{{3, "bus.address", "not an absolute path"}}},
	{"bus address with too long unix path", doc("version = 1", "[bus]", "address = 'unix:/"+strings.Repeat("x", 120)+"'"),
		[]want{{3, "bus.address", "at most 107"}}},
	{"heartbeat too fast", doc("version = 1", "[bus]", "heartbeat_interval = '50ms'"),
		[]want{{3, "bus.heartbeat_interval", "too short (want at least 100ms)"}}},
	{"keep alive too short", doc("version = 1", "[bus]", "keep_alive = '500ms'"),
		[]want{{3, "bus.keep_alive", "too short (want at least 1s)"}}},
	{"keep alive too long", doc("version = 1", "[bus]", "keep_alive = '24h'"),
		[]want{{3, "bus.keep_alive", "too long"}}},
	{"zero retry max", doc("version = 1", "[bus]", "retry_max = '0s'"),
		[]want{{3, "bus.retry_max", "must be more than 0s"}}},
	{"no listener", doc("version = 1", "[broker]", "listen = []"),
		[]want{{3, "broker.listen", "no listener"}}},
	{"relative unix socket", doc("version = 1", "[broker]", "unix_socket = 'bus.sock'"),
		[]want{{3, "broker.unix_socket", "not an absolute path"}}},
	{"tls cert without key", doc("version = 1", "[broker]", "tls_cert = '/etc/tinyscada/cert.pem'"),
		[]want{{2, "broker.tls_key", "must be set when tls_cert is"}}},
	{"tls key without cert", doc("version = 1", "[broker]", "tls_key = '/etc/tinyscada/key.pem'"),
		[]want{{2, "broker.tls_cert", "must be set when tls_key is"}}},
	{"sys interval under a second", doc("version = 1", "[broker]", "sys_interval = '500ms'"),
		[]want{{3, "broker.sys_interval", "too short (want at least 1s)"}}},
	{"client buffer too small", doc("version = 1", "[broker]", "client_buffer = 512"),
		[]want{{3, "broker.client_buffer", "512 is out of range (want 1KiB to 1MiB)"}}},
	{"client buffer too big", doc("version = 1", "[broker]", "client_buffer = '2MiB'"),
		[]want{{3, "broker.client_buffer", "2MiB is out of range"}}},
	{"zero max pending", doc("version = 1", "[broker]", "max_pending = 0"),
		[]want{{3, "broker.max_pending", "0 is out of range (want 1 to 65535)"}}},
	{"max inflight too big", doc("version = 1", "[broker]", "max_inflight = 70000"),
		[]want{{3, "broker.max_inflight", "out of range"}}},
	{"max packet size too big", doc("version = 1", "[broker]", "max_packet_size = '2MiB'"),
		[]want{{3, "broker.max_packet_size", "2MiB is out of range (want 4KiB to 1MiB)"}}},
	{"max packet size too small", doc("version = 1", "[broker]", "max_packet_size = 1000"),
		[]want{{3, "broker.max_packet_size", "1000 is out of range"}}},
	{"unknown and duplicate roles", doc("version = 1", "[run]", "roles = ['broker', 'poler', 'broker']"),
		[]want{{3, "run.roles[1]", `unknown role "poler"`}, {3, "run.roles[2]", `role "broker" is listed twice`}}},
	{"no roles", doc("version = 1", "[run]", "roles = []"),
		[]want{{3, "run.roles", "no role to run"}}},
	{"zero ready timeout", doc("version = 1", "[run]", "ready_timeout = '0s'"),
		[]want{{3, "run.ready_timeout", "must be more than 0s"}}},
	{"zero restart backoff", doc("version = 1", "[run]", "restart_backoff = '0s'"),
		[]want{{3, "run.restart_backoff", "must be more than 0s"}}},
	{"restart backoff max below backoff", doc("version = 1", "[run]", "restart_backoff = '1m'", "restart_backoff_max = '10s'"),
		[]want{{4, "run.restart_backoff_max", "restart_backoff_max 10s is less than restart_backoff 1m0s"}}},
	{"restart backoff above default max", doc("version = 1", "[run]", "restart_backoff = '1m'"),
		[]want{{3, "run.restart_backoff", "less than restart_backoff"}}},
}

func TestParseBad(t *testing.T) {
	for _, tc := range badCases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("/etc/tinyscada/tinyscada.toml", []byte(tc.doc))
			if err == nil {
				t.Fatalf("no error; parsed %+v", c)
			}
			if c != nil {
				t.Errorf("a config with the error: %+v", c)
			}
			var first *Error
			if !errors.As(err, &first) {
				t.Fatalf("error %v (%T) is no *config.Error", err, err)
			}
			got := Errors(err)
			if len(got) != len(tc.want) {
				t.Fatalf("got %d errors, want %d:\n%v", len(got), len(tc.want), err)
			}
			for i, w := range tc.want {
				g := got[i]
				if g.File != "/etc/tinyscada/tinyscada.toml" || g.Line != w.line || g.Key != w.key || !strings.Contains(g.Msg, w.msg) {
					t.Errorf("error %d = %q\nwant line %d, key %q, message with %q", i, g, w.line, w.key, w.msg)
				}
			}
		})
	}
}

func TestErrorFormat(t *testing.T) {
	_, err := Parse("/etc/tinyscada/tinyscada.toml", []byte(doc(
		"version = 1", "", "[bus]", "# how often", "", "", "", "", "", "",
		"", "heartbeat_interval = \"5x\"")))
	const want = `/etc/tinyscada/tinyscada.toml:12: bus.heartbeat_interval: bad duration "5x" (want e.g. "500ms", "5s", "1m")`
	if err == nil || err.Error() != want {
		t.Errorf("got  %v\nwant %s", err, want)
	}
	for _, tc := range []struct {
		e    Error
		want string
	}{
		{Error{File: "a.toml", Line: 3, Key: "k", Msg: "bad"}, "a.toml:3: k: bad"},
		{Error{File: "a.toml", Line: 3, Msg: "syntax error: x"}, "a.toml:3: syntax error: x"},
		{Error{File: "a.toml", Key: "node", Msg: "bad"}, "a.toml: node: bad"},
		{Error{Key: "node", Msg: "bad"}, "(defaults): node: bad"},
	} {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("%+v formats as %q, want %q", tc.e, got, tc.want)
		}
	}
}

// filled returns Default() as Parse completes it: node from the host name,
// state_dir absolute.
func filled(t *testing.T) *Config {
	t.Helper()
	c := Default()
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	c.Node = host
	if c.StateDir, err = filepath.Abs(c.StateDir); err != nil {
		t.Fatal(err)
	}
	return c
}

// documented are the sections that this file's tests and
// docs/configuration.md cover key by key ("" for the top-level keys).
// Sections added later are checked by their own tests; add them here once
// the docs describe them.
var documented = map[string]bool{"": true, "log": true, "bus": true, "broker": true, "run": true}

// own returns the documented sections of c.
func own(c *Config) Config {
	return Config{Version: c.Version, Node: c.Node, StateDir: c.StateDir, TopicPrefix: c.TopicPrefix,
		Log: c.Log, Bus: c.Bus, Broker: c.Broker, Run: c.Run}
}

// documentedKeys returns the paths of the keys of the documented sections.
func documentedKeys(t *testing.T, c *Config) []string {
	t.Helper()
	enc, err := c.Encode()
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, e := range newIndex(enc).entries {
		section, _, found := strings.Cut(e.path, ".")
		if !found {
			section = ""
		}
		if e.kind == unstable.KeyValue && documented[section] {
			keys = append(keys, e.path)
		}
	}
	return keys
}

// demo returns the configuration of Load(""), failing t on an error.
func demo(t *testing.T) *Config {
	t.Helper()
	c, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestParseVersionOnlyIsDefault(t *testing.T) {
	for _, d := range []string{"version = 1", "version = 1\n", "# tinyscada\r\nversion = 1 # the format\r\n\r\n", "\uFEFFversion = 1\n"} {
		c, err := Parse("v.toml", []byte(d))
		if err != nil {
			t.Fatalf("%q: %v", d, err)
		}
		if want := demo(t); !reflect.DeepEqual(c, want) {
			t.Errorf("%q gives\n%+v\nwant the demo\n%+v", d, c, want)
		}
		if got, want := own(c), own(filled(t)); !reflect.DeepEqual(got, want) {
			t.Errorf("%q gives\n%+v\nwant\n%+v", d, got, want)
		}
		if !filepath.IsAbs(c.StateDir) || c.Node == "" {
			t.Errorf("state_dir %q, node %q: not filled in", c.StateDir, c.Node)
		}
	}
}

// fullExample sets every key to a value that is not its default.
const fullExample = `# A gateway in cabinet 4.
version = 1
node = "cabinet-4"
state_dir = "/var/lib/tinyscada"
topic_prefix = "plant/north"

[log]
level = "debug"

[bus]
address = "unix:/run/tinyscada/bus.sock"
heartbeat_interval = "2s"
keep_alive = "1m"
retry_max = "10s"

[broker]
listen = ["127.0.0.1:1884", "[::1]:1884", "gw4.plant.example:8883", ":1885"]
unix_socket = "/run/tinyscada/bus.sock"
tls_cert = "/etc/tinyscada/cert.pem"
tls_key = "/etc/tinyscada/key.pem"
sys_interval = "0s"
client_buffer = "64KiB"
max_pending = 4096
max_inflight = 512
max_packet_size = "64KiB"

[run]
roles = ["broker", "poller", "logger"]
ready_timeout = "1m30s"
restart_backoff = "1s"
restart_backoff_max = "2m"
`

func fullExampleConfig() *Config {
	return &Config{
		Version:     1,
		Node:        "cabinet-4",
		StateDir:    "/var/lib/tinyscada",
		TopicPrefix: "plant/north",
		Log:         Log{Level: "debug"},
		Bus: Bus{
			Address:           "unix:/run/tinyscada/bus.sock",
			HeartbeatInterval: Duration{2 * time.Second},
			KeepAlive:         Duration{time.Minute},
			RetryMax:          Duration{10 * time.Second},
		},
		Broker: Broker{
			Listen:        []string{"127.0.0.1:1884", "[::1]:1884", "gw4.plant.example:8883", ":1885"},
			UnixSocket:    "/run/tinyscada/bus.sock",
			TLSCert:       "/etc/tinyscada/cert.pem",
			TLSKey:        "/etc/tinyscada/key.pem",
			SysInterval:   Duration{0},
			ClientBuffer:  64 << 10,
			MaxPending:    4096,
			MaxInflight:   512,
			MaxPacketSize: 64 << 10,
		},
		Run: Run{
			Roles:             []string{"broker", "poller", "logger"},
			ReadyTimeout:      Duration{90 * time.Second},
			RestartBackoff:    Duration{time.Second},
			RestartBackoffMax: Duration{2 * time.Minute},
		},
	}
}

func TestParseFullExample(t *testing.T) {
	c, err := Parse("full.toml", []byte(fullExample))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := own(c), own(fullExampleConfig()); !reflect.DeepEqual(got, want) {
		t.Errorf("got\n%+v\nwant\n%+v", got, want)
	}
}

// fullExample must set every documented key, or the test above proves less
// than it claims.
func TestFullExampleSetsEveryKey(t *testing.T) {
	ix := newIndex([]byte(fullExample))
	for _, k := range documentedKeys(t, demo(t)) {
		if !ix.has(k) {
			t.Errorf("fullExample does not set %s", k)
		}
	}
}

func TestEncodeRoundTrip(t *testing.T) {
	full, err := Parse("full.toml", []byte(fullExample))
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]*Config{"demo": demo(t), "full": full} {
		t.Run(name, func(t *testing.T) {
			enc, err := c.Encode()
			if err != nil {
				t.Fatal(err)
			}
			back, err := Parse("encoded.toml", enc)
			if err != nil {
				t.Fatalf("%v\n%s", err, enc)
			}
			if !reflect.DeepEqual(back, c) {
				t.Errorf("round trip gives\n%+v\nwant\n%+v\nfrom\n%s", back, c, enc)
			}
			again, err := back.Encode()
			if err != nil || string(again) != string(enc) {
				t.Errorf("encoding again differs (%v):\n%s\nthen\n%s", err, enc, again)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)

	c, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "tinyscada-state"); c.StateDir != want {
		t.Errorf("demo state_dir = %q, want %q (in the current directory)", c.StateDir, want)
	}
	if got, want := own(c), own(filled(t)); !reflect.DeepEqual(got, want) {
		t.Errorf("Load(\"\") = %+v, want %+v", got, want)
	}

	// state_dir is relative to the current directory, not to the file.
	if err := os.Mkdir("etc", 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("etc", "tinyscada.toml")
	if err := os.WriteFile(path, []byte("version = 1\nstate_dir = 'state'\nnode = 'gw'\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err = Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "state"); c.StateDir != want || c.Node != "gw" {
		t.Errorf("state_dir %q, node %q; want %q, gw", c.StateDir, c.Node, want)
	}

	// Errors name the path as given.
	if err := os.WriteFile(path, []byte("version = 1\nnode = 3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path); err == nil || !strings.HasPrefix(err.Error(), path+":2: node: ") {
		t.Errorf("Load of a bad file: %v", err)
	}

	_, err = Load(filepath.Join(dir, "missing.toml"))
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "missing.toml") {
		t.Errorf("Load of a missing file: %v", err)
	}
}

func TestResolve(t *testing.T) {
	dir := t.TempDir()
	exists := filepath.Join(dir, "tinyscada.toml")
	if err := os.WriteFile(exists, []byte("version = 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "none.toml")
	for _, tc := range []struct {
		flag, env, def, want string
	}{
		{"a.toml", "b.toml", exists, "a.toml"},
		{"", "b.toml", exists, "b.toml"},
		{"", "", exists, exists},
		{"", "", missing, ""},
		{"a.toml", "", missing, "a.toml"},
	} {
		if got := resolve(tc.flag, tc.env, tc.def); got != tc.want {
			t.Errorf("resolve(%q, %q, %q) = %q, want %q", tc.flag, tc.env, tc.def, got, tc.want)
		}
	}
	t.Setenv(EnvVar, "/from/env.toml")
	if got := Resolve(""); got != "/from/env.toml" {
		t.Errorf("Resolve with $%s set = %q", EnvVar, got)
	}
	if got := Resolve("/from/flag.toml"); got != "/from/flag.toml" {
		t.Errorf("Resolve with a flag = %q", got)
	}
}

// The sample file shipped in deploy/ sets every key to its default.
func TestDeploySample(t *testing.T) {
	const path = "../../deploy/tinyscada.toml"
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := demo(t); !reflect.DeepEqual(c, want) {
		t.Errorf("%s gives\n%+v\nthe defaults are\n%+v", path, c, want)
	}
	ix := newIndex(mustRead(t, path))
	for _, k := range documentedKeys(t, c) {
		if !ix.has(k) {
			t.Errorf("%s does not set %s", path, k)
		}
	}
}

// docs/configuration.md names every key, and its complete example parses.
func TestDocs(t *testing.T) {
	b, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	for _, k := range documentedKeys(t, demo(t)) {
		if !strings.Contains(text, "`"+k+"`") {
			t.Errorf("docs/configuration.md does not document `%s`", k)
		}
	}
	_, example, ok := strings.Cut(text, "```toml\n")
	example, _, ok2 := strings.Cut(example, "```")
	if !ok || !ok2 {
		t.Fatal("docs/configuration.md has no ```toml example")
	}
	if _, err := Parse("docs/configuration.md example", []byte(example)); err != nil {
		t.Error(err)
	}
}

func TestIndexPaths(t *testing.T) {
	ix := newIndex([]byte(doc(
		"version = 1", // 1
		"[poller]",    // 2
		"[[poller.device]]",
		"port = 1",
		"[[poller.device]]", // 5
		"port = 2",
		"[[poller.device.point]]",
		"name = 'a'",
		"[[poller.device]]",
		"port = 3", // 10
		"[[poller.device.point]]",
		"name = 'b'",
		"[[poller.device.point]]",
		"name = 'c'",
		"[poller.device.extra]", // 15
		"x.y = 1",
		"list = [{ a = 1 }, { a = [2,", "3] }]",
		`"quoted.key" = 1`,
	)))
	if ix.err != nil {
		t.Fatal(ix.err)
	}
	for path, line := range map[string]int{
		"version":                             1,
		"poller":                              2,
		"poller.device[0]":                    3,
		"poller.device[0].port":               4,
		"poller.device[1].port":               6,
		"poller.device[1].point[0]":           7,
		"poller.device[2].port":               10,
		"poller.device[2].point[0]":           11,
		"poller.device[2].point[1]":           13,
		"poller.device[2].point[1].name":      14,
		"poller.device[2].extra":              15,
		"poller.device[2].extra.x.y":          16,
		"poller.device[2].extra.list[1].a[1]": 18,
		`poller.device[2].extra."quoted.key"`: 19,
		"poller.device[2].missing":            9,
		"nothing":                             0,
	} {
		if got := ix.lineOf(path); got != line {
			t.Errorf("lineOf(%s) = %d, want %d", path, got, line)
		}
	}
	if got := parentKey(`a."b.c"`); got != "a" {
		t.Errorf(`parentKey(a."b.c") = %q`, got)
	}
}

func TestUnits(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Size
		out  string
	}{
		{"4096", 4096, "4KiB"}, {"4KiB", 4096, "4KiB"}, {"64MiB", 64 << 20, "64MiB"},
		{"1GB", 1e9, "1000000000"}, {"2 kB", 2000, "2000"}, {"1500", 1500, "1500"},
		{"0", 0, "0"}, {"3GiB", 3 << 30, "3GiB"},
	} {
		var s Size
		if err := s.UnmarshalText([]byte(tc.in)); err != nil || s != tc.want {
			t.Errorf("Size(%q) = %d, %v; want %d", tc.in, s, err, tc.want)
		}
		if b, _ := s.MarshalText(); string(b) != tc.out {
			t.Errorf("Size(%d) marshals as %q, want %q", s, b, tc.out)
		}
	}
	for _, in := range []string{"", "KiB", "-1", "1.5KiB", "4XB", "99999999999GiB", "1 2"} {
		var s Size
		if err := s.UnmarshalText([]byte(in)); err == nil {
			t.Errorf("Size(%q) = %d, want an error", in, s)
		}
	}
	for _, tc := range []struct {
		in   string
		want time.Duration
	}{{"500ms", 500 * time.Millisecond}, {"1m30s", 90 * time.Second}, {"0", 0}} {
		var d Duration
		if err := d.UnmarshalText([]byte(tc.in)); err != nil || d.Duration != tc.want {
			t.Errorf("Duration(%q) = %v, %v; want %v", tc.in, d, err, tc.want)
		}
		var back Duration
		b, _ := d.MarshalText()
		if err := back.UnmarshalText(b); err != nil || back != d {
			t.Errorf("Duration %v marshals as %q, which gives %v, %v", d, b, back, err)
		}
	}
	for _, in := range []string{"", "5", "5x", "-1s", "1.5"} {
		var d Duration
		if err := d.UnmarshalText([]byte(in)); err == nil {
			t.Errorf("Duration(%q) = %v, want an error", in, d)
		}
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A role keeps its configuration as long as it runs: no slice of it may
// keep the spare room the decoder grew it with (a field configuration of
// 50 devices × 20 points kept 123 KB of it in every process:
// BenchmarkParseRetained).
func TestParseSlicesHaveNoSpareRoom(t *testing.T) {
	var b strings.Builder
	b.WriteString("version = 1\n[[poller.port]]\nname = \"a\"\ndevice = \"/dev/ttyS0\"\n")
	for d := range 5 {
		fmt.Fprintf(&b, "[[poller.device]]\nname = \"d%d\"\nport = \"a\"\nunit = %d\n", d, d+1)
		for p := range 5 + d {
			fmt.Fprintf(&b, "[[poller.device.point]]\nname = \"p%d\"\ntable = \"holding\"\naddress = %d\n", p, p)
		}
	}
	c, err := Parse("many.toml", []byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	full, err := Parse("full.toml", []byte(fullExample))
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]*Config{"many": c, "full": full} {
		var walk func(path string, v reflect.Value)
		walk = func(path string, v reflect.Value) {
			switch v.Kind() {
			case reflect.Pointer:
				if !v.IsNil() {
					walk(path, v.Elem())
				}
			case reflect.Struct:
				for i := 0; i < v.NumField(); i++ {
					if v.Type().Field(i).IsExported() {
						walk(path+"."+v.Type().Field(i).Name, v.Field(i))
					}
				}
			case reflect.Slice:
				if v.Cap() != v.Len() {
					t.Errorf("%s: %s has length %d, capacity %d", name, path, v.Len(), v.Cap())
				}
				for i := 0; i < v.Len(); i++ {
					walk(fmt.Sprintf("%s[%d]", path, i), v.Index(i))
				}
			}
		}
		walk("Config", reflect.ValueOf(c))
	}
}
