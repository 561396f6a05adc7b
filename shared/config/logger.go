package config

import (
	"path/filepath"
	"strings"
	"time"
)

// Logger configures the logger role: the SQLite database of readings, how
// readings are batched, how big the database may grow and how clocks are
// judged. docs/logger.md explains each choice.
type Logger struct {
	// DB is the database file; a relative path is taken relative to
	// state_dir (see Path). Default "readings.db".
	DB string `toml:"db"`
	// Synchronous is SQLite's synchronous mode: "full" (default; a commit
	// is on disk before it is acknowledged, even across a power cut) or
	// "normal" (faster; survives any crash of a process, but a power cut
	// may lose the last acknowledged transactions).
	Synchronous string `toml:"synchronous"`
	// BatchReadings is how many readings one transaction holds at most.
	BatchReadings int `toml:"batch_readings"`
	// BatchDelay is how long the first message of a batch may wait for
	// more before the batch is committed: the commit interval, the
	// latency to durable storage (and to the uplink), traded against the
	// bytes written to flash per reading (docs/logger.md). Until then the
	// readings are in the logger's memory and in the poller's outbox.
	BatchDelay Duration `toml:"batch_delay"`
	// BusyTimeout is how long one attempt waits for a database lock held by
	// another process before the logger backs off and retries.
	BusyTimeout Duration `toml:"busy_timeout"`
	// RetryMax caps the backoff between attempts to commit when the
	// database is locked or the disk is full.
	RetryMax Duration `toml:"retry_max"`
	// MaxDBSize caps the database (main file and write-ahead log): above
	// 90% of it the oldest rows are deleted, uploaded ones first.
	MaxDBSize Size `toml:"max_db_size"`
	// Retention deletes rows older than this (judged from the newest
	// trusted reading, not from the wall clock); 0 keeps rows until
	// max_db_size needs the room.
	Retention Duration `toml:"retention"`
	// Reserve is the size of a spare file kept beside the database and
	// deleted when the disk is full, so that old rows can still be deleted
	// to make room; 0 keeps no spare file.
	Reserve Size `toml:"reserve"`
	// ClockStep is how far wall time minus monotonic time may move within a
	// boot before the logger records a clock step.
	ClockStep Duration `toml:"clock_step"`
	// ClockSync makes the kernel's synchronisation status (adjtimex) part
	// of judging the clock: readings taken while the kernel says the clock
	// is unsynchronised are marked untrusted. Turn it off on devices that
	// have no time synchronisation at all.
	ClockSync bool `toml:"clock_sync"`
	// GapAfter is how long a hole in a producer's sequence numbers may stay
	// open after that producer restarted (so the hole can no longer fill)
	// before it is recorded as a gap.
	GapAfter Duration `toml:"gap_after"`
	// Pending caps the data messages held in memory while a batch cannot
	// be committed (database locked, disk full); beyond it the logger stops
	// taking messages and the broker and the poller's outbox hold them.
	Pending int `toml:"pending"`
	// LogInterval is how often the same problem (malformed payloads, a
	// locked database) is logged at most; repeats are counted.
	LogInterval Duration `toml:"log_interval"`
}

// Path returns the database path: DB itself when absolute, else DB
// relative to stateDir.
func (l *Logger) Path(stateDir string) string {
	if filepath.IsAbs(l.DB) {
		return l.DB
	}
	return filepath.Join(stateDir, l.DB)
}

// defaultLogger is the logger part of Default().
func defaultLogger() Logger {
	return Logger{
		DB:            "readings.db",
		Synchronous:   "full",
		BatchReadings: 10000,
		BatchDelay:    Duration{20 * time.Second},
		BusyTimeout:   Duration{200 * time.Millisecond},
		RetryMax:      Duration{5 * time.Second},
		MaxDBSize:     64 << 20,
		Reserve:       256 << 10,
		ClockStep:     Duration{2 * time.Second},
		ClockSync:     true,
		GapAfter:      Duration{30 * time.Second},
		Pending:       4096,
		LogInterval:   Duration{time.Minute},
	}
}

func (l *Logger) validate(ch *checker) {
	switch {
	case l.DB == "":
		ch.errorf("db", "must not be empty")
	case strings.IndexByte(l.DB, 0) >= 0:
		ch.errorf("db", "%q holds a NUL byte", l.DB)
	case strings.HasSuffix(l.DB, "/"):
		ch.errorf("db", "%q names a directory (want a file)", l.DB)
	}
	ch.oneOf("synchronous", l.Synchronous, "full", "normal")
	ch.intRange("batch_readings", l.BatchReadings, 1, 100000)
	ch.atLeast("batch_delay", l.BatchDelay, time.Millisecond)
	ch.atMost("batch_delay", l.BatchDelay, time.Minute)
	ch.atMost("busy_timeout", l.BusyTimeout, time.Minute)
	ch.atLeast("retry_max", l.RetryMax, 10*time.Millisecond)
	ch.sizeRange("max_db_size", l.MaxDBSize, 1<<20, 1<<40)
	if l.Retention.Duration != 0 {
		ch.atLeast("retention", l.Retention, time.Minute)
	}
	ch.sizeRange("reserve", l.Reserve, 0, l.MaxDBSize/4)
	ch.atLeast("clock_step", l.ClockStep, 10*time.Millisecond)
	ch.atLeast("gap_after", l.GapAfter, time.Second)
	ch.intRange("pending", l.Pending, 1, 1<<20)
	ch.positive("log_interval", l.LogInterval)
}
