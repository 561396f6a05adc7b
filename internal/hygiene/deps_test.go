package hygiene

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

const (
	module = "github.com/tinyscada/tinyscada/"
	paho   = "github.com/eclipse/paho.mqtt.golang"
	mochi  = "github.com/mochi-mqtt/server/v2"
)

// The binary links exactly one MQTT client library, paho, and speaks MQTT
// as a client through one package, shared/bus: no other client module, and
// no client of our own beside it. mochi's server packages are the broker
// (services/broker), not a client, and are used there only.
func TestOneMQTTClient(t *testing.T) {
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	out, err := exec.Command(gobin, "list", "-deps", "-f", `{{.ImportPath}} {{join .Imports " "}}`, "../../cmd/tinyscada").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	linked := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		linked[f[0]] = f[1:]
	}
	if _, ok := linked[paho]; !ok {
		t.Errorf("%s is not linked into cmd/tinyscada", paho)
	}
	for pkg, imports := range linked {
		low := strings.ToLower(pkg)
		if strings.Contains(low, "mqtt") && !under(pkg, paho) && !under(pkg, mochi) {
			t.Errorf("cmd/tinyscada links %s: an MQTT library other than paho (the client) and mochi (the broker)", pkg)
		}
		if !strings.HasPrefix(pkg, module) {
			continue
		}
		for _, imp := range imports {
			switch {
			case under(imp, paho) && pkg != module+"shared/bus":
				t.Errorf("%s imports %s: the MQTT client is shared/bus alone", pkg, imp)
			case under(imp, mochi) && !under(pkg, module+"services/broker"):
				t.Errorf("%s imports %s: mochi is the broker's (services/broker), not a client", pkg, imp)
			}
		}
	}
	if n := len(linked); n < 20 {
		t.Fatalf("go list -deps listed %d packages; is the command wrong?", n)
	}
}

func under(pkg, root string) bool { return pkg == root || strings.HasPrefix(pkg, root+"/") }
