package broker

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tinyscada/tinyscada/internal/testpeer"
	"github.com/tinyscada/tinyscada/shared/bus"
	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/credentials"
	"github.com/tinyscada/tinyscada/shared/topics"
)

// testConfig is testpeer.Config with the broker on a port of the kernel's
// choosing (the tests read it from the broker) and no $SYS topics.
func testConfig(t testing.TB) *config.Config {
	cfg := testpeer.Config(t)
	cfg.Broker.Listen = []string{"127.0.0.1:0"}
	cfg.Broker.SysInterval = config.Duration{}
	return cfg
}

// logRecorder keeps every log record's message and attributes, and
// passes them on to the test's output.
type logRecorder struct {
	slog.Handler
	mu   *sync.Mutex
	recs *[]map[string]string
	cond *sync.Cond
	pre  []slog.Attr
}

func newLogRecorder(t *testing.T) (*slog.Logger, *logRecorder) {
	mu := &sync.Mutex{}
	r := &logRecorder{
		Handler: slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}),
		mu:      mu,
		recs:    &[]map[string]string{},
		cond:    sync.NewCond(mu),
	}
	return slog.New(r), r
}

func (r *logRecorder) Handle(ctx context.Context, rec slog.Record) error {
	m := map[string]string{"msg": rec.Message}
	for _, a := range r.pre {
		m[a.Key] = a.Value.String()
	}
	rec.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.String(); return true })
	r.mu.Lock()
	*r.recs = append(*r.recs, m)
	r.cond.Broadcast()
	r.mu.Unlock()
	return r.Handler.Handle(ctx, rec)
}

func (r *logRecorder) WithAttrs(as []slog.Attr) slog.Handler {
	c := *r
	c.Handler = r.Handler.WithAttrs(as)
	c.pre = append(slices.Clip(r.pre), as...)
	return &c
}

func (r *logRecorder) WithGroup(name string) slog.Handler {
	c := *r
	c.Handler = r.Handler.WithGroup(name)
	return &c
}

// wait blocks until a record has msg and every key=value of kv, or fails the
// test after 10 s.
func (r *logRecorder) wait(t *testing.T, msg string, kv ...string) {
	t.Helper()
	timer := time.AfterFunc(10*time.Second, func() { r.mu.Lock(); r.cond.Broadcast(); r.mu.Unlock() })
	defer timer.Stop()
	deadline := time.Now().Add(10 * time.Second)
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		for _, m := range *r.recs {
			if m["msg"] != msg {
				continue
			}
			ok := true
			for i := 0; i+1 < len(kv); i += 2 {
				if m[kv[i]] != kv[i+1] {
					ok = false
				}
			}
			if ok {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log record %q %v", msg, kv)
		}
		r.cond.Wait()
	}
}

// startBroker starts a broker with cfg and stops it at the end of the test.
func startBroker(t *testing.T, cfg *config.Config, log *slog.Logger) *broker {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	b, err := start(ctx, cfg, log)
	if err != nil {
		cancel()
		t.Fatalf("start broker: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- b.run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("broker run: %v", err)
		}
	})
	return b
}

func hostPort(t *testing.T, addr string) (string, string) {
	t.Helper()
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return h, p
}

// mosq runs a mosquitto client with a timeout and returns its output and
// exit error.
func mosq(t *testing.T, tool string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, testpeer.Need(t, tool), args...).CombinedOutput()
	return string(out), err
}

// recorder is an MQTT client that keeps every message it receives.
type recorder struct {
	mu   sync.Mutex
	msgs []string // "topic payload"
	got  chan string
}

func newRecorder(t *testing.T, address, filter string) *recorder {
	t.Helper()
	r := &recorder{got: make(chan string, 1000)}
	c := dial(t, address, "", "")
	if err := c.Subscribe(filter, 1, func(topic string, payload []byte) {
		m := topic + " " + string(payload)
		r.mu.Lock()
		r.msgs = append(r.msgs, m)
		r.mu.Unlock()
		r.got <- m
	}); err != nil {
		t.Fatal(err)
	}
	return r
}

// waitFor waits for the message "topic payload" and fails after 10 s.
func (r *recorder) waitFor(t *testing.T, want string) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case m := <-r.got:
			if m == want {
				return
			}
		case <-timeout:
			t.Fatalf("never received %q", want)
		}
	}
}

func (r *recorder) all() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.msgs)
}

// dial connects a bus client as user (empty: anonymous).
func dial(t *testing.T, address, user, pass string) *bus.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	o := bus.Options{Address: address, CleanSession: true}
	if user != "" {
		o.ClientID = "tinyscada-" + user + "-test"
		o.Credentials = func() (string, string, error) { return user, pass, nil }
	}
	c, err := bus.Dial(ctx, o)
	if err != nil {
		t.Fatalf("connect as %q to %s: %v", user, address, err)
	}
	t.Cleanup(c.Close)
	return c
}

func password(t testing.TB, cfg *config.Config, user string) string {
	t.Helper()
	p, err := credentials.Read(cfg.StateDir, user)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestMosquittoSubSeesStateAndHeartbeat(t *testing.T) {
	t.Parallel()
	testpeer.Need(t, "mosquitto_sub")
	cfg := testConfig(t)
	log, _ := newLogRecorder(t)
	b := startBroker(t, cfg, log)
	h, p := hostPort(t, b.addrs[0])
	out, err := mosq(t, "mosquitto_sub", "-h", h, "-p", p, "-t", "tinyscada/svc/broker/#", "-v", "-C", "2", "-W", "10")
	if err != nil {
		t.Fatalf("mosquitto_sub: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 {
		t.Fatalf("want 2 lines, got %q", out)
	}
	topic, payload, _ := strings.Cut(lines[0], " ")
	var st struct {
		State string `json:"state"`
		PID   int    `json:"pid"`
	}
	if topic != "tinyscada/svc/broker/state" || json.Unmarshal([]byte(payload), &st) != nil || st.State != "ready" || st.PID != os.Getpid() {
		t.Errorf("first message %q: want the retained ready state of pid %d", lines[0], os.Getpid())
	}
	topic, payload, _ = strings.Cut(lines[1], " ")
	var hb map[string]any
	if topic != "tinyscada/svc/broker/heartbeat" || json.Unmarshal([]byte(payload), &hb) != nil {
		t.Fatalf("second message %q: want a heartbeat", lines[1])
	}
	for _, k := range []string{"pid", "seq", "progress", "clients", "received", "sent", "dropped", "retained"} {
		if _, ok := hb[k]; !ok {
			t.Errorf("heartbeat %s lacks %q", payload, k)
		}
	}
	if hb["clients"] != 1.0 {
		t.Errorf("heartbeat clients = %v, want 1 (mosquitto_sub)", hb["clients"])
	}
}

// TestHeartbeatProvesRouting checks that progress counts heartbeats that came
// back through the router.
func TestHeartbeatProvesRouting(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	log, _ := newLogRecorder(t)
	b := startBroker(t, cfg, log)
	r := newRecorder(t, b.addrs[0], "tinyscada/svc/broker/heartbeat")
	var last float64
	for i := 0; i < 3; i++ {
		select {
		case m := <-r.got:
			var hb map[string]any
			_, payload, _ := strings.Cut(m, " ")
			if err := json.Unmarshal([]byte(payload), &hb); err != nil {
				t.Fatal(err)
			}
			p := hb["progress"].(float64)
			if i > 0 && p != last+1 {
				t.Errorf("progress %v after %v: want one more per routed heartbeat", p, last)
			}
			last = p
		case <-time.After(10 * time.Second):
			t.Fatal("no heartbeat")
		}
	}
}

// TestEveryRoleHasACredential starts the broker and connects as each role
// with the credential it created, publishing the role's retained state:
// the broker serves every role of topics.Roles().
func TestEveryRoleHasACredential(t *testing.T) {
	cfg := testConfig(t)
	log, _ := newLogRecorder(t)
	b := startBroker(t, cfg, log)
	tr := topics.Tree{Prefix: cfg.TopicPrefix}
	obs := newRecorder(t, b.addrs[0], tr.SvcState("+"))
	ctx := context.Background()
	for _, r := range topics.Roles() {
		c := dial(t, b.addrs[0], string(r), password(t, cfg, string(r)))
		if err := c.Publish(ctx, bus.Message{Topic: tr.SvcState(string(r)), QoS: 1, Retain: true, Payload: []byte("test")}); err != nil {
			t.Fatalf("%s: %v", r, err)
		}
		obs.waitFor(t, tr.SvcState(string(r))+" test")
	}
}

func TestAccessControl(t *testing.T) {
	t.Parallel()
	testpeer.Need(t, "mosquitto_pub")
	cfg := testConfig(t)
	log, logs := newLogRecorder(t)
	b := startBroker(t, cfg, log)
	addr := b.addrs[0]
	h, p := hostPort(t, addr)
	obs := newRecorder(t, addr, "tinyscada/#")

	// The poller sets its retained state and publishes data.
	poller := dial(t, addr, "poller", password(t, cfg, "poller"))
	ctx := context.Background()
	pollerState := `{"state":"ready","who":"poller"}`
	if err := poller.Publish(ctx, bus.Message{Topic: "tinyscada/svc/poller/state", QoS: 1, Retain: true, Payload: []byte(pollerState)}); err != nil {
		t.Fatal(err)
	}
	obs.waitFor(t, "tinyscada/svc/poller/state "+pollerState)
	if err := poller.Publish(ctx, bus.Message{Topic: "tinyscada/data/meter1", QoS: 1, Payload: []byte(`{"seq":1}`)}); err != nil {
		t.Fatal(err)
	}
	obs.waitFor(t, `tinyscada/data/meter1 {"seq":1}`)

	// Anonymous publishes are dropped, QoS 0 and 1, MQTT 3.1.1 and 5.
	for _, args := range [][]string{
		{"-t", "tinyscada/svc/poller/state", "-r", "-m", `{"state":"anon-q0"}`},
		{"-t", "tinyscada/svc/poller/state", "-r", "-q", "1", "-m", `{"state":"anon-q1"}`},
		{"-t", "tinyscada/svc/poller/state", "-r", "-q", "1", "-V", "mqttv5", "-m", `{"state":"anon-v5"}`},
		{"-t", "tinyscada/cmd/restart/poller", "-m", "anon"},
		{"-t", "tinyscada/data/meter1", "-m", "anon"},
	} {
		out, _ := mosq(t, "mosquitto_pub", append([]string{"-h", h, "-p", p}, args...)...)
		logs.wait(t, "denied publish", "topic", args[1], "user", "")
		t.Logf("mosquitto_pub %v: %s", args, out)
	}
	// The poller may publish neither the logger's topics nor commands.
	for _, topic := range []string{"tinyscada/svc/logger/state", "tinyscada/cmd/restart/logger", "tinyscada/ack/x"} {
		if err := poller.Publish(ctx, bus.Message{Topic: topic, QoS: 0, Payload: []byte("poller")}); err != nil {
			t.Fatal(err)
		}
		logs.wait(t, "denied publish", "topic", topic, "user", "poller")
	}
	// The operator may publish a command.
	op := dial(t, addr, credentials.Operator, password(t, cfg, credentials.Operator))
	if err := op.Publish(ctx, bus.Message{Topic: "tinyscada/cmd/restart/poller", QoS: 1, Payload: []byte("op")}); err != nil {
		t.Fatal(err)
	}
	obs.waitFor(t, "tinyscada/cmd/restart/poller op")

	for _, m := range obs.all() {
		if strings.Contains(m, "anon") || strings.HasSuffix(m, " poller") {
			t.Errorf("a denied publish was routed: %q", m)
		}
	}
	out, err := mosq(t, "mosquitto_sub", "-h", h, "-p", p, "-t", "tinyscada/svc/poller/state", "-C", "1", "-W", "5")
	if err != nil || strings.TrimSpace(out) != pollerState {
		t.Errorf("retained poller state = %q (%v), want %q", out, err, pollerState)
	}

	// Refused connections.
	refused := []struct {
		name string
		args []string
	}{
		{"wrong password", []string{"-u", "poller", "-P", "wrong"}},
		{"another role's password", []string{"-u", "poller", "-P", password(t, cfg, "logger")}},
		{"unknown user", []string{"-u", "stranger", "-P", "x"}},
		{"anonymous with a role's client id", []string{"-i", "tinyscada-poller"}},
		{"role with another role's client id", []string{"-i", "tinyscada-poller", "-u", "logger", "-P", password(t, cfg, "logger")}},
		{"anonymous with a will on a role's state", []string{"--will-topic", "tinyscada/svc/poller/state", "--will-payload", "anon-will", "--will-retain"}},
	}
	for _, c := range refused {
		args := append([]string{"-h", h, "-p", p, "-t", "tinyscada/data/x", "-m", "refused-" + c.name}, c.args...)
		out, err := mosq(t, "mosquitto_pub", args...)
		if err == nil {
			t.Errorf("%s: mosquitto_pub %v was accepted: %s", c.name, args, out)
		}
		logs.wait(t, "refused client")
	}
	// The right password is accepted.
	out, err = mosq(t, "mosquitto_pub", "-h", h, "-p", p, "-u", "poller", "-P", password(t, cfg, "poller"), "-t", "tinyscada/data/meter2", "-m", "pub-ok")
	if err != nil {
		t.Errorf("poller credential refused: %v %s", err, out)
	}
	obs.waitFor(t, "tinyscada/data/meter2 pub-ok")
}

// TestOperatorOptionsFile: the operator's way documented in
// docs/operations.md, a mosquitto_pub options file that keeps the password
// off the command line (and out of ps), publishes a command; and the
// operator credential publishes nothing else, not even under
// svc/operator/.
func TestOperatorOptionsFile(t *testing.T) {
	t.Parallel()
	pub := testpeer.Need(t, "mosquitto_pub")
	cfg := testConfig(t)
	log, logs := newLogRecorder(t)
	b := startBroker(t, cfg, log)
	h, p := hostPort(t, b.addrs[0])
	obs := newRecorder(t, b.addrs[0], "tinyscada/#")
	// As documented: { echo '-u operator'; printf -- '-P '; cat …/operator; }
	dir := t.TempDir()
	cred, err := os.ReadFile(filepath.Join(credentials.Dir(cfg.StateDir), credentials.Operator))
	if err != nil {
		t.Fatal(err)
	}
	opts := append([]byte("-u operator\n-P "), cred...)
	if err := os.WriteFile(filepath.Join(dir, "mosquitto_pub"), opts, 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, pub, append([]string{"-h", h, "-p", p, "-q", "1"}, args...)...)
		cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+dir)
		out, err := cmd.CombinedOutput()
		t.Logf("mosquitto_pub %v: %v %s", args, err, out)
		return err
	}
	if err := run("-t", "tinyscada/cmd/restart/poller", "-m", "from-options-file"); err != nil {
		t.Errorf("operator command with the options file: %v", err)
	}
	obs.waitFor(t, "tinyscada/cmd/restart/poller from-options-file")
	if err := run("-t", "tinyscada/svc/operator/state", "-m", "operator-state"); err == nil {
		t.Error("the operator published its own svc/ state")
	}
	logs.wait(t, "denied publish", "topic", "tinyscada/svc/operator/state", "user", credentials.Operator)
	for _, m := range obs.all() {
		if strings.Contains(m, "operator-state") {
			t.Errorf("a denied publish was routed: %q", m)
		}
	}
}

// nonLoopbackIPv4 returns an address of this machine that is not loopback,
// or "".
func nonLoopbackIPv4() string {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return ""
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() && !n.IP.IsLinkLocalUnicast() {
			return n.IP.String()
		}
	}
	return ""
}

func TestAnonymousRefusedOnNonLoopbackListener(t *testing.T) {
	t.Parallel()
	testpeer.Need(t, "mosquitto_pub")
	ip := nonLoopbackIPv4()
	if ip == "" {
		t.Skip("this machine has no non-loopback IPv4 address; the rule is covered by TestIsLoopback and TestAuthenticate")
	}
	cfg := testConfig(t)
	cfg.Broker.Listen = []string{"127.0.0.1:0", net.JoinHostPort(ip, "0")}
	log, logs := newLogRecorder(t)
	b := startBroker(t, cfg, log)
	obs := newRecorder(t, b.addrs[0], "tinyscada/#")
	h, p := hostPort(t, b.addrs[1])
	out, err := mosq(t, "mosquitto_pub", "-h", h, "-p", p, "-t", "tinyscada/x", "-m", "anon")
	if err == nil {
		t.Errorf("anonymous client accepted on %s: %s", b.addrs[1], out)
	}
	logs.wait(t, "refused client", "reason", "anonymous client on a non-loopback listener")
	out, err = mosq(t, "mosquitto_pub", "-h", h, "-p", p, "-u", "poller", "-P", password(t, cfg, "poller"), "-t", "tinyscada/data/remote", "-m", "ok")
	if err != nil {
		t.Errorf("poller refused on %s: %v %s", b.addrs[1], err, out)
	}
	obs.waitFor(t, "tinyscada/data/remote ok")
}

func TestUnixSocket(t *testing.T) {
	t.Parallel()
	testpeer.Need(t, "mosquitto_sub")
	cfg := testConfig(t)
	sock := filepath.Join(t.TempDir(), "run", "broker.sock")
	cfg.Broker.UnixSocket = sock
	log, _ := newLogRecorder(t)
	b := startBroker(t, cfg, log)
	if b.addrs[1] != "unix:"+sock {
		t.Fatalf("addresses %v: want unix:%s second", b.addrs, sock)
	}
	// Anonymous is accepted on the socket.
	out, err := mosq(t, "mosquitto_sub", "--unix", sock, "-t", "tinyscada/svc/broker/state", "-C", "1", "-W", "10")
	if err != nil || !strings.Contains(out, `"state":"ready"`) {
		t.Errorf("mosquitto_sub --unix: %v %q", err, out)
	}
	// A role connects through shared/bus.
	c := dial(t, "unix:"+sock, "poller", password(t, cfg, "poller"))
	if err := c.Publish(context.Background(), bus.Message{Topic: "tinyscada/svc/poller/state", QoS: 1, Retain: true, Payload: []byte("via-unix")}); err != nil {
		t.Fatal(err)
	}
	out, err = mosq(t, "mosquitto_sub", "--unix", sock, "-t", "tinyscada/svc/poller/state", "-C", "1", "-W", "10")
	if err != nil || strings.TrimSpace(out) != "via-unix" {
		t.Errorf("retained via unix socket: %v %q", err, out)
	}
}

func TestUnixSocketPath(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	log, _ := newLogRecorder(t)

	// A stale socket (its server died without removing it) is replaced.
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	cfg := testConfig(t)
	cfg.Broker.UnixSocket = stale
	b := startBroker(t, cfg, log)

	// A live socket is not stolen.
	cfg2 := testConfig(t)
	cfg2.Broker.UnixSocket = stale
	_, err = start(context.Background(), cfg2, log)
	if !errors.Is(err, ErrAddrInUse) {
		t.Errorf("second broker on a live socket: %v, want ErrAddrInUse", err)
	}
	if c, err := net.Dial("unix", stale); err != nil {
		t.Errorf("first broker's socket gone: %v", err)
	} else {
		c.Close()
	}
	_ = b

	// A file that is not a socket is left alone.
	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(plain, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg3 := testConfig(t)
	cfg3.Broker.UnixSocket = plain
	_, err = start(context.Background(), cfg3, log)
	if err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("socket path on a regular file: %v, want a 'not a socket' error", err)
	}
	if b, _ := os.ReadFile(plain); string(b) != "keep" {
		t.Errorf("regular file at the socket path was changed: %q", b)
	}
}

func TestPortInUse(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	freeAddr := fmt.Sprintf("127.0.0.1:%d", testpeer.FreePort(t))

	cfg := testConfig(t)
	cfg.Broker.Listen = []string{freeAddr, taken.Addr().String()}
	log, _ := newLogRecorder(t)
	done := make(chan error, 1)
	go func() { done <- Run(context.Background(), cfg, log) }()
	select {
	case err = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run hangs on a port in use")
	}
	if !errors.Is(err, ErrAddrInUse) {
		t.Fatalf("Run = %v, want ErrAddrInUse", err)
	}
	want := "listen " + taken.Addr().String() + ": address already in use — another broker (mosquitto?) running?"
	if !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not say %q", err, want)
	}
	// The listener bound before the failure was released.
	ln, err := net.Listen("tcp", freeAddr)
	if err != nil {
		t.Errorf("first listener still bound after the failed start: %v", err)
	} else {
		ln.Close()
	}
}

// TestNotifyReadyAfterServing reads the broker's sd_notify datagrams from a
// real unixgram socket: READY=1 comes when the port accepts connections, and
// STATUS= lines follow as clients come and go.
func TestNotifyReadyAfterServing(t *testing.T) {
	sockPath := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sockPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sockPath)

	cfg := testConfig(t)
	log, _ := newLogRecorder(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, log) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	read := func() string {
		t.Helper()
		buf := make([]byte, 4096)
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("no notification: %v", err)
		}
		return string(buf[:n])
	}
	var addr string
	for addr == "" {
		msg := read()
		if !strings.Contains(msg, "READY=1") {
			continue
		}
		for _, line := range strings.Split(msg, "\n") {
			if s, ok := strings.CutPrefix(line, "STATUS=serving on "); ok {
				addr, _, _ = strings.Cut(s, ";")
			}
		}
		if addr == "" {
			t.Fatalf("READY=1 without the address in STATUS: %q", msg)
		}
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("READY=1 sent but %s does not accept connections: %v", addr, err)
		}
		c.Close()
	}
	dial(t, addr, "", "")
	for {
		msg := read()
		if strings.HasPrefix(msg, "STATUS=") && strings.Contains(msg, "; 1 clients") {
			break
		}
	}
}

// TestRetainedNeverExpires stores a retained message dated two days ago (the
// index keeps the time a message was stored) in the broker as configured, and
// in one with mochi's default maximum expiry of a day: the latter drops it
// within a second or two, ours keeps it. A probe in ours, an MQTT 5 message
// whose own expiry has passed, shows when ours has swept at least once since.
func TestRetainedNeverExpires(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	log, _ := newLogRecorder(t)
	old := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true, Qos: 1},
		TopicName:   "tinyscada/svc/poller/state",
		Payload:     []byte(`{"state":"ready"}`),
		Created:     time.Now().Add(-48 * time.Hour).Unix(),
	}
	probe := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Publish, Retain: true, Qos: 1},
		TopicName:       "tinyscada/svc/probe/state",
		Payload:         []byte(`{}`),
		ProtocolVersion: 5,
		Created:         time.Now().Unix(),
		Expiry:          time.Now().Add(-time.Second).Unix(),
	}
	retained := func(srv *mqtt.Server, pk packets.Packet) func() bool {
		return func() bool { return len(srv.Topics.Messages(pk.TopicName)) == 1 }
	}
	serve := func(expiry int64, pks ...packets.Packet) *mqtt.Server {
		srv, _, err := newServer(cfg, map[string]string{}, log)
		if err != nil {
			t.Fatal(err)
		}
		if expiry >= 0 {
			srv.Options.Capabilities.MaximumMessageExpiryInterval = expiry
		}
		for _, pk := range pks { // in order: a sweep that takes the probe saw old too
			srv.Topics.RetainMessage(pk)
		}
		if err := srv.Serve(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = srv.Close() })
		return srv
	}
	ours := serve(-1, old, probe)
	control := serve(24*60*60, old)
	if !testpeer.Until(10*time.Second, func() bool { return !retained(control, old)() }) {
		t.Fatal("control broker never expired the retained message; the test proves nothing")
	}
	testpeer.Eventually(t, 10*time.Second, "our broker's expiry sweep (the probe expired)", func() bool { return !retained(ours, probe)() })
	if !retained(ours, old)() {
		t.Error("retained message expired")
	}
}

func TestOptions(t *testing.T) {
	cfg := config.Default()
	cfg.Broker.SysInterval = config.Duration{}
	o := options(cfg, slog.New(slog.DiscardHandler))
	if o.SysTopicResendInterval < 1<<30 {
		t.Errorf("sys_interval 0: resend every %d s, want never", o.SysTopicResendInterval)
	}
	cfg.Broker.SysInterval = config.Duration{Duration: 30 * time.Second}
	cfg.Broker.MaxPending, cfg.Broker.MaxInflight, cfg.Broker.ClientBuffer, cfg.Broker.MaxPacketSize = 7, 9, 3000, 5000
	o = options(cfg, slog.New(slog.DiscardHandler))
	got := fmt.Sprint(o.SysTopicResendInterval, o.Capabilities.MaximumMessageExpiryInterval, o.Capabilities.MaximumClientWritesPending,
		o.Capabilities.MaximumInflight, o.Capabilities.ReceiveMaximum, o.ClientNetReadBufferSize, o.ClientNetWriteBufferSize, o.InlineClient,
		o.Capabilities.MaximumPacketSize)
	if want := "30 0 7 9 9 3000 3000 true 5000"; got != want {
		t.Errorf("options = %s, want %s", got, want)
	}
}

// selfSigned writes a self-signed certificate for ip and its key into dir.
func selfSigned(t *testing.T, dir, ip string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "tinyscada test"},
		IPAddresses:           []net.IP{net.ParseIP(ip)},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// TestTLSOnNonLoopbackListener: with a certificate configured, the
// non-loopback listener speaks TLS (mosquitto_pub with the certificate as CA
// publishes with a role's credential) and the loopback one stays plain.
func TestTLSOnNonLoopbackListener(t *testing.T) {
	t.Parallel()
	testpeer.Need(t, "mosquitto_pub")
	ip := nonLoopbackIPv4()
	if ip == "" {
		t.Skip("this machine has no non-loopback IPv4 address")
	}
	cfg := testConfig(t)
	cfg.Broker.Listen = []string{"127.0.0.1:0", net.JoinHostPort(ip, "0")}
	cfg.Broker.TLSCert, cfg.Broker.TLSKey = selfSigned(t, t.TempDir(), ip)
	log, _ := newLogRecorder(t)
	b := startBroker(t, cfg, log)
	obs := newRecorder(t, b.addrs[0], "tinyscada/#") // plain MQTT on loopback
	h, p := hostPort(t, b.addrs[1])
	out, err := mosq(t, "mosquitto_pub", "-h", h, "-p", p, "--cafile", cfg.Broker.TLSCert,
		"-u", "poller", "-P", password(t, cfg, "poller"), "-t", "tinyscada/data/tls", "-m", "over-tls")
	if err != nil {
		t.Fatalf("mosquitto_pub over TLS: %v %s", err, out)
	}
	obs.waitFor(t, "tinyscada/data/tls over-tls")
	out, err = mosq(t, "mosquitto_pub", "-h", h, "-p", p, "-u", "poller", "-P", password(t, cfg, "poller"),
		"-t", "tinyscada/data/tls", "-m", "plain")
	if err == nil {
		t.Errorf("plain MQTT accepted on the TLS listener: %s", out)
	}
}

func TestBadTLSFiles(t *testing.T) {
	cfg := testConfig(t)
	cfg.Broker.TLSCert = filepath.Join(t.TempDir(), "missing.pem")
	cfg.Broker.TLSKey = cfg.Broker.TLSCert
	log, _ := newLogRecorder(t)
	_, err := start(context.Background(), cfg, log)
	if err == nil || !strings.Contains(err.Error(), "missing.pem") {
		t.Errorf("start with a missing certificate: %v, want an error naming it", err)
	}
}

// TestCloseWithUnfinishedConnection: a connection that has not finished its
// CONNECT (or one a client opened again while the broker was closing) must
// not keep Run from returning; mochi waits for every connection it handed a
// goroutine to.
func TestCloseWithUnfinishedConnection(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	log, _ := newLogRecorder(t)
	ctx, cancel := context.WithCancel(context.Background())
	b, err := start(ctx, cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- b.run(ctx) }()
	c, err := net.Dial("tcp", b.addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte{0x10}); err != nil { // the first byte of a CONNECT
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // let the broker accept it (the test passes either way if it did not)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run does not return while a connection is half open")
	}
}

// The broker stops while clients keep attaching and leaving. Mochi's own
// way of disconnecting a closing listener's clients read-locks the client
// list twice, and a client attaching or leaving in between deadlocked the
// broker for good (it hung this package's test run for its 10 minutes):
// Close must return every time. The interleaving is a matter of chance, so
// this closes 16 listeners 40 times under churn, which caught the old code
// in 8 runs of 10 here.
func TestCloseWhileClientsComeAndGo(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	// Each closing listener takes the double read lock once: many of them.
	cfg.Broker.Listen = nil
	for i := range 16 {
		cfg.Broker.Listen = append(cfg.Broker.Listen, fmt.Sprintf("127.0.0.%d:0", i+1))
	}
	passwords, err := credentials.Ensure(cfg.StateDir, users())
	if err != nil {
		t.Fatal(err)
	}
	for try := range 40 {
		srv, lns, err := newServer(cfg, passwords, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		if err := srv.Serve(); err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for g := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					churn(lns[(g+i)%len(lns)].Address(), fmt.Sprintf("c%d-%d-%d", try, g, i))
				}
			}()
		}
		time.Sleep(time.Duration(5+try%10) * time.Millisecond)
		closed := make(chan struct{})
		go func() { _ = srv.Close(); close(closed) }()
		select {
		case <-closed:
		case <-time.After(5 * time.Second):
			t.Fatalf("close %d: the server does not stop while clients come and go", try+1)
		}
		close(stop)
		wg.Wait()
	}
}

// churn connects as id with an MQTT 3.1.1 CONNECT, waits for the CONNACK
// and hangs up.
func churn(addr, id string) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	vh := []byte{0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 60, 0, byte(len(id))}
	pk := append([]byte{0x10, byte(len(vh) + len(id))}, vh...)
	if _, err := c.Write(append(pk, id...)); err != nil {
		return
	}
	var ack [4]byte
	_, _ = io.ReadFull(c, ack[:])
}
