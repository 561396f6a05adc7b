package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/tinyscada/tinyscada/shared/atomicfile"
)

// The children of `tinyscada run` read the very configuration run checked,
// with the state directory made absolute: <state_dir>/run/tinyscada.toml,
// written atomically at start. That file is what a remote configuration
// (the uplink) replaces before it restarts the roles, as it replaces
// /etc/tinyscada/tinyscada.toml under systemd. run must also come up on a
// full disk, the one moment the stack is most needed to hold data (the
// write failed there with ENOSPC and run exited): then the configuration
// reaches the children in a sealed memfd that each inherits as file
// descriptor childConfigFD and reads as /proc/self/fd/3. A memfd takes no
// disk and no tmpfs that could be full, and has no size limit (unlike an
// environment variable); but nothing can replace it, so a remote
// configuration is refused until the next start of run. Only when both
// fail does run refuse to start, saying what it needs.

// childConfigFD is the descriptor of the effective configuration in a
// child: the first of exec.Cmd.ExtraFiles.
const childConfigFD = 3

// effectiveFile is the fallback file, in run's directory.
const effectiveFile = "tinyscada.toml"

// childConfig hands the effective configuration (encoded) to the children:
// it returns the -config argument they get and the files they inherit
// (ExtraFiles), which the caller closes once the children are gone.
func childConfig(effective []byte, runDir string) (path string, files []*os.File, err error) {
	file := filepath.Join(runDir, effectiveFile)
	werr := atomicfile.WriteFile(file, effective, 0o600)
	if werr == nil {
		return file, nil, nil
	}
	f, merr := sealedMemfd("tinyscada.toml", effective)
	if merr == nil {
		if _, serr := os.Stat("/proc/self/fd/" + strconv.Itoa(int(f.Fd()))); serr != nil {
			f.Close()
			merr = fmt.Errorf("/proc is needed to read it: %w", serr)
		}
	}
	if merr != nil {
		return "", nil, fmt.Errorf("cannot hand the configuration to the roles: in %s: %v; in a memfd: %w "+
			"(tinyscada run needs room for %d bytes there, or memfd_create(2) and /proc)", file, werr, merr, len(effective))
	}
	// A file of an older run would only mislead; removing takes no space.
	_ = os.Remove(file)
	return "/proc/self/fd/" + strconv.Itoa(childConfigFD), []*os.File{f}, nil
}

// sealedMemfd returns a memfd named name holding b, sealed: nobody can
// write, grow or shrink it any more, nor remove the seals.
func sealedMemfd(name string, b []byte) (*os.File, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), "memfd:"+name)
	if _, err := f.Write(b); err != nil {
		f.Close()
		return nil, fmt.Errorf("memfd: %w", err)
	}
	seals := unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
	if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, seals); err != nil {
		f.Close()
		return nil, fmt.Errorf("memfd seals: %w", err)
	}
	return f, nil
}
