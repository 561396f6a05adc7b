//go:build system

package systemdtest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/internal/testpeer"
	"github.com/tinyscada/tinyscada/shared/topics"
)

// cleanStops stops tinyscada.target 20 times, each at a random moment of
// the half second after a data message, and starts it again: each time
// systemd stops the poller before the logger begins to stop, and the
// logger before the broker (the After= order, reversed); and in the end
// every seq seen on the bus is within its run's committed mark, below
// which each seq is stored or in a gap record, never both.
func (s *stack) cleanStops(t *testing.T) {
	const tries = 20
	sys := s.sys
	bin := testpeer.Need(t, "mosquitto_sub")
	testpeer.Need(t, "sqlite3")
	seen := map[string]uint64{} // run → highest seq on the bus
	var runs []string
	note := func(l string) {
		_, payload, _ := strings.Cut(l, " ")
		var m struct {
			Run string `json:"run"`
			Seq uint64 `json:"seq"`
		}
		if json.Unmarshal([]byte(payload), &m) != nil || m.Run == "" || m.Seq == 0 {
			t.Errorf("bad data message %q", l)
			return
		}
		if _, ok := seen[m.Run]; !ok {
			runs = append(runs, m.Run)
		}
		seen[m.Run] = max(seen[m.Run], m.Seq)
	}
	// stopOrder checks, in systemd's own journal, that stopping role a was
	// over ("Stopped") before b began to stop ("Stopping"), in the last
	// stop. (The units' timestamps cannot tell: an inactive unit that
	// nothing references is unloaded, and reloaded with none.)
	stopOrder := func(a, b topics.Role) {
		t.Helper()
		if !s.hasRole[a] || !s.hasRole[b] {
			return
		}
		out, _ := sys.Exec("journalctl", "--no-pager", "-o", "cat", "-n", "400", "_PID=1")
		aDone := strings.LastIndex(out, "Stopped "+unit(a))
		bBegan := strings.LastIndex(out, "Stopping "+unit(b))
		if aDone < 0 || bBegan < 0 || bBegan < aDone {
			t.Errorf("%s began to stop (journal offset %d) before %s had stopped (%d)", b, bBegan, a, aDone)
		}
	}
	var stopTotal time.Duration
	for try := range tries {
		ctx, cancel := context.WithCancel(context.Background())
		cmd := s.sys.NetCommand(ctx, bin, "-h", "127.0.0.1", "-p", strconv.Itoa(s.port), "-v", "-t", "tinyscada/data/#")
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 1024)
		go func() {
			defer close(lines)
			sc := bufio.NewScanner(out)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				lines <- sc.Text()
			}
		}()
		select {
		case l, ok := <-lines:
			if !ok {
				cancel()
				_ = cmd.Wait()
				t.Fatalf("stop %d: the data subscriber ended before a message", try+1)
			}
			note(l)
		case <-time.After(30 * time.Second):
			cancel()
			_ = cmd.Wait()
			t.Fatalf("stop %d: no data message within 30s:\n%s", try+1, sys.Journal(unit(topics.Poller), 20))
		}
		stopAt := time.After(time.Duration(rand.IntN(500)) * time.Millisecond)
	wait:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					break wait
				}
				note(l)
			case <-stopAt:
				break wait
			}
		}
		start := time.Now()
		sys.MustExec("systemctl", "stop", "tinyscada.target")
		stopTotal += time.Since(start)
		// What the poller still published while it stopped counts too;
		// mosquitto_sub ends with the broker.
		closed := time.After(30 * time.Second)
	drain:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					break drain
				}
				note(l)
			case <-closed:
				t.Errorf("stop %d: the data subscriber did not end with the broker", try+1)
				break drain
			}
		}
		cancel()
		_ = cmd.Wait()
		// systemctl returns with the target's own stop job; a role's
		// may still be finishing (seen once in 20 stops: the broker
		// "deactivating"), so each gets a few seconds to be inactive.
		for _, r := range s.roles {
			st := ""
			for wait := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
				if st = sys.Show(unit(r), "ActiveState"); st == "inactive" || time.Now().After(wait) {
					break
				}
			}
			if st != "inactive" {
				t.Errorf("stop %d: %s is %s 5 s after the target stopped", try+1, r, st)
			}
		}
		stopOrder(topics.Poller, topics.Logger)
		stopOrder(topics.Logger, topics.Broker)
		stopOrder(topics.Poller, topics.Broker)

		sys.MustExec("systemctl", "start", "tinyscada-simulate@sim.service", "tinyscada.target")
		for _, r := range s.roles {
			if st := sys.Show(unit(r), "ActiveState"); st != "active" {
				t.Fatalf("start %d: %s is %s after the target started:\n%s", try+2, r, st, sys.Journal(unit(r), 30))
			}
		}
	}
	t.Logf("figure: systemctl stop tinyscada.target: %v on average over %d stops", (stopTotal / tries).Round(time.Millisecond), tries)

	// The runs' ends are recorded once gap_after (3 × ack_timeout at
	// least) has passed after the next run's heartbeats said how far they
	// got.
	committed := func(run string) uint64 {
		n, _ := strconv.ParseUint(s.query(fmt.Sprintf(`SELECT committed FROM run WHERE run = '%s'`, run)), 10, 64)
		return n
	}
	sys.WaitFor(2*time.Minute, "a run's committed mark below a seq seen on the bus (lost without a gap record)", func() bool {
		for _, run := range runs {
			if committed(run) < seen[run] {
				return false
			}
		}
		return true
	})
	var stored, lost int
	for _, run := range runs {
		q := func(sql string) int {
			n, _ := strconv.Atoi(s.query(fmt.Sprintf(sql, run)))
			return n
		}
		n := q(`SELECT count(DISTINCT s.seq) FROM sample s JOIN run r ON r.id = s.run WHERE r.run = '%s'`)
		maxSeq := q(`SELECT coalesce(max(s.seq), 0) FROM sample s JOIN run r ON r.id = s.run WHERE r.run = '%s'`)
		gapSeqs := q(`SELECT coalesce(sum(g.last_seq - g.first_seq + 1), 0) FROM gap g JOIN run r ON r.id = g.run WHERE g.kind = 'seq' AND r.run = '%s'`)
		overlap := q(`SELECT count(*) FROM sample s JOIN run r ON r.id = s.run JOIN gap g ON g.run = s.run
			WHERE r.run = '%s' AND g.kind = 'seq' AND s.seq BETWEEN g.first_seq AND g.last_seq`)
		c := int(committed(run))
		if overlap != 0 || n+gapSeqs != c || maxSeq > c {
			t.Errorf("run %s: %d seqs stored (highest %d), %d in gap records, %d stored inside a gap; committed %d; seen on the bus up to %d",
				run, n, maxSeq, gapSeqs, overlap, c, seen[run])
		}
		stored += n
		lost += gapSeqs
	}
	t.Logf("figure: %d clean stops of tinyscada.target: %d runs, %d messages stored, %d in gap records", tries, len(runs), stored, lost)
	s.waitOK(time.Now(), time.Minute, "after the clean stops")
}
