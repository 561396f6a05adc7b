package topics

import (
	"strings"
	"testing"
)

func TestMatch(t *testing.T) {
	for _, tc := range []struct {
		filter, topic string
		want          bool
	}{
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
		{"a/b", "a/b/c", false},
		{"a/b/c", "a/b", false},
		{"a/+", "a/b", true},
		{"a/+", "a/", true},
		{"a/+", "a", false},
		{"a/+", "a/b/c", false},
		{"+/b", "a/b", true},
		{"+", "a", true},
		{"+", "/a", false},
		{"+/+", "/a", true},
		{"a/#", "a", true},
		{"a/#", "a/b/c", true},
		{"a/#", "ab", false},
		{"#", "a/b", true},
		{"#", "/", true},
		{"a/+/c/#", "a/b/c", true},
		{"a/+/c/#", "a/b/d/e", false},
		{"#", "$SYS/broker/uptime", false},
		{"+/broker/uptime", "$SYS/broker/uptime", false},
		{"$SYS/#", "$SYS/broker/uptime", true},
		{"$SYS/+/uptime", "$SYS/broker/uptime", true},
		{"tinyscada/svc/+/state", "tinyscada/svc/poller/state", true},
		{"tinyscada/data/#", "tinyscada/data/meter", true},
		{"a/#", "b/a", false},
		{"a", "a", true},
		{"a", "a/b", false},
		{"a/b", "a", false},
		{"a/+/c", "a/b/c", true},
		{"a/+/c", "a/b/d", false},
		{"a/+", "a/", true},
		{"#", "anything/at/all", true},
		{"a//b", "a//b", true},
	} {
		if got := Match(tc.filter, tc.topic); got != tc.want {
			t.Errorf("Match(%q, %q) = %v; want %v", tc.filter, tc.topic, got, tc.want)
		}
	}
}

// TestTreeOnTheWire pins every topic to its spelling in docs/topics.md: a
// change here changes the wire.
func TestTreeOnTheWire(t *testing.T) {
	tr := Tree{Prefix: "site/a"}
	for _, tc := range []struct{ got, want string }{
		{tr.SvcState("poller"), "site/a/svc/poller/state"},
		{tr.SvcHeartbeat("poller"), "site/a/svc/poller/heartbeat"},
		{tr.Svc("poller"), "site/a/svc/poller/#"},
		{tr.Data("meter1"), "site/a/data/meter1"},
		{tr.AllData(), "site/a/data/#"},
		{tr.Value("meter1", "voltage"), "site/a/value/meter1/voltage"},
		{tr.AllValues(), "site/a/value/#"},
		{tr.DeviceState("meter1"), "site/a/device/meter1/state"},
		{tr.AllDevices(), "site/a/device/#"},
		{tr.Ack("poller"), "site/a/ack/poller"},
		{tr.AllAcks(), "site/a/ack/#"},
		{tr.Cmd("config"), "site/a/cmd/config"},
		{tr.Restart("poller"), "site/a/cmd/restart/poller"},
		{tr.AllCmds(), "site/a/cmd/#"},
		{tr.Health(), "site/a/health"},
		{tr.HealthEvent(), "site/a/health/event"},
		{tr.HealthEcho(), "site/a/health/echo"},
		{tr.Own(Health), "site/a/health/#"},
		{tr.Committed(), "site/a/logger/committed"},
		{tr.Own(Logger), "site/a/logger/#"},
		{tr.UplinkCursor(), "site/a/uplink/cursor"},
		{tr.Own(Uplink), "site/a/uplink/#"},
		{tr.Sub("data"), "site/a/data/#"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

// TestSubtreesHoldTheirTopics checks that each subtree filter covers the
// topics built under it and no other family's.
func TestSubtreesHoldTheirTopics(t *testing.T) {
	tr := Tree{Prefix: "tinyscada"}
	family := map[string][]string{
		tr.Svc("poller"): {tr.SvcState("poller"), tr.SvcHeartbeat("poller")},
		tr.AllData():     {tr.Data("meter1")},
		tr.AllValues():   {tr.Value("meter1", "voltage")},
		tr.AllDevices():  {tr.DeviceState("meter1")},
		tr.AllAcks():     {tr.Ack("poller")},
		tr.AllCmds():     {tr.Cmd("config"), tr.Restart("poller")},
		tr.Own(Health):   {tr.Health(), tr.HealthEvent(), tr.HealthEcho()},
		tr.Own(Logger):   {tr.Committed()},
		tr.Own(Uplink):   {tr.UplinkCursor()},
	}
	for filter := range family {
		for owner, topics := range family {
			for _, topic := range topics {
				if got, want := Match(filter, topic), filter == owner; got != want {
					t.Errorf("Match(%q, %q) = %v, want %v", filter, topic, got, want)
				}
			}
		}
	}
}

func TestParse(t *testing.T) {
	tr := Tree{Prefix: "site/a"}
	parsers := []struct {
		name  string
		build func(string) string
		parse func(string) (string, bool)
	}{
		{"SvcState", tr.SvcState, tr.ParseSvcState},
		{"SvcHeartbeat", tr.SvcHeartbeat, tr.ParseSvcHeartbeat},
		{"Restart", tr.Restart, tr.ParseRestart},
	}
	for _, p := range parsers {
		// The filter with "+" matches what the builder builds, and the
		// parser gives back the service.
		for _, svc := range []string{"poller", "my-script", "x"} {
			topic := p.build(svc)
			if !Match(p.build("+"), topic) {
				t.Errorf("%s(%q) = %q does not match %s(\"+\")", p.name, svc, topic, p.name)
			}
			if got, ok := p.parse(topic); !ok || got != svc {
				t.Errorf("Parse%s(%q) = %q, %v; want %q", p.name, topic, got, ok, svc)
			}
		}
		// Nothing else parses: the other builders' topics, another prefix,
		// more or fewer levels, an empty service.
		others := []string{"site/b" + strings.TrimPrefix(p.build("poller"), "site/a"),
			"site/a" + p.build("poller"), p.build("a/b"), p.build(""), p.build("poller") + "/x", "site/a", ""}
		for _, q := range parsers {
			if q.name != p.name {
				others = append(others, q.build("poller"))
			}
		}
		for _, topic := range others {
			if got, ok := p.parse(topic); ok {
				t.Errorf("Parse%s(%q) = %q, true; want false", p.name, topic, got)
			}
		}
	}
}

func TestRoles(t *testing.T) {
	all := Roles()
	if len(all) == 0 || all[0] != Broker || all[len(all)-1] != Health {
		t.Errorf("Roles() = %v: want the broker first and health last", all)
	}
	seen := map[Role]bool{}
	for _, r := range all {
		if seen[r] {
			t.Errorf("role %q listed twice", r)
		}
		seen[r] = true
		if !IsRole(string(r)) {
			t.Errorf("IsRole(%q) = false", r)
		}
		// A role is one topic level, a user name and part of a unit name.
		if r == "" || strings.ContainsAny(string(r), "/+#$ ") {
			t.Errorf("role %q cannot be a topic level", r)
		}
	}
	for _, r := range Core() {
		if !seen[r] {
			t.Errorf("core role %q is not among Roles()", r)
		}
		if r == Health {
			t.Errorf("health is core: it would expect itself")
		}
	}
	if got, want := strings.Join(Names(Core()), " "), "broker logger poller"; got != want {
		t.Errorf("Core() = %q, want %q (health.expect's default in docs)", got, want)
	}
	for _, s := range []string{"", "operator", "Broker", "poller ", "simulate"} {
		if IsRole(s) {
			t.Errorf("IsRole(%q) = true", s)
		}
	}
	// Roles returns a copy.
	all[0] = "changed"
	if Roles()[0] != Broker {
		t.Error("Roles() shares its list with the caller")
	}
}

func TestOverlap(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"#", "tinyscada/value/+/+", true},
		{"tinyscada/#", "tinyscada/value/+/+", true},
		{"tinyscada/value/#", "tinyscada/value/+/+", true},
		{"tinyscada/value", "tinyscada/value/+/+", false},
		{"tinyscada/value/m1/volts", "tinyscada/value/+/+", true},
		{"tinyscada/value/m1", "tinyscada/value/+/+", false},
		{"tinyscada/value/m1/volts/x", "tinyscada/value/+/+", false},
		{"+/+/+/+", "tinyscada/value/+/+", true},
		{"+/value/#", "tinyscada/value/+/+", true},
		{"+/data/#", "tinyscada/value/+/+", false},
		{"tinyscada/data/#", "tinyscada/value/+/+", false},
		{"other/#", "tinyscada/value/+/+", false},
		{"$share/g/tinyscada/value/#", "tinyscada/value/+/+", true},
		{"$share/g/tinyscada/data/#", "tinyscada/value/+/+", false},
		{"$SYS/#", "tinyscada/value/+/+", false},
		{"#", "$SYS/broker", false},
		{"$SYS/#", "$SYS/broker", true},
		{"a/+", "a/#", true},
		{"a/#", "a", true},
		{"a", "a/#", true},
		{"a/b", "a/c", false},
	} {
		if got := Overlap(tc.a, tc.b); got != tc.want {
			t.Errorf("Overlap(%q, %q) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
		if got := Overlap(tc.b, tc.a); got != tc.want {
			t.Errorf("Overlap(%q, %q) = %v, want %v", tc.b, tc.a, got, tc.want)
		}
	}
}
