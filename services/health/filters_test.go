package health

import (
	"testing"

	"github.com/tinyscada/tinyscada/shared/topics"
)

// TestFiltersAreTheTree checks health's subscriptions against the topics the
// other roles build with topics.Tree: each filter takes its own kind of
// topic, for any service, and no other.
func TestFiltersAreTheTree(t *testing.T) {
	tr := topics.Tree{Prefix: "site/a"}
	var built [][]string // built[i]: what filters(tr)[i] must take
	for _, build := range []func(string) string{tr.SvcState, tr.SvcHeartbeat, tr.Restart} {
		var ts []string
		for _, svc := range append(topics.Names(topics.Roles()), "my-script") {
			ts = append(ts, build(svc))
		}
		built = append(built, ts)
	}
	built = append(built, []string{tr.HealthEcho()})
	// Topics of the same tree that health does not listen to.
	others := []string{tr.Health(), tr.HealthEvent(), tr.Data("meter1"), tr.Cmd("config"), tr.Ack("poller"), tr.Committed()}

	fs := filters(tr)
	if len(fs) != len(built) {
		t.Fatalf("filters() = %q: %d filters, the test knows %d", fs, len(fs), len(built))
	}
	for i, f := range fs {
		for j, ts := range built {
			for _, topic := range ts {
				if got := topics.Match(f, topic); got != (i == j) {
					t.Errorf("Match(%q, %q) = %v, want %v", f, topic, got, i == j)
				}
			}
		}
		for _, topic := range others {
			if topics.Match(f, topic) {
				t.Errorf("health's filter %q takes %q", f, topic)
			}
		}
	}
}
