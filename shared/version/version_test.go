package version

import (
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
)

func TestFromBuildInfo(t *testing.T) {
	rev := "0123456789abcdef0123456789abcdef01234567"
	tests := []struct {
		name     string
		version  string
		settings []debug.BuildSetting
		want     string
	}{
		{"module version", "v1.4.0", []debug.BuildSetting{{Key: "vcs.revision", Value: rev}}, "v1.4.0"},
		{"revision", "(devel)", []debug.BuildSetting{{Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: "false"}}, "0123456789ab"},
		{"dirty", "", []debug.BuildSetting{{Key: "vcs.modified", Value: "true"}, {Key: "vcs.revision", Value: rev}}, "0123456789ab-dirty"},
		{"short revision", "", []debug.BuildSetting{{Key: "vcs.revision", Value: "abc"}}, "abc"},
		{"nothing", "(devel)", []debug.BuildSetting{{Key: "GOOS", Value: "linux"}}, "devel"},
	}
	for _, tt := range tests {
		info := &debug.BuildInfo{Main: debug.Module{Path: "github.com/tinyscada/tinyscada", Version: tt.version}, Settings: tt.settings}
		if got := fromBuildInfo(info); got != tt.want {
			t.Errorf("%s: fromBuildInfo = %q, want %q", tt.name, got, tt.want)
		}
	}
}

func TestStringLinkerFlag(t *testing.T) {
	saved := version
	defer func() { version = saved }()
	version = "v9.9.9"
	if got := String(); got != "v9.9.9" {
		t.Errorf("String() = %q, want the linked-in v9.9.9", got)
	}
	version = ""
	if got := String(); got == "" {
		t.Error("String() is empty without a linked-in version")
	}
}

// TestBuild builds a real binary with -ldflags -X and runs it.
func TestBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a binary")
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go command: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "printversion")
	for _, tt := range []struct{ ldflags, want string }{
		{"-X github.com/tinyscada/tinyscada/shared/version.version=v1.2.3", "v1.2.3"},
		{"", ""}, // whatever the build info says; never empty
	} {
		build := exec.Command(gobin, "build", "-ldflags", tt.ldflags, "-o", bin, "./testdata/printversion")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("go build: %v\n%s", err, out)
		}
		out, err := exec.Command(bin).Output()
		if err != nil {
			t.Fatal(err)
		}
		got := strings.TrimSpace(string(out))
		if got == "" || (tt.want != "" && got != tt.want) {
			t.Errorf("ldflags %q: printed %q, want %q", tt.ldflags, got, tt.want)
		}
	}
}
