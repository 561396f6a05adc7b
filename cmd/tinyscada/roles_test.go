package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/topics"
)

// TestEveryRoleShips ties topics.Roles() to what ships: each role has its
// unit in deploy/units, which runs `tinyscada <role>`, is wanted by the
// target and orders itself only after roles that start before it, and
// after those it needs (mustFollow: systemd stops in the reverse order, so
// the poller stops before the logger, and both before the broker); no
// other role unit ships; and each role is a
// command of this binary.
func TestEveryRoleShips(t *testing.T) {
	t.Parallel()
	dir := filepath.Join("..", "..", "deploy", "units")
	target, err := os.ReadFile(filepath.Join(dir, "tinyscada.target"))
	if err != nil {
		t.Fatal(err)
	}
	var h config.Health
	roles := topics.Roles()
	for i, r := range roles {
		name := h.Unit(string(r))
		body, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("role %s: %v", r, err)
			continue
		}
		u := string(body)
		if want := "ExecStart=@BINDIR@/tinyscada " + string(r) + " "; !strings.Contains(u, "\n"+want) {
			t.Errorf("%s: no %q line", name, want)
		}
		if want := "SyslogIdentifier=tinyscada-" + string(r) + "\n"; !strings.Contains(u, "\n"+want) {
			t.Errorf("%s: no %q line (the journal would name every role tinyscada)", name, strings.TrimSpace(want))
		}
		if !strings.Contains(wantedBy(string(target)), " "+name+" ") {
			t.Errorf("tinyscada.target does not want %s", name)
		}
		afters := unitList(u, "After=")
		for _, after := range afters {
			j := slices.IndexFunc(roles, func(o topics.Role) bool { return h.Unit(string(o)) == after })
			if j < 0 || j >= i {
				t.Errorf("%s starts after %s, which is not a role that starts before it (%v)", name, after, roles)
			}
		}
		for _, before := range mustFollow(r) {
			if !slices.Contains(afters, h.Unit(string(before))) {
				t.Errorf("%s is not After= %s: stopping the target would not stop %s first", name, h.Unit(string(before)), r)
			}
		}
		built := slices.ContainsFunc(commands(), func(c command) bool { return c.name == string(r) })
		if !built {
			t.Errorf("role %s is not a command of the binary", r)
		}
	}
	units, err := filepath.Glob(filepath.Join(dir, "tinyscada-*.service"))
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range units {
		base := filepath.Base(u)
		role := strings.TrimSuffix(strings.TrimPrefix(base, "tinyscada-"), ".service")
		if !strings.HasSuffix(role, "@") && !topics.IsRole(role) {
			t.Errorf("deploy/units/%s is the unit of no role of topics.Roles()", base)
		}
	}
}

// mustFollow is what role r must start after, and so stop before: the
// broker for every other role, and the logger for the poller (the consumer
// of its data, which commits and acknowledges its last messages while the
// poller stops).
func mustFollow(r topics.Role) []topics.Role {
	switch r {
	case topics.Broker:
		return nil
	case topics.Poller:
		return []topics.Role{topics.Broker, topics.Logger}
	default:
		return []topics.Role{topics.Broker}
	}
}

// wantedBy is the target's Wants= list, with a space on either side of each
// unit.
func wantedBy(target string) string {
	return " " + strings.Join(unitList(target, "Wants="), " ") + " "
}

// unitList returns the units of every line starting with key in a unit file.
func unitList(unit, key string) []string {
	var units []string
	for line := range strings.SplitSeq(unit, "\n") {
		if v, ok := strings.CutPrefix(line, key); ok {
			units = append(units, strings.Fields(v)...)
		}
	}
	return units
}
