package config

import (
	"strings"
	"testing"
)

// health.stale_after must be longer than bus.heartbeat_interval; the error
// names the key the file sets (either may be the one that moved).
func TestStaleAfterAboveHeartbeat(t *testing.T) {
	for _, tc := range []struct {
		name, doc, key string
		line           int
	}{
		{"heartbeat raised", doc("version = 1", "[bus]", "heartbeat_interval = '20s'"), "bus.heartbeat_interval", 3},
		{"stale_after lowered", doc("version = 1", "[health]", "stale_after = '4s'", "stall_after = '10s'"), "health.stale_after", 3},
		{"both set", doc("version = 1", "[bus]", "heartbeat_interval = '6s'", "[health]", "stale_after = '6s'"), "health.stale_after", 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("a.toml", []byte(tc.doc))
			errs := Errors(err)
			if len(errs) != 1 || errs[0].Key != tc.key || errs[0].Line != tc.line || !strings.Contains(errs[0].Msg, "every service would look stale") {
				t.Errorf("errors %v, want one at line %d naming %s", err, tc.line, tc.key)
			}
		})
	}
}

// poller.ack_timeout must be longer than logger.batch_delay (the commit
// interval); the error names the key the file sets.
func TestAckTimeoutAboveBatchDelay(t *testing.T) {
	for _, tc := range []struct {
		name, doc, key string
		line           int
	}{
		{"batch_delay raised", doc("version = 1", "[logger]", "batch_delay = '40s'"), "logger.batch_delay", 3},
		{"ack_timeout lowered", doc("version = 1", "[poller]", "ack_timeout = '2s'"), "poller.ack_timeout", 3},
		{"both set", doc("version = 1", "[logger]", "batch_delay = '30s'", "[poller]", "ack_timeout = '30s'"), "poller.ack_timeout", 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("a.toml", []byte(tc.doc))
			errs := Errors(err)
			if len(errs) != 1 || errs[0].Key != tc.key || errs[0].Line != tc.line || !strings.Contains(errs[0].Msg, "before it is committed") {
				t.Errorf("errors %v, want one at line %d naming %s", err, tc.line, tc.key)
			}
		})
	}
	if _, err := Parse("a.toml", []byte(doc("version = 1", "[logger]", "batch_delay = '39s'"))); err != nil {
		t.Errorf("batch_delay 39s under the default ack_timeout: %v", err)
	}
}
