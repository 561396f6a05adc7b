package config

import (
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/tinyscada/tinyscada/shared/topics"
)

// TestRolesAreTopicsRoles checks that run.roles takes exactly the roles of
// topics.Roles() (by default all of them, in their order) and that
// health.expect's default is topics.Core().
func TestRolesAreTopicsRoles(t *testing.T) {
	d := Default()
	if want := topics.Names(topics.Roles()); !slices.Equal(d.Run.Roles, want) {
		t.Errorf("default run.roles = %q, want %q", d.Run.Roles, want)
	}
	if want := topics.Names(topics.Core()); !slices.Equal(d.Health.Expect, want) {
		t.Errorf("default health.expect = %q, want %q", d.Health.Expect, want)
	}
	var quoted []string
	for _, r := range topics.Roles() {
		quoted = append(quoted, strconv.Quote(string(r)))
	}
	c, err := Parse("roles.toml", []byte("version = 1\n[run]\nroles = ["+strings.Join(quoted, ", ")+"]\n"))
	if err != nil {
		t.Fatalf("every role of topics.Roles(): %v", err)
	}
	if want := topics.Names(topics.Roles()); !slices.Equal(c.Run.Roles, want) {
		t.Errorf("run.roles = %q, want %q", c.Run.Roles, want)
	}
	_, err = Parse("roles.toml", []byte("version = 1\n[run]\nroles = [\"operator\"]\n"))
	if err == nil || !strings.Contains(err.Error(), `unknown role "operator" (want one of broker, logger, poller, uplink, health)`) {
		t.Errorf("run.roles = [\"operator\"]: err = %v, want an unknown role listing the roles", err)
	}
}
