package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
)

// These tests run the client against Debian's mosquitto: a broker we did
// not write.

// logRecorder is a slog handler that keeps the messages logged.
type logRecorder struct {
	mu    sync.Mutex
	lines []string
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logRecorder) WithGroup(string) slog.Handler            { return l }
func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	s := r.Level.String() + " " + r.Message
	r.Attrs(func(a slog.Attr) bool { s += " " + a.String(); return true })
	l.mu.Lock()
	l.lines = append(l.lines, s)
	l.mu.Unlock()
	return nil
}

// has returns the first line containing s, or "".
func (l *logRecorder) has(s string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		if strings.Contains(line, s) {
			return line
		}
	}
	return ""
}

func addr(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }

// dial connects to the broker at port with o's settings (Address, a client
// id and a 10 s deadline filled in) and closes the client when the test
// ends.
func dial(t *testing.T, port int, o Options) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if o.Address == "" {
		o.Address = addr(port)
	}
	if o.ClientID == "" {
		o.ClientID = fmt.Sprintf("%s-%d", t.Name(), time.Now().UnixNano())
	}
	if o.RetryMax == 0 {
		o.RetryMax = 200 * time.Millisecond
	}
	c, err := Dial(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

type msg struct{ topic, payload string }

// collect returns a handler that sends what it gets on the channel.
func collect() (Handler, chan msg) {
	ch := make(chan msg, 1000)
	return func(topic string, payload []byte) { ch <- msg{topic, string(payload)} }, ch
}

func expect(t *testing.T, ch <-chan msg, want ...msg) {
	t.Helper()
	for _, w := range want {
		select {
		case got := <-ch:
			if got != w {
				t.Fatalf("got %v; want %v", got, w)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("waiting for %v: nothing came", w)
		}
	}
}

func publish(t *testing.T, c *Client, topic string, qos byte, payload string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Publish(ctx, Message{Topic: topic, QoS: qos, Payload: []byte(payload)}); err != nil {
		t.Fatalf("publish %s: %v", topic, err)
	}
}

// eventually waits up to 15 s for cond.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: not after 15s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestPubSub(t *testing.T) {
	t.Parallel()
	port := testpeer.FreePort(t)
	testpeer.Mosquitto(t, port)
	c := dial(t, port, Options{CleanSession: true})
	h, got := collect()
	for _, f := range []string{"ps/+/x", "ps/exact", "ps/deep/#"} {
		if err := c.Subscribe(f, 1, h); err != nil {
			t.Fatal(err)
		}
	}
	for i, tc := range []struct {
		topic string
		match bool
	}{
		{"ps/a/x", true},
		{"ps/a/y", false},
		{"ps/exact", true},
		{"ps/exact/more", false},
		{"ps/deep", true},
		{"ps/deep/1/2/3", true},
	} {
		for _, qos := range []byte{0, 1} {
			payload := fmt.Sprint(i, qos)
			publish(t, c, tc.topic, qos, payload)
			if tc.match {
				expect(t, got, msg{tc.topic, payload})
			}
		}
	}
	// Only what matched came, in order: a marker is next.
	publish(t, c, "ps/exact", 1, "end")
	expect(t, got, msg{"ps/exact", "end"})

	// Another client's messages, and mosquitto_pub's.
	other := dial(t, port, Options{CleanSession: true})
	publish(t, other, "ps/b/x", 1, "from other")
	expect(t, got, msg{"ps/b/x", "from other"})
	if out, err := testpeer.Pub(t, port, "-q", "1", "-t", "ps/c/x", "-m", "from mosquitto_pub"); err != nil {
		t.Fatalf("mosquitto_pub: %v %s", err, out)
	}
	expect(t, got, msg{"ps/c/x", "from mosquitto_pub"})

	// What we publish reaches mosquitto_sub (retained: whenever it
	// subscribes).
	if err := c.Publish(context.Background(), Message{Topic: "ps/out/1", QoS: 1, Retain: true, Payload: []byte("to mosquitto_sub")}); err != nil {
		t.Fatal(err)
	}
	sub := testpeer.Sub(t, port, "-v", "-t", "ps/out/#")
	testpeer.Expect(t, sub, 10*time.Second, "our message", func(l string) bool { return l == "ps/out/1 to mosquitto_sub" })
}

// A retained message reaches a later subscriber; $-topics are not matched
// by a leading wildcard.
func TestRetainedAndDollarTopics(t *testing.T) {
	t.Parallel()
	port := testpeer.FreePort(t)
	testpeer.Mosquitto(t, port)
	c := dial(t, port, Options{CleanSession: true})
	for i, qos := range []byte{0, 1} {
		err := c.Publish(context.Background(), Message{Topic: fmt.Sprint("rt/", i), QoS: qos, Retain: true, Payload: []byte("kept")})
		if err != nil {
			t.Fatal(err)
		}
	}
	publish(t, c, "rt/2", 1, "not kept")
	later := dial(t, port, Options{CleanSession: true})
	all, allGot := collect()
	if err := later.Subscribe("#", 0, all); err != nil {
		t.Fatal(err)
	}
	h, got := collect()
	if err := later.Subscribe("rt/+", 1, h); err != nil {
		t.Fatal(err)
	}
	expect(t, got, msg{"rt/0", "kept"}, msg{"rt/1", "kept"})
	// $SYS messages come (mosquitto publishes them at once to a new
	// subscriber of $SYS/#) but not to "#".
	sys, sysGot := collect()
	if err := later.Subscribe("$SYS/broker/version", 0, sys); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-sysGot:
		if !strings.HasPrefix(m.payload, "mosquitto") {
			t.Errorf("$SYS/broker/version = %q", m.payload)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no $SYS/broker/version")
	}
	publish(t, c, "rt/end", 1, "end")
	for m := range allGot {
		if strings.HasPrefix(m.topic, "$") {
			t.Errorf("%q delivered to the subscription of #", m.topic)
		}
		if m.topic == "rt/end" {
			break
		}
	}
}

// The will is published when the connection ends without DISCONNECT, not
// after Close.
func TestWill(t *testing.T) {
	t.Parallel()
	port := testpeer.FreePort(t)
	testpeer.Mosquitto(t, port)
	watch := dial(t, port, Options{CleanSession: true})
	h, got := collect()
	if err := watch.Subscribe("will/#", 1, h); err != nil {
		t.Fatal(err)
	}
	connects := make(chan struct{}, 10)
	c := dial(t, port, Options{CleanSession: true, Will: &Message{Topic: "will/c", QoS: 1, Payload: []byte("lost")},
		OnConnect: func(*Client) { connects <- struct{}{} }})
	<-connects

	// A crash, as the broker sees it: the socket closes, no DISCONNECT.
	c.cur.Load().fail(errors.New("test: the socket breaks"))
	expect(t, got, msg{"will/c", "lost"})
	select {
	case <-connects:
	case <-time.After(15 * time.Second):
		t.Fatal("no reconnect")
	}

	c.Close()
	marker := dial(t, port, Options{CleanSession: true})
	publish(t, marker, "will/c", 1, "marker")
	expect(t, got, msg{"will/c", "marker"})
}

// When the broker dies and comes back, the client reconnects by itself,
// subscribes again and runs OnConnect again.
func TestReconnect(t *testing.T) {
	t.Parallel()
	port := testpeer.FreePort(t)
	broker := testpeer.Mosquitto(t, port)
	connects := make(chan struct{}, 10)
	log := &logRecorder{}
	c := dial(t, port, Options{CleanSession: true, Log: slog.New(log), OnConnect: func(*Client) { connects <- struct{}{} }})
	<-connects
	if !c.Connected() {
		t.Fatal("not connected after Dial")
	}
	h, got := collect()
	if err := c.Subscribe("rc/#", 1, h); err != nil {
		t.Fatal(err)
	}
	publish(t, c, "rc/1", 1, "before")
	expect(t, got, msg{"rc/1", "before"})

	_ = broker.Process.Kill()
	_ = broker.Wait()
	eventually(t, "Connected() false", func() bool { return !c.Connected() })
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Publish(ctx, Message{Topic: "rc/x", QoS: 1}); err == nil {
		t.Error("QoS 1 Publish without a connection and with an ended context succeeded")
	}
	if err := c.Publish(ctx, Message{Topic: "rc/x", QoS: 0}); err != nil {
		t.Errorf("QoS 0 Publish while reconnecting: %v; want nil (dropped)", err)
	}
	if err := c.Subscribe("rc2/#", 1, h); err == nil {
		t.Error("Subscribe while disconnected succeeded")
	}

	testpeer.Mosquitto(t, port)
	select {
	case <-connects:
	case <-time.After(15 * time.Second):
		t.Fatal("OnConnect not run again after the broker came back")
	}
	if !c.Connected() {
		t.Error("not connected in OnConnect")
	}
	// The new broker knows nothing: both subscriptions were made again.
	publish(t, c, "rc/2", 1, "after")
	publish(t, c, "rc2/3", 1, "kept while down")
	expect(t, got, msg{"rc/2", "after"})
	select {
	case m := <-got:
		if m != (msg{"rc2/3", "kept while down"}) {
			log.mu.Lock()
			t.Fatalf("got %v; want rc2/3; log:\n%s", m, strings.Join(log.lines, "\n"))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no rc2/3")
	}
	if log.has("lost broker connection") == "" {
		t.Error(`no "lost broker connection" warning logged`)
	}
}

// With a stable id and CleanSession false, what the broker queued while
// the client was away reaches DefaultHandler, before Subscribe.
func TestPersistentSession(t *testing.T) {
	t.Parallel()
	port := testpeer.FreePort(t)
	testpeer.Mosquitto(t, port)
	o := Options{ClientID: "persistent", CleanSession: false}
	first := dial(t, port, o)
	if err := first.Subscribe("ps/#", 1, func(string, []byte) {}); err != nil {
		t.Fatal(err)
	}
	first.Close()

	pub := dial(t, port, Options{CleanSession: true})
	for i := range 5 {
		publish(t, pub, "ps/q", 1, fmt.Sprint(i))
	}
	def, defGot := collect()
	o.DefaultHandler = def
	again := dial(t, port, o)
	expect(t, defGot, msg{"ps/q", "0"}, msg{"ps/q", "1"}, msg{"ps/q", "2"}, msg{"ps/q", "3"}, msg{"ps/q", "4"})

	h, got := collect()
	if err := again.Subscribe("ps/#", 1, h); err != nil {
		t.Fatal(err)
	}
	publish(t, pub, "ps/q", 1, "subscribed")
	expect(t, got, msg{"ps/q", "subscribed"})
}

// slowFast is a client of a new mosquitto with a 2 s keep-alive (1 s
// leaves the ping 0.5 s of margin: too tight on a loaded machine), a
// handler on slow/# that waits for release, and a collector on fast/#.
type slowFast struct {
	port     int
	c        *Client
	connects atomic.Int32
	log      logRecorder
	release  chan struct{}
	slow     chan string
	got      chan msg
}

func newSlowFast(t *testing.T, slowQoS, fastQoS byte) *slowFast {
	t.Helper()
	sf := &slowFast{port: testpeer.FreePort(t), release: make(chan struct{}), slow: make(chan string, 100)}
	testpeer.Mosquitto(t, sf.port)
	sf.c = dial(t, sf.port, Options{
		CleanSession: true,
		KeepAlive:    2 * time.Second,
		Log:          slog.New(&sf.log),
		OnConnect:    func(*Client) { sf.connects.Add(1) },
	})
	if err := sf.c.Subscribe("slow/#", slowQoS, func(_ string, p []byte) { <-sf.release; sf.slow <- string(p) }); err != nil {
		t.Fatal(err)
	}
	h, got := collect()
	sf.got = got
	if err := sf.c.Subscribe("fast/#", fastQoS, h); err != nil {
		t.Fatal(err)
	}
	return sf
}

// end releases the slow handler, checks it gets want in order, and that
// the first connection stayed up all along.
func (sf *slowFast) end(t *testing.T, want ...string) {
	t.Helper()
	close(sf.release)
	for _, w := range want {
		if p := <-sf.slow; p != w {
			t.Fatalf("slow handler got %q; want %q", p, w)
		}
	}
	if n := sf.connects.Load(); n != 1 {
		t.Errorf("%d connections; want 1", n)
	}
	if l := sf.log.has("lost broker connection"); l != "" {
		t.Errorf("logged %q", l)
	}
}

// A handler that blocks for two keep-alive intervals (longer than the
// broker's grace of one and a half) holds up neither
// the connection nor the other subscriptions' QoS 0 messages, and loses
// nothing. (QoS 1 messages of the others would stop once mosquitto's
// in-flight window of 20 is used up: the acknowledgements wait in order
// behind the blocked one; TestPubacksInOrder.)
func TestBlockingHandler(t *testing.T) {
	t.Parallel()
	sf := newSlowFast(t, 1, 0)
	publish(t, sf.c, "slow/1", 1, "a")
	publish(t, sf.c, "slow/1", 1, "b")
	for i := range 40 {
		publish(t, sf.c, "fast/1", 1, fmt.Sprint(i))
		expect(t, sf.got, msg{"fast/1", fmt.Sprint(i)})
		time.Sleep(100 * time.Millisecond) // 40 × 100 ms: two keep-alives
		if !sf.c.Connected() {
			t.Fatal("disconnected while a handler blocks")
		}
	}
	sf.end(t, "a", "b")
}

// When a subscription's queue is full the reader waits, and with it every
// subscription; the connection stays up through two keep-alive
// intervals and a quarter (the client keeps pinging, and its own timeout does not fire
// while the reader is held), and nothing is lost or reordered.
func TestFullQueueHoldsReader(t *testing.T) {
	t.Parallel()
	sf := newSlowFast(t, 0, 0)
	for _, f := range []string{"slow/#", "fast/#"} {
		sf.c.mu.Lock()
		q := &sf.c.subs[f].q
		sf.c.mu.Unlock()
		q.mu.Lock()
		q.limit = 2
		q.mu.Unlock()
	}
	pub := dial(t, sf.port, Options{CleanSession: true})
	var want []string
	for i := range 10 {
		publish(t, pub, "slow/1", 1, fmt.Sprint(i))
		want = append(want, fmt.Sprint(i))
	}
	publish(t, pub, "fast/1", 1, "behind")
	eventually(t, "the reader blocked", func() bool { c := sf.c.cur.Load(); return c != nil && c.isHeld() })
	time.Sleep(4500 * time.Millisecond) // two keep-alive intervals and a quarter, past the broker's grace of one and a half
	if !sf.c.Connected() || sf.connects.Load() != 1 {
		t.Fatalf("connected %v after %d connections; want the first one still up", sf.c.Connected(), sf.connects.Load())
	}
	sf.end(t, want...)
	expect(t, sf.got, msg{"fast/1", "behind"})
}

// A message that matches several subscriptions reaches each handler.
func TestOverlappingSubscriptions(t *testing.T) {
	t.Parallel()
	port := testpeer.FreePort(t)
	testpeer.Mosquitto(t, port)
	c := dial(t, port, Options{CleanSession: true})
	h1, got1 := collect()
	h2, got2 := collect()
	if err := c.Subscribe("ov/#", 1, h1); err != nil {
		t.Fatal(err)
	}
	if err := c.Subscribe("ov/+", 1, h2); err != nil {
		t.Fatal(err)
	}
	publish(t, c, "ov/a", 1, "both")
	publish(t, c, "ov/a/b", 1, "one")
	expect(t, got1, msg{"ov/a", "both"})
	expect(t, got2, msg{"ov/a", "both"})
	// mosquitto may send a message once per matching subscription: each
	// handler sees it then once per copy.
	for m := range got1 {
		if m.payload == "one" {
			break
		}
	}
}

// Dial with credentials mosquitto refuses gives up when its context ends,
// naming the refusal.
func TestRefusedByMosquitto(t *testing.T) {
	t.Parallel()
	bin := testpeer.Need(t, "mosquitto")
	passwd := testpeer.Need(t, "mosquitto_passwd")
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "passwd")
	if out, err := exec.Command(passwd, "-b", "-c", pwFile, "user", "right").CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_passwd: %v %s", err, out)
	}
	port := testpeer.FreePort(t)
	conf := filepath.Join(dir, "mosquitto.conf")
	// As root, mosquitto drops to its own user before it reads the
	// password file, which that user cannot reach in the test's directory.
	body := fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous false\npassword_file %s\npersistence false\nuser root\nlog_dest stderr\nlog_type error\n", port, pwFile)
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-c", conf)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	if err := testpeer.WaitPort(addr(port), 10*time.Second); err != nil {
		t.Fatalf("%v; mosquitto: %s", err, stderr.String())
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := Dial(ctx, Options{Address: addr(port), ClientID: "refused", RetryMax: 100 * time.Millisecond,
		Credentials: func() (string, string, error) { return "user", "wrong", nil }})
	if err == nil || !strings.Contains(err.Error(), "not authorized") {
		t.Fatalf("Dial with a wrong password: %v; want the refusal named", err)
	}
	c := dial(t, port, Options{CleanSession: true, Credentials: func() (string, string, error) { return "user", "right", nil }})
	publish(t, c, "ok", 1, "in")
}

// Close leaves no goroutine behind. Not parallel: it counts the process's
// goroutines, and go test runs the parallel tests after this one.
func TestCloseLeavesNoGoroutines(t *testing.T) {
	port := testpeer.FreePort(t)
	testpeer.Mosquitto(t, port)
	before := runtime.NumGoroutine()
	for range 3 {
		def, _ := collect()
		c := dial(t, port, Options{CleanSession: false, ClientID: "leak", DefaultHandler: def, OnConnect: func(*Client) {}})
		h, got := collect()
		for _, f := range []string{"leak/a", "leak/b"} {
			if err := c.Subscribe(f, 1, h); err != nil {
				t.Fatal(err)
			}
		}
		publish(t, c, "leak/a", 1, "x")
		publish(t, c, "leak/b", 0, "y")
		expect(t, got, msg{"leak/a", "x"}, msg{"leak/b", "y"})
		c.Close()
		if err := c.Publish(context.Background(), Message{Topic: "leak/a", QoS: 1}); err == nil {
			t.Error("Publish after Close succeeded")
		}
		if err := c.Publish(context.Background(), Message{Topic: "leak/a", QoS: 0}); err == nil {
			t.Error("QoS 0 Publish after Close succeeded")
		}
		if c.Connected() {
			t.Error("Connected() after Close")
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines after Close, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Send keeps many QoS 1 messages in flight on one connection: they arrive
// in the order sent, and every Wait sees its acknowledgement.
func TestSendPipelines(t *testing.T) {
	t.Parallel()
	port := testpeer.FreePort(t)
	testpeer.Mosquitto(t, port)
	c := dial(t, port, Options{CleanSession: true})
	h, got := collect()
	if err := c.Subscribe("pipe/#", 1, h); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const n = 500
	sent := make([]Sent, n)
	for i := range sent {
		s, err := c.Send(ctx, Message{Topic: "pipe/x", QoS: 1, Payload: []byte(strconv.Itoa(i))})
		if err != nil {
			t.Fatal(err)
		}
		sent[i] = s
	}
	for i, s := range sent {
		if err := s.Wait(ctx); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	for i := range n {
		expect(t, got, msg{"pipe/x", strconv.Itoa(i)})
	}
	// QoS 0: nothing to wait for.
	s, err := c.Send(ctx, Message{Topic: "pipe/y", Payload: []byte("q0")})
	if err != nil || s.Wait(ctx) != nil {
		t.Fatalf("QoS 0 Send: %v", err)
	}
	expect(t, got, msg{"pipe/y", "q0"})
}
