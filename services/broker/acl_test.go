package broker

import (
	"slices"
	"strings"
	"testing"

	"github.com/tinyscada/tinyscada/shared/credentials"
	"github.com/tinyscada/tinyscada/shared/topics"
)

// everyone is each user the rules know, plus anonymous ("") and a user the
// broker does not know.
var everyone = []string{"", "broker", "poller", "logger", "uplink", "health", "operator", "stranger"}

func TestMayPublishTable(t *testing.T) {
	// allowed lists the users that may publish the topic; every other user
	// of everyone must be denied.
	cases := []struct {
		prefix, topic string
		allowed       string
	}{
		{"tinyscada", "tinyscada/svc/broker/state", "broker"},
		{"tinyscada", "tinyscada/svc/broker/heartbeat", "broker"},
		{"tinyscada", "tinyscada/svc/poller/state", "poller"},
		{"tinyscada", "tinyscada/svc/poller", "poller"},
		{"tinyscada", "tinyscada/svc/poller/a/b/c", "poller"},
		{"tinyscada", "tinyscada/svc/logger/state", "logger"},
		{"tinyscada", "tinyscada/svc/uplink/heartbeat", "uplink"},
		{"tinyscada", "tinyscada/svc/health/state", "health"},
		{"tinyscada", "tinyscada/svc/operator/state", ""}, // the operator is not a service: cmd/# only
		{"tinyscada", "tinyscada/svc/operator", ""},
		{"tinyscada", "tinyscada/svc/stranger/state", ""},
		{"tinyscada", "tinyscada/svc/pollers/state", ""},
		{"tinyscada", "tinyscada/svc", ""},
		{"tinyscada", "tinyscada/svc/+/state", ""},
		{"tinyscada", "tinyscada/data/meter1", "poller"},
		{"tinyscada", "tinyscada/data", "poller"},
		{"tinyscada", "tinyscada/data/a/b", "poller"},
		{"tinyscada", "tinyscada/datax/meter1", ""},
		{"tinyscada", "tinyscada/value/meter1/voltage", ""}, // the broker derives values
		{"tinyscada", "tinyscada/device/meter1/state", "poller"},
		{"tinyscada", "tinyscada/ack/run-1", "logger"},
		{"tinyscada", "tinyscada/logger/gap", "logger"},
		{"tinyscada", "tinyscada/uplink/status", "uplink"},
		{"tinyscada", "tinyscada/cmd/restart/poller", "uplink health operator"},
		{"tinyscada", "tinyscada/cmd", "uplink health operator"},
		{"tinyscada", "tinyscada/cmd/config", "uplink health operator"},
		{"tinyscada", "tinyscada/cmdx", ""},
		{"tinyscada", "tinyscada/health", "health"},
		{"tinyscada", "tinyscada/health/detail", "health"},
		{"tinyscada", "tinyscada/healthy", ""},
		{"tinyscada", "tinyscada", ""},
		{"tinyscada", "tinyscada/", ""},
		{"tinyscada", "tinyscada/other", ""},
		{"tinyscada", "tinyscadax/data/meter1", ""},
		{"tinyscada", "/tinyscada/data/meter1", ""},
		{"tinyscada", "other/data/meter1", ""},
		{"tinyscada", "data/meter1", ""},
		{"tinyscada", "/data/meter1", ""},
		{"tinyscada", "/svc/poller/state", ""},
		{"tinyscada", "test", ""},
		{"tinyscada", "$SYS/broker/uptime", ""},
		{"tinyscada", "$share/g/tinyscada/cmd/x", ""},
		{"site/a", "site/a/data/meter1", "poller"},
		{"site/a", "site/a/svc/health/state", "health"},
		{"site/a", "site/b/data/meter1", ""},
		{"site/a", "tinyscada/data/meter1", ""},
	}
	for _, c := range cases {
		allowed := strings.Fields(c.allowed)
		for _, u := range everyone {
			want := slices.Contains(allowed, u)
			if got := mayPublish(publishRules(topics.Tree{Prefix: c.prefix}), u, c.topic); got != want {
				t.Errorf("mayPublish(%q, user %q, %q) = %v, want %v", c.prefix, u, c.topic, got, want)
			}
		}
	}
}

// TestRulesCoverEveryUser ties the table to the role list: the broker
// creates a credential for every role and the operator, each has a rule
// set, and the table knows no other user.
func TestRulesCoverEveryUser(t *testing.T) {
	rules := publishRules(topics.Tree{Prefix: "tinyscada"})
	want := append(topics.Names(topics.Roles()), credentials.Operator)
	if got := users(); !slices.Equal(got, want) {
		t.Errorf("users() = %v, want the roles and the operator %v", got, want)
	}
	for _, u := range users() {
		if _, ok := rules[u]; !ok {
			t.Errorf("user %q has no publish rules", u)
		}
		if !slices.Contains(everyone, u) {
			t.Errorf("user %q is not among the users TestMayPublishTable tries", u)
		}
	}
	for u := range rules {
		if !slices.Contains(users(), u) {
			t.Errorf("rules for %q, a user the broker creates no credential for", u)
		}
	}
}

// TestRulesFollowTheTree checks the table against the topics the roles
// build with topics.Tree: each is granted to its publishers and no one else.
func TestRulesFollowTheTree(t *testing.T) {
	tr := topics.Tree{Prefix: "site/a"}
	rules := publishRules(tr)
	type grant struct {
		topic   string
		allowed []string
	}
	cases := []grant{
		{tr.Data("meter1"), []string{"poller"}},
		{tr.Value("meter1", "voltage"), nil}, // the broker's own (valueHook)
		{tr.DeviceState("meter1"), []string{"poller"}},
		{tr.Ack("poller"), []string{"logger"}},
		{tr.Committed(), []string{"logger"}},
		{tr.UplinkCursor(), []string{"uplink"}},
		{tr.Health(), []string{"health"}},
		{tr.HealthEvent(), []string{"health"}},
		{tr.HealthEcho(), []string{"health"}},
		{tr.Restart("poller"), []string{"uplink", "health", "operator"}},
		{tr.Cmd("config"), []string{"uplink", "health", "operator"}},
	}
	for _, u := range users() {
		var owner []string // the operator is not a service: no svc/ subtree
		if u != credentials.Operator {
			owner = []string{u}
		}
		cases = append(cases, grant{tr.SvcState(u), owner}, grant{tr.SvcHeartbeat(u), owner})
	}
	for _, c := range cases {
		for _, u := range everyone {
			if got, want := mayPublish(rules, u, c.topic), slices.Contains(c.allowed, u); got != want {
				t.Errorf("mayPublish(user %q, %q) = %v, want %v", u, c.topic, got, want)
			}
		}
	}
}

func TestIsLoopback(t *testing.T) {
	cases := []struct {
		addr string
		want bool
	}{
		{"127.0.0.1:1883", true},
		{"127.0.0.2:1883", true},
		{"[::1]:1883", true},
		{"localhost:1883", true},
		{":1883", false},
		{"0.0.0.0:1883", false},
		{"[::]:1883", false},
		{"192.0.2.2:1883", false},
		{"10.0.0.1:8883", false},
		{"gateway.local:1883", false},
		{"127.0.0.1", false}, // no port: not an address we can judge
	}
	for _, c := range cases {
		if got := isLoopback(c.addr); got != c.want {
			t.Errorf("isLoopback(%q) = %v, want %v", c.addr, got, c.want)
		}
	}
}

func TestReservedClientID(t *testing.T) {
	cases := []struct {
		id, user string
		ok       bool
	}{
		{"mosq-abc", "", true},
		{"mosq-abc", "poller", true},
		{"tinyscada-poller", "poller", true},
		{"tinyscada-poller-outbox", "poller", true},
		{"tinyscada-poller", "", false},
		{"tinyscada-poller", "logger", false},
		{"tinyscada-pollerx", "poller", false},
		{"tinyscada-", "", false},
		{"tinyscada-x", "operator", false},
		{"tinyscada-operator", "operator", true},
		{"inline", "", false},
		{"inline", "broker", false},
	}
	for _, c := range cases {
		if got := reservedClientID(c.id, c.user) == ""; got != c.ok {
			t.Errorf("reservedClientID(%q, %q) allowed = %v, want %v", c.id, c.user, got, c.ok)
		}
	}
}

func TestAuthenticate(t *testing.T) {
	h := &accessHook{
		passwords: map[string]string{"poller": "secret", "operator": "op"},
		local:     map[string]bool{"tcp:127.0.0.1:1883": true, "unix:/s": true, "tcp:192.0.2.2:1883": false},
	}
	cases := []struct {
		listener, user, pass string
		ok                   bool
	}{
		{"tcp:127.0.0.1:1883", "", "", true},
		{"unix:/s", "", "", true},
		{"tcp:192.0.2.2:1883", "", "", false},
		{"tcp:unknown", "", "", false},
		{"tcp:192.0.2.2:1883", "poller", "secret", true},
		{"tcp:127.0.0.1:1883", "poller", "secret", true},
		{"tcp:127.0.0.1:1883", "poller", "secret\n", false},
		{"tcp:127.0.0.1:1883", "poller", "op", false},
		{"tcp:127.0.0.1:1883", "poller", "", false},
		{"tcp:127.0.0.1:1883", "operator", "op", true},
		{"tcp:127.0.0.1:1883", "stranger", "secret", false},
		{"tcp:127.0.0.1:1883", "stranger", "", false},
	}
	for _, c := range cases {
		reason := h.authenticate(c.listener, c.user, []byte(c.pass))
		if (reason == "") != c.ok {
			t.Errorf("authenticate(%q, %q, %q) = %q, want ok=%v", c.listener, c.user, c.pass, reason, c.ok)
		}
	}
}
