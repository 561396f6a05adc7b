// Package version tells which build of tinyscada is running.
package version

import "runtime/debug"

// version is set at link time:
//
//	go build -ldflags "-X github.com/tinyscada/tinyscada/shared/version.version=v1.2.3"
var version string

// String returns the version of this build: the one set with -ldflags -X
// (see above) if any; else the main module's version from the build
// information (set by `go install module@version`); else the VCS revision
// the binary was built from (12 hex digits, "-dirty" appended for a
// modified work tree); else "devel".
func String() string {
	if version != "" {
		return version
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	return fromBuildInfo(info)
}

func fromBuildInfo(info *debug.BuildInfo) string {
	if v := info.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev string
	dirty := false
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "devel"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "-dirty"
	}
	return rev
}
