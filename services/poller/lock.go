package poller

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/flock"
)

// LockFileName is the poller's lock file in the state directory: one
// poller per state directory, even while a port's adapter is unplugged.
const LockFileName = "poller.lock"

// ErrLocked is wrapped by LockPorts' error when another process holds a
// port or the poller's lock file (test with errors.Is; the message says
// which and the holder's pid). Restarting does not help while the other
// holder lives: the role exits with a code systemd does not restart on.
var ErrLocked = errors.New("poller: already running")

// Locks are the locks LockPorts took: the state directory's lock file and
// each port's device node that exists. Pass them to Serve (Options.Locks),
// which opens the ports through them; Close releases what is still held.
type Locks struct {
	file  *flock.Held
	nodes map[string]*nodeLock // by port name
}

// nodeLock is a locked, open device node waiting to be opened as a port.
type nodeLock struct {
	f    *os.File
	held *flock.Held
}

// take hands over the node and its lock (nil, nil when there is none, or
// it was taken already).
func (n *nodeLock) take() (*os.File, *flock.Held) {
	if n == nil || n.f == nil {
		return nil, nil
	}
	f, held := n.f, n.held
	n.f, n.held = nil, nil
	return f, held
}

func (n *nodeLock) close() {
	if f, held := n.take(); f != nil {
		held.Close()
		f.Close()
	}
}

// LockPorts takes, before anything connects anywhere, the locks a poller
// for cfg needs: every port's device node (flock) and <state_dir>/
// poller.lock. A port whose node does not exist (an adapter unplugged) is
// left for later, as the poller retries it anyway; a node that exists but
// cannot be opened is also left to the poller's retries. Errors: a lock is
// held by another process (wrapping ErrLocked and a *flock.LockedError:
// "port sim: /dev/ttyUSB0 is locked by pid N"); the lock file cannot be
// made. Nothing stays locked after an error.
func LockPorts(cfg *config.Config) (*Locks, error) {
	plan, err := MakePlan(&cfg.Poller, cfg.StateDir)
	if err != nil {
		return nil, err
	}
	l := &Locks{nodes: map[string]*nodeLock{}}
	for _, pp := range plan.Ports {
		f, held, err := lockNode(pp)
		switch {
		case err == nil:
			l.nodes[pp.Config.Name] = &nodeLock{f: f, held: held}
		case errors.Is(err, flock.ErrLocked):
			l.Close()
			return nil, fmt.Errorf("%w: %w", ErrLocked, err)
		case errors.Is(err, fs.ErrNotExist):
			// Retried by the poller.
		}
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		l.Close()
		return nil, fmt.Errorf("poller: %w", err)
	}
	path := filepath.Join(cfg.StateDir, LockFileName)
	held, err := flock.Lock(path)
	if err != nil {
		l.Close()
		if errors.Is(err, flock.ErrLocked) {
			return nil, fmt.Errorf("%w: another poller uses state_dir %s: %w", ErrLocked, cfg.StateDir, err)
		}
		return nil, fmt.Errorf("poller: lock %s: %w", path, err)
	}
	l.file = held
	return l, nil
}

// Close releases every lock still held (the ports already opened keep
// theirs until they close). Closing nil Locks does nothing.
func (l *Locks) Close() {
	if l == nil {
		return
	}
	for _, n := range l.nodes {
		n.close()
	}
	if l.file != nil {
		l.file.Close()
		l.file = nil
	}
}
