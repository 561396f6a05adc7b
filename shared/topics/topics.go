// Package topics names every MQTT topic of tinyscada, and the built-in roles
// that publish them, so that no role spells a topic or a role by hand.
// docs/topics.md is the reference for their payloads.
package topics

import (
	"slices"
	"strings"
)

// Role is the name of a built-in service: its MQTT user and credential, its
// client id tinyscada-<role>, its topics svc/<role>/…, its `tinyscada <role>`
// command and its unit tinyscada-<role>.service.
type Role string

// The built-in roles, in start order (see roles).
const (
	Broker Role = "broker"
	Logger Role = "logger"
	Poller Role = "poller"
	Uplink Role = "uplink"
	Health Role = "health"
)

// roles is the one list of the built-in roles, in start order: the broker
// first (everyone talks through it), the logger before the poller (the
// consumer of the data before its producer), health last (it watches the
// others). Stopping goes in reverse: the producer stops first, so that the
// logger is still there to commit and acknowledge its last messages.
// core marks the roles the gateway cannot do without: health expects them
// by default (health.expect).
var roles = []struct {
	role Role
	core bool
}{
	{Broker, true},
	{Logger, true},
	{Poller, true},
	{Uplink, false},
	{Health, false},
}

// Roles returns the built-in roles in start order.
func Roles() []Role {
	rs := make([]Role, len(roles))
	for i, r := range roles {
		rs[i] = r.role
	}
	return rs
}

// Names returns the names of rs, e.g. Names(Roles()) for a list of strings.
func Names(rs []Role) []string {
	ns := make([]string, len(rs))
	for i, r := range rs {
		ns[i] = string(r)
	}
	return ns
}

// Core returns the roles health expects by default, in start order.
func Core() []Role {
	var rs []Role
	for _, r := range roles {
		if r.core {
			rs = append(rs, r.role)
		}
	}
	return rs
}

// IsRole reports whether name is a built-in role.
func IsRole(name string) bool { return slices.Contains(Roles(), Role(name)) }

// Tree builds topics under one prefix (the configured topic_prefix, which
// holds no wildcard and no empty level). Each builder may be given "+" for
// a level to make a subscription filter, e.g. SvcState("+").
type Tree struct{ Prefix string }

func (t Tree) join(parts ...string) string {
	return t.Prefix + "/" + strings.Join(parts, "/")
}

// The first levels under the prefix that are not a role's own (see Own).
const (
	svcLevel    = "svc"
	dataLevel   = "data"
	valueLevel  = "value"
	deviceLevel = "device"
	ackLevel    = "ack"
	cmdLevel    = "cmd"
)

// SvcState is the retained state topic of a service.
func (t Tree) SvcState(svc string) string { return t.join(svcLevel, svc, "state") }

// SvcHeartbeat is the heartbeat topic of a service.
func (t Tree) SvcHeartbeat(svc string) string { return t.join(svcLevel, svc, "heartbeat") }

// Svc is the subtree of service svc: its state, its heartbeats, and
// whatever else it publishes about itself. The broker lets only svc publish
// there.
func (t Tree) Svc(svc string) string { return t.Sub(svcLevel, svc) }

// Data is where a device's poll rounds are published (QoS 1, the acknowledged path).
func (t Tree) Data(device string) string { return t.join(dataLevel, device) }

// AllData is the subtree of every device's Data.
func (t Tree) AllData() string { return t.Sub(dataLevel) }

// Value is the retained last value of one point.
func (t Tree) Value(device, point string) string { return t.join(valueLevel, device, point) }

// AllValues is the subtree of every point's Value.
func (t Tree) AllValues() string { return t.Sub(valueLevel) }

// DeviceState is the retained online/offline state of a device.
func (t Tree) DeviceState(device string) string { return t.join(deviceLevel, device, "state") }

// AllDevices is the subtree of every device's DeviceState.
func (t Tree) AllDevices() string { return t.Sub(deviceLevel) }

// Ack is where the logger acknowledges a producer's committed readings.
func (t Tree) Ack(producer string) string { return t.join(ackLevel, producer) }

// AllAcks is the subtree of every producer's Ack.
func (t Tree) AllAcks() string { return t.Sub(ackLevel) }

// Cmd is a command topic (restart, config, ...); only health, the uplink and
// the operator may publish here.
func (t Tree) Cmd(parts ...string) string { return t.join(append([]string{cmdLevel}, parts...)...) }

// Restart is the command to restart service svc (health carries it out).
func (t Tree) Restart(svc string) string { return t.Cmd("restart", svc) }

// AllCmds is the subtree of every Cmd.
func (t Tree) AllCmds() string { return t.Sub(cmdLevel) }

// Own is the subtree named after role r, where r publishes what it offers
// the others: the logger's Committed, the uplink's UplinkCursor, health's
// Health, HealthEvent and HealthEcho.
func (t Tree) Own(r Role) string { return t.Sub(string(r)) }

// Health is the retained aggregate health of the gateway.
func (t Tree) Health() string { return t.join(string(Health)) }

// HealthEvent is where health announces what it did or saw (a restart, a
// withheld watchdog ping, the broker lost or back).
func (t Tree) HealthEvent() string { return t.join(string(Health), "event") }

// HealthEcho is health's round-trip probe through the broker.
func (t Tree) HealthEcho() string { return t.join(string(Health), "echo") }

// Committed is where the logger announces, after each commit, the last row
// id of its database (the uplink's wake-up).
func (t Tree) Committed() string { return t.join(string(Logger), "committed") }

// UplinkCursor is the retained topic where the uplink publishes the last row
// id it has delivered upstream; the logger deletes those rows first.
func (t Tree) UplinkCursor() string { return t.join(string(Uplink), "cursor") }

// UplinkState is the retained topic where the uplink publishes its
// upstream connection and its backlog (rows not yet delivered, the age of
// the oldest).
func (t Tree) UplinkState() string { return t.join(string(Uplink), "state") }

// Sub returns a subscription filter for a subtree, e.g. Sub("data") = "<prefix>/data/#".
func (t Tree) Sub(parts ...string) string { return t.join(append(parts, "#")...) }

// ParseSvcState returns the service whose SvcState topic is topic; ok is
// false for any other topic.
func (t Tree) ParseSvcState(topic string) (svc string, ok bool) {
	return level(topic, t.SvcState("+"))
}

// ParseSvcHeartbeat returns the service whose SvcHeartbeat topic is topic;
// ok is false for any other topic.
func (t Tree) ParseSvcHeartbeat(topic string) (svc string, ok bool) {
	return level(topic, t.SvcHeartbeat("+"))
}

// ParseRestart returns the service whose Restart topic is topic; ok is false
// for any other topic.
func (t Tree) ParseRestart(topic string) (svc string, ok bool) {
	return level(topic, t.Restart("+"))
}

// level returns the level of topic that stands where filter, a topic with
// one "+" built by a Tree, has its "+"; ok is false when topic does not
// match filter or that level is empty.
func level(topic, filter string) (string, bool) {
	before, after, _ := strings.Cut(filter, "+")
	rest, ok := strings.CutPrefix(topic, before)
	if !ok {
		return "", false
	}
	if rest, ok = strings.CutSuffix(rest, after); !ok || rest == "" || strings.Contains(rest, "/") {
		return "", false
	}
	return rest, true
}

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

// Overlap reports whether some topic matches both filters a and b (under
// Match's rules): whether a subscription to a can receive a message meant
// for b's subtree. A shared subscription ($share/<group>/<filter>) is
// taken as its filter.
func Overlap(a, b string) bool {
	a, b = unshare(a), unshare(b)
	if dollar(a) && isWild(b) || dollar(b) && isWild(a) {
		return false // a wildcard first level never matches a $-topic
	}
	for {
		x, xrest, xmore := strings.Cut(a, "/")
		y, yrest, ymore := strings.Cut(b, "/")
		if (x == "#" && !xmore) || (y == "#" && !ymore) {
			return true
		}
		if x != "+" && y != "+" && x != y {
			return false
		}
		switch {
		case !xmore && !ymore:
			return true
		case !xmore:
			return yrest == "#"
		case !ymore:
			return xrest == "#"
		}
		a, b = xrest, yrest
	}
}

func isWild(f string) bool { return f != "" && (f[0] == '+' || f[0] == '#') }

func dollar(f string) bool { return f != "" && f[0] == '$' }

func unshare(f string) string {
	if rest, ok := strings.CutPrefix(f, "$share/"); ok {
		if _, filter, ok := strings.Cut(rest, "/"); ok {
			return filter
		}
	}
	return f
}
