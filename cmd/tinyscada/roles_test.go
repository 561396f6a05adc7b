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

// TestEveryRoleShips ties topics.Roles() to what ships: each role that is a
// command of this binary has its unit in deploy/units, which runs
// `tinyscada <role>`, is wanted by the target and orders itself only after
// roles that start before it; a role the binary lacks (the uplink, not
// built yet) has no unit and is not wanted, since systemd would restart its
// unknown command forever; no other role unit ships; and every role but the
// uplink is built.
func TestEveryRoleShips(t *testing.T) {
	dir := filepath.Join("..", "..", "deploy", "units")
	target, err := os.ReadFile(filepath.Join(dir, "tinyscada.target"))
	if err != nil {
		t.Fatal(err)
	}
	var h config.Health
	roles := topics.Roles()
	for i, r := range roles {
		name := h.Unit(string(r))
		built := slices.ContainsFunc(commands(), func(c command) bool { return c.name == string(r) })
		if !built && r != topics.Uplink {
			t.Errorf("role %s is not a command of the binary", r)
		}
		body, err := os.ReadFile(filepath.Join(dir, name))
		if !built {
			if err == nil {
				t.Errorf("%s ships, but the binary has no %s command", name, r)
			}
			if strings.Contains(wantedBy(string(target)), " "+name+" ") || strings.Contains(string(target), name) {
				t.Errorf("tinyscada.target names %s, a role the binary lacks", name)
			}
			continue
		}
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
		for _, after := range unitList(u, "After=") {
			j := slices.IndexFunc(roles, func(o topics.Role) bool { return h.Unit(string(o)) == after })
			if j < 0 || j >= i {
				t.Errorf("%s starts after %s, which is not a role that starts before it (%v)", name, after, roles)
			}
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
