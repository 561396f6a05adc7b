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
// with the state directory made absolute. It reaches them in a sealed
// memfd that every child inherits as file descriptor childConfigFD and
// reads as /proc/self/fd/3, not in a file on disk: run must come up on a
// full disk, the one moment the stack is most needed to hold data (the
// file's write failed there with ENOSPC and run exited). A memfd takes no
// disk and no tmpfs that could be full, cannot be changed under the
// children once sealed, leaves nothing behind after a kill -9, and has no
// size limit (unlike an environment variable). The original file would do
// only when there is one and nobody edits it meanwhile. Where memfd_create
// or /proc is missing (very old kernels, a seccomp filter), run falls back
// to writing <state_dir>/run/tinyscada.toml, and if that fails too it says
// what it needs.

// childConfigFD is the descriptor of the effective configuration in a
// child: the first of exec.Cmd.ExtraFiles.
const childConfigFD = 3

// effectiveFile is the fallback file, in run's directory.
const effectiveFile = "tinyscada.toml"

// childConfig hands the effective configuration (encoded) to the children:
// it returns the -config argument they get and the files they inherit
// (ExtraFiles), which the caller closes once the children are gone.
func childConfig(effective []byte, runDir string) (path string, files []*os.File, err error) {
	fallback := filepath.Join(runDir, effectiveFile)
	f, merr := sealedMemfd("tinyscada.toml", effective)
	if merr == nil {
		if _, serr := os.Stat("/proc/self/fd/" + strconv.Itoa(int(f.Fd()))); serr != nil {
			f.Close()
			merr = fmt.Errorf("/proc is needed to read it: %w", serr)
		}
	}
	if merr == nil {
		// A file of an older run would only mislead; removing takes no
		// space.
		_ = os.Remove(fallback)
		return "/proc/self/fd/" + strconv.Itoa(childConfigFD), []*os.File{f}, nil
	}
	if werr := atomicfile.WriteFile(fallback, effective, 0o600); werr != nil {
		return "", nil, fmt.Errorf("cannot hand the configuration to the roles: in a memfd: %v; in %s: %w "+
			"(tinyscada run needs memfd_create(2) and /proc, or room for %d bytes there)", merr, fallback, werr, len(effective))
	}
	return fallback, nil, nil
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
