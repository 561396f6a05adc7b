package logger

import (
	"context"
	"time"

	"github.com/tinyscada/tinyscada/shared/bus"
	"github.com/tinyscada/tinyscada/shared/store"
)

// stopTimeout bounds each step of the way out when the logger is stopped
// (SIGTERM): committing what it holds, then acknowledging it. Both fit
// well within the units' TimeoutStopSec=15s and tinyscada run's 10 s
// before SIGKILL.
const stopTimeout = 5 * time.Second

// stopContext is the context of a step of the way out, once ctx (the
// role's) has ended: bounded by stopTimeout.
func stopContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
}

// beatsOnStop hands the store what the producer's heartbeats said since
// the last tick (its last data_seq, its "stopping", a previous run's end
// from its run file) when the logger is stopping, so that it is saved even
// when nothing is left to commit: a run known only from heartbeats gets
// its row, and the next start records its lost end as a gap.
func (l *Logger) beatsOnStop(ctx context.Context) {
	if err := l.handBeats(ctx); err != nil {
		l.log.Warn("stopping: recording the producer's runs failed", "err", err)
	}
}

// flushOnStop commits batch (the open batch, or what was queued) when the
// logger is stopping, and reports whether it committed. A stop is
// clean and the producer stops first (`tinyscada run` and the units stop
// the poller before the logger), so what the logger holds is the poller's
// last messages: committing them here, rather than letting the poller's
// outbox and run file turn them into a gap, is what makes a clean stop
// lose nothing. Whatever does not commit within ctx (a locked database, a
// full disk) stays unacknowledged, as always.
func (l *Logger) flushOnStop(ctx context.Context, batch []store.Item) bool {
	if len(batch) == 0 {
		return false
	}
	if err := l.commit(ctx, batch); err != nil {
		l.log.Warn("stopping: the last batch did not commit; it stays unacknowledged", "messages", len(batch), "err", err)
		return false
	}
	return true
}

// publishOnStop publishes, once the write loop has ended, the
// acknowledgements and the committed row of what flushOnStop committed,
// bounded by stopTimeout. The bus is still connected: service.RunWith
// closes it only after the role's loop returned.
func (l *Logger) publishOnStop(ctx context.Context, pub bus.Conn) {
	if !pub.Connected() {
		return
	}
	sctx, cancel := stopContext(ctx)
	defer cancel()
	l.publishAcks(sctx, pub, -1)
}
