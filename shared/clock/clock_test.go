package clock

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

var uuid = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

func TestBootID(t *testing.T) {
	id, err := BootID()
	if err != nil {
		t.Fatal(err)
	}
	if !uuid.MatchString(id) {
		t.Errorf("BootID() = %q, want a UUID", id)
	}
	again, _ := BootID()
	if again != id {
		t.Errorf("boot id changed from %q to %q", id, again)
	}
}

func TestReadBootIDErrors(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "boot_id")
	if err := os.WriteFile(empty, []byte("\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{empty, filepath.Join(dir, "missing")} {
		if id, err := readBootID(path); err == nil || id != "" {
			t.Errorf("readBootID(%s) = %q, %v; want an error", path, id, err)
		}
	}
}

// uptime reads /proc/uptime, which counts on the same clock as CLOCK_BOOTTIME.
func uptime(t *testing.T) time.Duration {
	t.Helper()
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		t.Skipf("no /proc/uptime: %v", err)
	}
	secs, err := strconv.ParseFloat(strings.Fields(string(b))[0], 64)
	if err != nil {
		t.Fatal(err)
	}
	return time.Duration(secs * float64(time.Second))
}

func TestSystem(t *testing.T) {
	c := System()
	id, err := BootID()
	if err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	up1 := uptime(t)
	s1 := c.Now()
	up2 := uptime(t)
	s2 := c.Now()
	after := time.Now()

	if s1.Boot != id || s2.Boot != id {
		t.Errorf("Boot = %q, %q; want %q", s1.Boot, s2.Boot, id)
	}
	if s1.Wall.Before(before.Round(0)) || s2.Wall.After(after.Round(0)) || s2.Wall.Before(s1.Wall) {
		t.Errorf("wall times %v, %v not within [%v, %v] in order", s1.Wall, s2.Wall, before, after)
	}
	if s1.Wall != s1.Wall.Round(0) {
		t.Error("Wall carries a monotonic reading")
	}
	// /proc/uptime is rounded down to 10 ms.
	if s1.Mono < up1 || s1.Mono > up2+10*time.Millisecond {
		t.Errorf("Mono = %v, want between uptimes %v and %v: not time since boot", s1.Mono, up1, up2)
	}
	if s2.Mono < s1.Mono {
		t.Errorf("Mono went back: %v then %v", s1.Mono, s2.Mono)
	}
	if d := c.Since(s1); d < s2.Mono-s1.Mono {
		t.Errorf("Since(s1) = %v, less than %v already passed", d, s2.Mono-s1.Mono)
	}
	other := s1
	other.Boot = "another-boot"
	if d := c.Since(other); d != Forever {
		t.Errorf("Since(stamp of another boot) = %v, want Forever", d)
	}
}

func TestFake(t *testing.T) {
	wall := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	f := NewFake(Stamp{Wall: wall, Mono: time.Hour, Boot: "b1"})
	start := f.Now()

	steps := []struct {
		name     string
		do       func()
		wantWall time.Time
		wantMono time.Duration
		since    time.Duration
	}{
		{"advance", func() { f.Advance(5 * time.Second) }, wall.Add(5 * time.Second), time.Hour + 5*time.Second, 5 * time.Second},
		{"step back", func() { f.Step(-24 * time.Hour) }, wall.Add(5*time.Second - 24*time.Hour), time.Hour + 5*time.Second, 5 * time.Second},
		{"step forward", func() { f.Step(48 * time.Hour) }, wall.Add(5*time.Second + 24*time.Hour), time.Hour + 5*time.Second, 5 * time.Second},
		{"reboot", func() { f.Reboot("b2", time.Second) }, wall.Add(5*time.Second + 24*time.Hour), time.Second, Forever},
		{"set", func() { f.Set(Stamp{Wall: wall, Mono: 2 * time.Hour, Boot: "b1"}) }, wall, 2 * time.Hour, time.Hour},
	}
	for _, s := range steps {
		s.do()
		now := f.Now()
		if !now.Wall.Equal(s.wantWall) || now.Mono != s.wantMono {
			t.Errorf("%s: Now() = %v / %v, want %v / %v", s.name, now.Wall, now.Mono, s.wantWall, s.wantMono)
		}
		if got := f.Since(start); got != s.since {
			t.Errorf("%s: Since(start) = %v, want %v", s.name, got, s.since)
		}
	}
}

func TestFakeZeroValue(t *testing.T) {
	var f Fake
	f.Advance(time.Second)
	if got := f.Since(Stamp{}); got != time.Second {
		t.Errorf("Since = %v, want 1s", got)
	}
}

func TestFakeConcurrent(t *testing.T) {
	var c Clock = NewFake(Stamp{Boot: "b"})
	f := c.(*Fake)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for range 1000 {
				f.Advance(time.Millisecond)
			}
		}()
		go func() {
			defer wg.Done()
			for range 1000 {
				c.Now()
				c.Since(Stamp{})
			}
		}()
	}
	wg.Wait()
	if got := f.Now().Mono; got != 4*time.Second {
		t.Errorf("Mono = %v after 4000 advances of 1ms, want 4s", got)
	}
}

func BenchmarkSystemNow(b *testing.B) {
	c := System()
	for b.Loop() {
		c.Now()
	}
}
