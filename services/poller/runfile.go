package poller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/tinyscada/tinyscada/shared/atomicfile"
)

// The outbox lives in memory: a poller killed while the logger is not
// acknowledging loses it. The logger learns how far a run got from the
// heartbeats' data_seq, but not what the run made while its heartbeats
// could not reach it (broker down, logger down). So while messages wait
// longer than ack_timeout, the poller notes its run and data_seq in
// RunFileName under state_dir, at most once per ack_timeout and only when
// data_seq moved; the next run reads it and its heartbeats carry it as
// prev_run and prev_data_seq, from which the logger records the dead run's
// lost end as a gap. When the logger keeps up nothing is written; a full
// outbox stops data_seq, and the writes with it. A clean stop (SIGTERM)
// writes it once more at exit if anything is still unacknowledged
// (noteRunAtExit): what the logger did not commit before it stopped too is
// then recorded as a gap at the next start, never lost silently.

// RunFileName is the poller's state file in state_dir.
const RunFileName = "poller-run.json"

// RunRecord is the content of RunFileName.
type RunRecord struct {
	Run     string `json:"run"`
	DataSeq uint64 `json:"data_seq"`
	At      int64  `json:"at"` // when written, Unix ms
}

// ReadRunRecord reads the run file at path: (nil, nil) if there is none.
func ReadRunRecord(path string) (*RunRecord, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var r RunRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if r.Run == "" {
		return nil, fmt.Errorf("%s: no run", path)
	}
	return &r, nil
}

// noteRun writes the run file every ack_timeout while the outbox holds
// messages older than ack_timeout, until ctx ends.
func (p *Poller) noteRun(ctx context.Context) {
	t := time.NewTicker(p.cfg.AckTimeout.Duration)
	defer t.Stop()
	var written uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		st := p.out.Stats(now)
		if st.Depth == 0 || st.Oldest <= p.cfg.AckTimeout.Duration || st.Seq == written {
			continue
		}
		if err := p.writeRunFile(st.Seq, now); err != nil {
			if ok, n := p.limiter.Check("run file", now); ok {
				p.log.Warn("cannot note the run's progress: a kill now would lose the outbox without a gap record",
					"file", p.runFile, "err", err, "suppressed", n)
			}
			continue
		}
		if written == 0 {
			p.log.Info("the logger is not acknowledging: noting the run's progress so that a kill loses nothing silently",
				"file", p.runFile, "data_seq", st.Seq, "outbox", st.Depth)
		}
		written = st.Seq
	}
}

// noteRunAtExit writes the run file when the poller stops with messages
// still unacknowledged in its outbox (they go with the process): after
// every port and the sender stopped, so data_seq is the run's last. An
// empty outbox writes nothing: the logger has everything.
func (p *Poller) noteRunAtExit() {
	now := time.Now()
	st := p.out.Stats(now)
	if st.Depth == 0 {
		return
	}
	if err := p.writeRunFile(st.Seq, now); err != nil {
		p.log.Error("stopping with messages unacknowledged, and the run file cannot be written: the logger will not know they are lost",
			"file", p.runFile, "outbox", st.Depth, "data_seq", st.Seq, "err", err)
		return
	}
	p.log.Info("stopping with messages unacknowledged: noted in the run file, the next start records what the logger did not commit as a gap",
		"file", p.runFile, "outbox", st.Depth, "data_seq", st.Seq)
}

// writeRunFile writes the run file: this run made seqs up to seq.
func (p *Poller) writeRunFile(seq uint64, now time.Time) error {
	b, _ := json.Marshal(RunRecord{Run: p.run, DataSeq: seq, At: now.UnixMilli()})
	if err := os.MkdirAll(filepath.Dir(p.runFile), 0o700); err != nil {
		return err
	}
	return atomicfile.WriteFile(p.runFile, b, 0o600)
}
