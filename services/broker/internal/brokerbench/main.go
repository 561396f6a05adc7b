// Command brokerbench measures the tinyscada broker against Debian's
// mosquitto with the same client code in the same run: one publisher to one
// subscriber, QoS 1, fixed-size payloads carrying a send timestamp, reporting
// msgs/s, p50/p99 latency and each broker's RSS under load; plus the
// tinyscada broker's idle RSS and its time from start to READY=1.
//
//	go build -o /tmp/tinyscada ./cmd/tinyscada
//	go run ./services/broker/internal/brokerbench -bin /tmp/tinyscada
package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/tinyscada/tinyscada/shared/topics"
)

// brokerEnv is added to the environment of every tinyscada broker started.
var brokerEnv []string

func main() {
	bin := flag.String("bin", "", "tinyscada binary to run as `tinyscada broker` (required)")
	mosq := flag.String("mosquitto", "/usr/sbin/mosquitto", "mosquitto broker binary; empty to skip the comparison")
	n := flag.Int("n", 50000, "messages per run")
	size := flag.Int("size", 100, "payload size in bytes (at least 8)")
	window := flag.Int("window", 100, "messages published and not yet received at most (closed loop), or not yet acknowledged (-open)")
	open := flag.Bool("open", false, "open loop: the publisher waits only for the broker's acknowledgements, so a slower subscriber makes the broker queue and drop")
	rounds := flag.Int("rounds", 5, "runs per broker, alternating; the round with the median rate is reported")
	startups := flag.Int("startups", 20, "starts of `tinyscada broker` to time until READY=1; 0 to skip")
	clientBuffer := flag.String("client-buffer", "", "broker.client_buffer for the tinyscada broker (default: built-in)")
	maxPending := flag.Int("max-pending", 0, "broker.max_pending (0: built-in default)")
	maxInflight := flag.Int("max-inflight", 0, "broker.max_inflight (0: built-in default)")
	flag.Func("broker-env", "`KEY=VALUE` added to the tinyscada broker's environment (e.g. GOGC=50); repeatable", func(v string) error {
		if !strings.Contains(v, "=") {
			return errors.New("want KEY=VALUE")
		}
		brokerEnv = append(brokerEnv, v)
		return nil
	})
	flag.Parse()
	if *bin == "" || *size < 8 {
		flag.Usage()
		os.Exit(2)
	}
	b := &bench{n: *n, size: *size, window: *window, open: *open}
	if err := b.main(*bin, *mosq, *rounds, *startups, *clientBuffer, *maxPending, *maxInflight); err != nil {
		fmt.Fprintln(os.Stderr, "brokerbench:", err)
		os.Exit(1)
	}
}

type bench struct {
	n, size, window int
	open            bool
	dir             string
}

// result is one run against one broker.
type result struct {
	rate     float64 // messages per second, end to end
	p50, p99 time.Duration
	rssMax   int64 // kB, sampled every 5 ms
	received int
}

func (b *bench) main(bin, mosq string, rounds, startups int, clientBuffer string, maxPending, maxInflight int) error {
	dir, err := os.MkdirTemp("", "brokerbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	b.dir = dir

	var extra []string
	if clientBuffer != "" {
		extra = append(extra, fmt.Sprintf("client_buffer = %q", clientBuffer))
	}
	if maxPending > 0 {
		extra = append(extra, fmt.Sprintf("max_pending = %d", maxPending))
	}
	if maxInflight > 0 {
		extra = append(extra, fmt.Sprintf("max_inflight = %d", maxInflight))
	}

	ts, err := b.startTinyscada(bin, extra)
	if err != nil {
		return err
	}
	defer ts.stop()
	user := string(topics.Poller)
	pass, err := os.ReadFile(filepath.Join(dir, "state", "credentials", user))
	if err != nil {
		return err
	}
	password := strings.TrimSpace(string(pass))

	brokers := []*proc{ts}
	if mosq != "" {
		m, err := b.startMosquitto(mosq)
		if err != nil {
			return err
		}
		defer m.stop()
		brokers = append(brokers, m)
	}
	time.Sleep(time.Second) // settle before the idle RSS
	for _, p := range brokers {
		p.idle = rss(p.cmd.Process.Pid, "VmRSS")
	}

	loop := "closed loop"
	if b.open {
		loop = "open loop"
	}
	fmt.Printf("1 publisher -> 1 subscriber, QoS 1, %d-byte payloads, %d messages per run, %s, window %d, %d rounds\n",
		b.size, b.n, loop, b.window, rounds)
	if len(extra) > 0 || len(brokerEnv) > 0 {
		fmt.Printf("tinyscada broker: config %s, environment %s\n", strings.Join(extra, ", "), strings.Join(brokerEnv, " "))
	}
	all := map[string][]result{}
	rssMax := map[string]int64{} // the highest RSS of all rounds
	for r := 0; r < rounds; r++ {
		for _, p := range brokers {
			res, err := b.run(p, user, password)
			if err != nil {
				return fmt.Errorf("%s: %w", p.name, err)
			}
			fmt.Printf("  round %d %-9s %8.0f msg/s  p50 %8s  p99 %8s  RSS max %6d kB  lost %d\n",
				r+1, p.name, res.rate, res.p50.Round(time.Microsecond), res.p99.Round(time.Microsecond), res.rssMax, b.n-res.received)
			all[p.name] = append(all[p.name], res)
			rssMax[p.name] = max(rssMax[p.name], res.rssMax)
		}
	}
	best := map[string]result{} // the round with the median rate
	for name, rs := range all {
		slices.SortFunc(rs, func(a, b result) int { return cmp.Compare(a.rate, b.rate) })
		best[name] = rs[len(rs)/2]
	}
	fmt.Println()
	fmt.Printf("%-10s %10s %10s %10s %12s %12s %12s\n", "broker", "msg/s", "p50", "p99", "RSS idle kB", "RSS load kB", "VmHWM kB")
	for _, p := range brokers {
		r := best[p.name]
		fmt.Printf("%-10s %10.0f %10s %10s %12d %12d %12d\n", p.name, r.rate,
			r.p50.Round(time.Microsecond), r.p99.Round(time.Microsecond), p.idle, rssMax[p.name], rss(p.cmd.Process.Pid, "VmHWM"))
	}
	if len(brokers) == 2 {
		t, m := best[brokers[0].name], best[brokers[1].name]
		fmt.Printf("tinyscada/mosquitto: throughput %.2fx, p50 %.2fx, p99 %.2fx, RSS under load %.2fx (median round of each; RSS the max of all rounds)\n",
			t.rate/m.rate, float64(t.p50)/float64(m.p50), float64(t.p99)/float64(m.p99), float64(rssMax[brokers[0].name])/float64(rssMax[brokers[1].name]))
	}

	if startups > 0 {
		ts.stop()
		if err := b.timeStartups(bin, startups); err != nil {
			return err
		}
	}
	return nil
}

// proc is a broker child process.
type proc struct {
	name string
	addr string
	cmd  *exec.Cmd
	idle int64
	once sync.Once
}

func (p *proc) stop() {
	p.once.Do(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = p.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			_ = p.cmd.Process.Kill()
			<-done
		}
	})
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func (b *bench) writeConfig(addr string, extra []string) (string, error) {
	cfg := fmt.Sprintf("version = 1\nstate_dir = %q\n[log]\nlevel = \"warn\"\n[broker]\nlisten = [%q]\n%s\n",
		filepath.Join(b.dir, "state"), addr, strings.Join(extra, "\n"))
	path := filepath.Join(b.dir, "tinyscada.toml")
	return path, os.WriteFile(path, []byte(cfg), 0o600)
}

// notifySocket opens a unixgram socket to pass as NOTIFY_SOCKET.
func (b *bench) notifySocket(name string) (*net.UnixConn, string, error) {
	path := filepath.Join(b.dir, name)
	_ = os.Remove(path)
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	return c, path, err
}

// waitReady reads notifications until READY=1.
func waitReady(c *net.UnixConn, timeout time.Duration) error {
	buf := make([]byte, 4096)
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	for {
		n, err := c.Read(buf)
		if err != nil {
			return fmt.Errorf("no READY=1: %w", err)
		}
		if strings.Contains(string(buf[:n]), "READY=1") {
			return nil
		}
	}
}

func (b *bench) startTinyscada(bin string, extra []string) (*proc, error) {
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	path, err := b.writeConfig(addr, extra)
	if err != nil {
		return nil, err
	}
	ns, nsPath, err := b.notifySocket("notify")
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	cmd := exec.Command(bin, string(topics.Broker), "-config", path)
	cmd.Env = append(append(os.Environ(), brokerEnv...), "NOTIFY_SOCKET="+nsPath)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{name: "tinyscada", addr: addr, cmd: cmd}
	if err := waitReady(ns, 10*time.Second); err != nil {
		p.stop()
		return nil, fmt.Errorf("tinyscada broker: %w", err)
	}
	return p, nil
}

func (b *bench) startMosquitto(bin string) (*proc, error) {
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	host, port, _ := net.SplitHostPort(addr)
	conf := filepath.Join(b.dir, "mosquitto.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("listener %s %s\nallow_anonymous true\npersistence false\n", port, host)), 0o600); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "-c", conf)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{name: "mosquitto", addr: addr, cmd: cmd}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return p, nil
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("mosquitto never accepted on %s: %w", addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// rss returns a /proc/<pid>/status field in kB, or 0.
func rss(pid int, field string) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	return 0
}

func connect(addr, id, user, pass string, orderMatters bool) (mqtt.Client, error) {
	o := mqtt.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).
		SetCleanSession(true).SetOrderMatters(orderMatters).SetAutoReconnect(false).
		SetUsername(user).SetPassword(pass).SetConnectTimeout(5 * time.Second)
	c := mqtt.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return nil, errors.New("connect timed out")
	}
	return c, tok.Error()
}

// run sends b.n messages from a publisher to a subscriber through p.
func (b *bench) run(p *proc, user, pass string) (result, error) {
	topic := "tinyscada/data/bench"
	lat := make([]time.Duration, 0, b.n)
	var mu sync.Mutex
	var got, lastAt atomic.Int64
	all := make(chan struct{})
	credit := make(chan struct{}, b.window)
	sub, err := connect(p.addr, "bench-sub", "", "", true)
	if err != nil {
		return result{}, fmt.Errorf("subscriber: %w", err)
	}
	defer sub.Disconnect(100)
	tok := sub.Subscribe(topic, 1, func(_ mqtt.Client, m mqtt.Message) {
		sent := int64(binary.BigEndian.Uint64(m.Payload()))
		now := time.Now().UnixNano()
		lastAt.Store(now)
		d := time.Duration(now - sent)
		mu.Lock()
		lat = append(lat, d)
		mu.Unlock()
		if got.Add(1) == int64(b.n) {
			close(all)
		}
		if !b.open {
			<-credit
		}
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		return result{}, fmt.Errorf("subscribe: %v", tok.Error())
	}
	pub, err := connect(p.addr, "bench-pub", user, pass, true)
	if err != nil {
		return result{}, fmt.Errorf("publisher: %w", err)
	}
	defer pub.Disconnect(100)

	ctx, stopSampling := context.WithCancel(context.Background())
	var rssMax atomic.Int64
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			if v := rss(p.cmd.Process.Pid, "VmRSS"); v > rssMax.Load() {
				rssMax.Store(v)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()

	// Closed loop: at most b.window messages published and not yet
	// received, so no broker queue grows past its limits and drops. Open
	// loop: at most b.window publishes not yet acknowledged by the broker;
	// a subscriber slower than the publisher makes the broker queue (up to
	// its limits) and drop.
	payload := make([]byte, b.size)
	var last mqtt.Token
	acks := make([]mqtt.Token, 0, b.window)
	start := time.Now()
	var pubErr error
	for i := 0; i < b.n && pubErr == nil; i++ {
		if b.open {
			if len(acks) == b.window {
				if t := acks[0]; !t.WaitTimeout(10*time.Second) || t.Error() != nil {
					pubErr = fmt.Errorf("publish %d not acknowledged: %v", i, t.Error())
				}
				acks = acks[1:]
			}
		} else {
			select {
			case credit <- struct{}{}:
			case <-time.After(10 * time.Second):
				pubErr = fmt.Errorf("message %d: no message received for 10 s", i)
			}
		}
		buf := slices.Clone(payload)
		binary.BigEndian.PutUint64(buf, uint64(time.Now().UnixNano()))
		last = pub.Publish(topic, 1, false, buf)
		acks = append(acks, last)
	}
	if last != nil && pubErr == nil && (!last.WaitTimeout(10*time.Second) || last.Error() != nil) {
		pubErr = fmt.Errorf("last publish not acknowledged: %v", last.Error())
	}
	// Wait for the last message, or until nothing arrived for 2 s (a
	// broker that dropped messages).
	for last, idle := got.Load(), 0; idle < 20; idle++ {
		select {
		case <-all:
			idle = 20
		case <-time.After(100 * time.Millisecond):
			if now := got.Load(); now != last {
				last, idle = now, 0
			}
		}
	}
	elapsed := time.Unix(0, lastAt.Load()).Sub(start)
	stopSampling()
	<-sampled
	if pubErr != nil {
		return result{}, pubErr
	}
	n := int(got.Load())
	if n == 0 {
		return result{}, errors.New("no message arrived")
	}
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(lat)
	return result{
		rate:     float64(n) / elapsed.Seconds(),
		p50:      lat[len(lat)/2],
		p99:      lat[len(lat)*99/100],
		rssMax:   rssMax.Load(),
		received: n,
	}, nil
}

// timeStartups starts `tinyscada broker` count times and reports the time
// from starting the process to READY=1.
func (b *bench) timeStartups(bin string, count int) error {
	var ds []time.Duration
	for i := 0; i < count; i++ {
		addr, err := freePort()
		if err != nil {
			return err
		}
		path, err := b.writeConfig(addr, nil)
		if err != nil {
			return err
		}
		ns, nsPath, err := b.notifySocket("notify-start")
		if err != nil {
			return err
		}
		cmd := exec.Command(bin, string(topics.Broker), "-config", path)
		cmd.Env = append(append(os.Environ(), brokerEnv...), "NOTIFY_SOCKET="+nsPath)
		t0 := time.Now()
		if err := cmd.Start(); err != nil {
			ns.Close()
			return err
		}
		err = waitReady(ns, 10*time.Second)
		d := time.Since(t0)
		ns.Close()
		p := &proc{cmd: cmd}
		p.stop()
		if err != nil {
			return fmt.Errorf("start %d: %w", i+1, err)
		}
		ds = append(ds, d)
	}
	slices.Sort(ds)
	fmt.Printf("\ntinyscada broker start to READY=1, %d starts: median %s, min %s, max %s\n",
		count, ds[len(ds)/2].Round(10*time.Microsecond), ds[0].Round(10*time.Microsecond), ds[len(ds)-1].Round(10*time.Microsecond))
	return nil
}
