package supervisor

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// notification is one datagram received on the notify socket, attributed to
// the sending pid by its SCM_CREDENTIALS, as systemd does.
type notification struct {
	pid    int
	fields map[string]string
}

// notifySocket is the NOTIFY_SOCKET the supervisor gives its children.
type notifySocket struct {
	path string
	tmp  string // a private temporary directory to remove, if one was made
	conn *net.UnixConn
}

// maxSocketPath is the longest path a unix socket address takes (108 bytes
// with the terminating NUL).
const maxSocketPath = 107

// listenNotify creates a unixgram socket with SO_PASSCRED at dir/notify, or,
// when dir is empty or that path is too long for a socket address, in a
// fresh private directory under the system's temporary directory. A stale
// socket left at dir/notify by a killed supervisor is replaced (the caller
// holds the lock that makes it ours).
func listenNotify(dir string) (*notifySocket, error) {
	var tmp string
	path := filepath.Join(dir, "notify")
	if dir == "" || len(path) > maxSocketPath {
		var err error
		if tmp, err = os.MkdirTemp("", "tinyscada-run-"); err != nil {
			return nil, fmt.Errorf("notify socket: %w", err)
		}
		path = filepath.Join(tmp, "notify")
	} else if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("notify socket: remove stale %s: %w", path, err)
	}
	fail := func(err error) (*notifySocket, error) {
		if tmp != "" {
			os.RemoveAll(tmp)
		} else {
			os.Remove(path)
		}
		return nil, fmt.Errorf("notify socket: %w", err)
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return fail(err)
	}
	raw, err := conn.SyscallConn()
	if err == nil {
		var serr error
		err = raw.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
		})
		if err == nil {
			err = serr
		}
	}
	if err != nil {
		conn.Close()
		return fail(fmt.Errorf("SO_PASSCRED: %w", err))
	}
	return &notifySocket{path: path, tmp: tmp, conn: conn}, nil
}

// read returns the next notification; an error means the socket is closed.
func (n *notifySocket) read() (notification, error) {
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(unix.SizeofUcred))
	for {
		nb, noob, _, _, err := n.conn.ReadMsgUnix(buf, oob)
		if err != nil {
			return notification{}, err
		}
		pid := 0
		if msgs, err := unix.ParseSocketControlMessage(oob[:noob]); err == nil {
			for _, m := range msgs {
				if cred, err := unix.ParseUnixCredentials(&m); err == nil {
					pid = int(cred.Pid)
				}
			}
		}
		if pid == 0 {
			continue // cannot attribute it; systemd drops these too
		}
		return notification{pid: pid, fields: parseNotify(string(buf[:nb]))}, nil
	}
}

// parseNotify splits "KEY=value\nKEY=value" into a map; later keys win.
func parseNotify(s string) map[string]string {
	m := map[string]string{}
	for line := range strings.SplitSeq(s, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && k != "" {
			m[k] = v
		}
	}
	return m
}

func (n *notifySocket) Close() error {
	err := n.conn.Close() // net removes the socket file it bound
	if n.tmp != "" {
		os.RemoveAll(n.tmp)
	}
	return err
}
