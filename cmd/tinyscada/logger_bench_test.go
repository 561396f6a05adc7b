package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/benchdata"
	"github.com/tinyscada/tinyscada/internal/testpeer"
	"github.com/tinyscada/tinyscada/shared/bus"
	"github.com/tinyscada/tinyscada/shared/config"
	"github.com/tinyscada/tinyscada/shared/service"
)

// procStat returns the resident set size (VmRSS), its peak (VmHWM), both in
// KiB, and the CPU time used (utime+stime) of process pid.
func procStat(t *testing.T, pid int) (rss, hwm int64, cpu time.Duration) {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(status), "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && f[0] == "VmRSS:" {
			rss, _ = strconv.ParseInt(f[1], 10, 64)
		}
		if len(f) >= 2 && f[0] == "VmHWM:" {
			hwm, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	_, after, _ := strings.Cut(string(stat), ") ")
	f := strings.Fields(after)
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	const clkTck = 100 // USER_HZ on Linux
	return rss, hwm, time.Duration(ut+st) * time.Second / clkTck
}

// TestLoggerResources measures the real logger process (started by
// `tinyscada run`) at 5000 readings/s (625 data messages of 8 readings a
// second) for 20 s: its RSS and its CPU time per reading. Behind
// TINYSCADA_BENCH=1.
func TestLoggerResources(t *testing.T) {
	if os.Getenv("TINYSCADA_BENCH") == "" {
		t.Skip("set TINYSCADA_BENCH=1 to measure the logger's RSS and CPU at 5000 readings/s (20 s)")
	}
	testpeer.Need(t, "mosquitto_sub")
	for _, mode := range []string{"normal", "full"} {
		t.Run(mode, func(t *testing.T) {
			port := testpeer.FreePort(t)
			cfgPath, _ := writeConfig(t, port, "roles = [\"broker\", \"logger\"]\n[logger]\nclock_sync = false\nsynchronous = \""+mode+"\"\n")
			startRun(t, cfgPath)
			if err := testpeer.WaitPort(fmt.Sprintf("127.0.0.1:%d", port), 15*time.Second); err != nil {
				t.Fatal(err)
			}
			w := watch(t, port)
			pid := w.readyPID(t, "logger", 0)
			cfg, err := config.Load(cfgPath)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			p, err := service.Start(ctx, "poller", cfg, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			var mu sync.Mutex
			var acked uint64
			p.Bus.Subscribe(p.Topics.Ack("poller"), 1, func(_ string, b []byte) {
				var a struct{ Seq uint64 }
				if json.Unmarshal(b, &a) == nil {
					mu.Lock()
					acked = max(acked, a.Seq)
					mu.Unlock()
				}
			})
			idleRSS, _, _ := procStat(t, pid)
			const rate, dur = 625, 20 * time.Second
			boot := "7d9c3ab4-6a1e-4f55-9a57-3c1f0c5e2b11"
			start := time.Now()
			_, _, cpu0 := procStat(t, pid)
			var seq uint64
			var maxRSS int64
			tick := time.NewTicker(16 * time.Millisecond)
			defer tick.Stop()
			for time.Since(start) < dur {
				<-tick.C
				want := uint64(time.Since(start).Seconds() * rate)
				for ; seq < want; seq++ {
					now := time.Now()
					v := float64(seq%1000) / 7
					payload := fmt.Appendf(nil, `{"run":"res","seq":%d,"t":%d,"m":%d,"b":%q,"v":{"voltage":%.2f,"current":%.3f,"power":%.1f,"energy":%d,"frequency":49.98,"ct_ratio":100,"breaker_closed":true,"alarm":false}}`,
						seq+1, now.UnixMilli(), int64(time.Since(start))+int64(time.Hour), boot, 230+v/100, 12+v/1000, 2768+v, 123400+seq/10)
					if err := p.Bus.Publish(ctx, bus.Message{Topic: p.Topics.Data(fmt.Sprint("dev", seq%4)), QoS: 1, Payload: payload}); err != nil {
						t.Fatal(err)
					}
				}
				if rss, _, _ := procStat(t, pid); rss > maxRSS {
					maxRSS = rss
				}
			}
			deadline := time.Now().Add(30 * time.Second)
			for {
				mu.Lock()
				a := acked
				mu.Unlock()
				if a >= seq {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("acknowledged %d of %d", a, seq)
				}
				time.Sleep(10 * time.Millisecond)
			}
			elapsed := time.Since(start)
			rss, hwm, cpu1 := procStat(t, pid)
			readings := float64(seq * 8)
			t.Logf("synchronous=%s: %d messages, %.0f readings in %s (%.0f readings/s)", mode, seq, readings, elapsed.Round(time.Millisecond), readings/elapsed.Seconds())
			t.Logf("logger RSS: idle %d KiB, max under load %d KiB, now %d KiB, peak (VmHWM) %d KiB", idleRSS, maxRSS, rss, hwm)
			t.Logf("logger CPU: %s = %.2f µs per reading (%.1f%% of one core)", cpu1-cpu0,
				float64((cpu1-cpu0).Microseconds())/readings, 100*(cpu1-cpu0).Seconds()/elapsed.Seconds())
		})
	}
}

// BenchmarkIngestProcesses is services/logger's BenchmarkIngestBroker with
// the processes as deployed: `tinyscada run` starts the broker (its own
// process, one Go thread) and the logger (its own process); this test
// process publishes as the poller would. b.N is the number of readings.
// Compare with services/logger's BenchmarkRawInsert in the same command:
//
//	go test -run XXX -bench 'RawInsert|Ingest' -benchtime 1000000x ./services/logger ./cmd/tinyscada
func BenchmarkIngestProcesses(b *testing.B) {
	for _, mode := range []string{"normal", "full"} {
		b.Run(mode, func(b *testing.B) {
			port := testpeer.FreePort(b)
			cfgPath, _ := writeConfig(b, port, `roles = ["broker", "logger"]
[logger]
clock_sync = false
batch_readings = 1000
# As BenchmarkIngestBroker: the run's last, partial batch must not wait
# the default 500ms (that would be a tenth of a 1M-reading run).
batch_delay = "20ms"
max_db_size = "4GiB"
synchronous = "`+mode+`"
`)
			cmd := exec.Command(binary(b), "run", "-config", cfgPath)
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			defer func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() }()
			if err := testpeer.WaitPort(fmt.Sprintf("127.0.0.1:%d", port), 15*time.Second); err != nil {
				b.Fatal(err)
			}
			cfg, err := config.Load(cfgPath)
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			p, err := service.Start(ctx, "poller", cfg, slog.New(slog.DiscardHandler))
			if err != nil {
				b.Fatal(err)
			}
			defer p.Bus.Close()
			var mu sync.Mutex
			acked := map[string]uint64{}
			if err := p.Bus.Subscribe(p.Topics.Ack("poller"), 1, func(_ string, m []byte) {
				var a struct {
					Run string
					Seq uint64
				}
				if json.Unmarshal(m, &a) == nil {
					mu.Lock()
					acked[a.Run] = max(acked[a.Run], a.Seq)
					mu.Unlock()
				}
			}); err != nil {
				b.Fatal(err)
			}
			ack := func(run string) func() uint64 {
				return func() uint64 { mu.Lock(); defer mu.Unlock(); return acked[run] }
			}
			topic := p.Topics.Data("meter")
			// The logger is up once it acknowledges a first message.
			warm := benchdata.NewRound(1).Payloads("warm", 1)
			deadline := time.Now().Add(20 * time.Second)
			for ack("warm")() < 1 {
				if time.Now().After(deadline) {
					b.Fatal("the logger never acknowledged a first message")
				}
				_ = p.Bus.Publish(ctx, bus.Message{Topic: topic, QoS: 1, Payload: warm[0]})
				time.Sleep(50 * time.Millisecond)
			}
			run := fmt.Sprint("bench", b.N)
			payloads := benchdata.NewRound(3).Payloads(run, b.N/benchdata.PointsPerRound+1)
			benchdata.Publish(b, ctx, p.Bus, topic, payloads, ack(run))
		})
	}
}
