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
	dir  string
	conn *net.UnixConn
}

// listenNotify creates a unixgram socket with SO_PASSCRED in a fresh private
// directory (a short path: socket paths are limited to 108 bytes).
func listenNotify() (*notifySocket, error) {
	dir, err := os.MkdirTemp("", "tinyscada-run-")
	if err != nil {
		return nil, fmt.Errorf("notify socket: %w", err)
	}
	path := filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("notify socket: %w", err)
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
		os.RemoveAll(dir)
		return nil, fmt.Errorf("notify socket: SO_PASSCRED: %w", err)
	}
	return &notifySocket{path: path, dir: dir, conn: conn}, nil
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
	err := n.conn.Close()
	os.RemoveAll(n.dir)
	return err
}
