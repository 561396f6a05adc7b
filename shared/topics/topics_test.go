package topics

import "testing"

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
