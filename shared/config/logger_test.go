package config

import (
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestLoggerDefaultsValid(t *testing.T) {
	c, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c.Logger, Default().Logger) {
		t.Errorf("validation changed the defaults:\n%+v\nwant\n%+v", c.Logger, Default().Logger)
	}
	if got, want := c.Logger.Path(c.StateDir), filepath.Join(c.StateDir, "readings.db"); got != want {
		t.Errorf("Path = %q, want %q", got, want)
	}
	l := Logger{DB: "/var/lib/x.db"}
	if got := l.Path("/state"); got != "/var/lib/x.db" {
		t.Errorf("absolute Path = %q", got)
	}
}

func TestLoggerGood(t *testing.T) {
	c, err := Parse("l.toml", []byte(doc(
		"version = 1",
		"[logger]",
		"db = '/data/r.db'",
		"synchronous = 'normal'",
		"batch_readings = 500",
		"batch_delay = '50ms'",
		"max_db_size = '4MiB'",
		"retention = '720h'",
		"reserve = 0",
		"clock_sync = false",
	)))
	if err != nil {
		t.Fatal(err)
	}
	l := c.Logger
	if l.DB != "/data/r.db" || l.Synchronous != "normal" || l.BatchReadings != 500 ||
		l.BatchDelay.Duration != 50*time.Millisecond || l.MaxDBSize != 4<<20 ||
		l.Retention.Duration != 720*time.Hour || l.Reserve != 0 || l.ClockSync {
		t.Errorf("logger = %+v", l)
	}
	if l.GapAfter != Default().Logger.GapAfter {
		t.Errorf("gap_after not defaulted: %v", l.GapAfter)
	}
}

var loggerBadCases = []struct {
	name string
	doc  string
	want []want
}{
	{"every key wrong", doc(
		"version = 1",            // 1
		"[logger]",               // 2
		"db = ''",                // 3
		"synchronous = 'off'",    // 4
		"batch_readings = 0",     // 5
		"batch_delay = '0s'",     // 6
		"busy_timeout = '2m'",    // 7
		"retry_max = '1ms'",      // 8
		"max_db_size = '512KiB'", // 9
		"retention = '10s'",      // 10
		"reserve = '1MiB'",       // 11
		"clock_step = '1ms'",     // 12
		"gap_after = '10ms'",     // 13
		"pending = 0",            // 14
		"log_interval = '0s'",    // 15
	), []want{
		{3, "logger.db", "must not be empty"},
		{4, "logger.synchronous", `"off" is not one of full, normal`},
		{5, "logger.batch_readings", "out of range"},
		{6, "logger.batch_delay", "too short"},
		{7, "logger.busy_timeout", "too long"},
		{8, "logger.retry_max", "too short"},
		{9, "logger.max_db_size", "out of range"},
		{10, "logger.retention", "too short"},
		{11, "logger.reserve", "out of range"},
		{12, "logger.clock_step", "too short"},
		{13, "logger.gap_after", "too short"},
		{14, "logger.pending", "out of range"},
		{15, "logger.log_interval", "more than 0s"},
	}},
	{"directory", doc(
		"version = 1",
		"[logger]",
		"db = 'data/'",
	), []want{{3, "logger.db", "names a directory"}}},
	{"unknown key", doc(
		"version = 1",
		"[logger]",
		"max_size = '1MiB'",
	), []want{{3, "logger.max_size", "unknown"}}},
}

func TestLoggerBad(t *testing.T) {
	for _, tc := range loggerBadCases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("l.toml", []byte(tc.doc))
			if err == nil {
				t.Fatalf("no error; parsed %+v", c.Logger)
			}
			got := Errors(err)
			if len(got) != len(tc.want) {
				t.Fatalf("got %d errors, want %d:\n%v", len(got), len(tc.want), err)
			}
			for i, w := range tc.want {
				g := got[i]
				if g.Line != w.line || g.Key != w.key || !strings.Contains(g.Msg, w.msg) {
					t.Errorf("error %d = %q\nwant line %d, key %q, message with %q", i, g, w.line, w.key, w.msg)
				}
			}
		})
	}
}
