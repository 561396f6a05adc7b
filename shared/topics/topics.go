// Package topics names every MQTT topic of tinyscada, so that no role spells
// a topic by hand. docs/topics.md is the reference for their payloads.
package topics

import "strings"

// Roles are the built-in service names, in start order.
var Roles = []string{"broker", "poller", "logger", "uplink", "health"}

// Tree builds topics under one prefix (the configured topic_prefix).
type Tree struct{ Prefix string }

func (t Tree) join(parts ...string) string {
	return t.Prefix + "/" + strings.Join(parts, "/")
}

// SvcState is the retained state topic of a service.
func (t Tree) SvcState(svc string) string { return t.join("svc", svc, "state") }

// SvcHeartbeat is the heartbeat topic of a service.
func (t Tree) SvcHeartbeat(svc string) string { return t.join("svc", svc, "heartbeat") }

// Svc is the subtree that only service svc may publish under.
func (t Tree) Svc(svc string) string { return t.join("svc", svc, "#") }

// Data is where a device's poll rounds are published (QoS 1, the acknowledged path).
func (t Tree) Data(device string) string { return t.join("data", device) }

// Value is the retained last value of one point.
func (t Tree) Value(device, point string) string { return t.join("value", device, point) }

// DeviceState is the retained online/offline state of a device.
func (t Tree) DeviceState(device string) string { return t.join("device", device, "state") }

// Ack is where the logger acknowledges a producer's committed readings.
func (t Tree) Ack(producer string) string { return t.join("ack", producer) }

// Health is the retained aggregate health of the gateway.
func (t Tree) Health() string { return t.join("health") }

// Cmd is a command topic (restart, config, ...); only health, the uplink and
// the operator may publish here.
func (t Tree) Cmd(parts ...string) string { return t.join(append([]string{"cmd"}, parts...)...) }

// Sub returns a subscription filter for a subtree, e.g. Sub("data") = "<prefix>/data/#".
func (t Tree) Sub(parts ...string) string { return t.join(append(parts, "#")...) }

// Committed is where the logger announces, after each commit, the last row
// id of its database (the uplink's wake-up).
func (t Tree) Committed() string { return t.join("logger", "committed") }

// UplinkCursor is the retained topic where the uplink publishes the last row
// id it has delivered upstream; the logger deletes those rows first.
func (t Tree) UplinkCursor() string { return t.join("uplink", "cursor") }

// Match reports whether topic matches filter under MQTT's rules: "+" is one
// level, "#" at the end is any number of levels (none included: "a/#"
// matches "a"), and a topic starting with "$" is not matched by a filter
// starting with a wildcard [MQTT-4.7.2-1]. It runs for every message a
// subscriber or the broker's access check sees, so it does not allocate.
func Match(filter, topic string) bool {
	if topic != "" && topic[0] == '$' && filter != "" && (filter[0] == '+' || filter[0] == '#') {
		return false
	}
	for {
		f, frest, fmore := strings.Cut(filter, "/")
		if f == "#" && !fmore {
			return true
		}
		t, trest, tmore := strings.Cut(topic, "/")
		if f != "+" && f != t {
			return false
		}
		switch {
		case !fmore:
			return !tmore
		case !tmore:
			return frest == "#"
		}
		filter, topic = frest, trest
	}
}
