package main

import (
	"bufio"
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	_ "modernc.org/sqlite" // driver "sqlite"
)

// stored is what the logger's database holds of some time.
type stored struct {
	// Readings is the rows of the reading table: values stored (points that
	// could not be read are in bad, not counted).
	Readings int64
	// Bad counts the points of those samples that could not be read.
	Bad int64
	// Samples counts the data messages (poll rounds) of each device.
	Samples map[string]int64
}

// countStored counts the readings and the samples per device in the
// database at path whose samples were stamped (wall time, Unix ms) in
// [from, to). The database is opened read-only beside the logger that
// writes it; the SQL is on the schema of docs/logger.md, not through the
// logger's code, so that the bench measures any build with that schema.
func countStored(ctx context.Context, path string, from, to int64) (stored, error) {
	s := stored{Samples: map[string]int64{}}
	db, err := openRO(path)
	if err != nil {
		return s, err
	}
	defer db.Close()
	// One read transaction, so the counts are of the same moment.
	tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return s, fmt.Errorf("%s: %w", path, err)
	}
	defer tx.Rollback()
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM sample s JOIN reading r ON r.sample = s.id
		WHERE s.t >= ? AND s.t < ?`, from, to).Scan(&s.Readings); err != nil {
		return s, fmt.Errorf("%s: count readings: %w", path, err)
	}
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM sample s JOIN bad b ON b.sample = s.id
		WHERE s.t >= ? AND s.t < ?`, from, to).Scan(&s.Bad); err != nil {
		return s, fmt.Errorf("%s: count bad points: %w", path, err)
	}
	rows, err := tx.QueryContext(ctx, `SELECT d.name, count(*) FROM sample s JOIN device d ON d.id = s.device
		WHERE s.t >= ? AND s.t < ? GROUP BY d.name`, from, to)
	if err != nil {
		return s, fmt.Errorf("%s: count samples: %w", path, err)
	}
	defer rows.Close()
	for rows.Next() {
		var name string
		var n int64
		if err := rows.Scan(&name, &n); err != nil {
			return s, fmt.Errorf("%s: count samples: %w", path, err)
		}
		s.Samples[name] = n
	}
	return s, rows.Err()
}

// newestSample returns the newest stamp (Unix ms) of a stored sample, 0
// when there is none.
func newestSample(ctx context.Context, path string) (int64, error) {
	db, err := openRO(path)
	if err != nil {
		return 0, err
	}
	defer db.Close()
	var t sql.NullInt64
	if err := db.QueryRowContext(ctx, `SELECT max(t) FROM sample`).Scan(&t); err != nil {
		return 0, fmt.Errorf("%s: newest sample: %w", path, err)
	}
	return t.Int64, nil
}

func openRO(path string) (*sql.DB, error) {
	dsn := "file:" + (&url.URL{Path: path}).EscapedPath() + "?mode=ro&_pragma=busy_timeout(5000)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	return db, nil
}

// planDevice matches a device line of `tinyscada poller -plan`:
// "  device meter: unit 1, every 1s, timeout 500ms, 3 requests per round".
var planDevice = regexp.MustCompile(`^\s+device (\S+): .*\b(\d+) requests? per round$`)

// parsePlan returns the Modbus requests per poll round of each device from
// the output of `tinyscada poller -plan`. It fails when no device line is
// found (the format changed): the transactions are then not reported
// rather than made up.
func parsePlan(out string) (map[string]int, error) {
	req := map[string]int{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		m := planDevice.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		n, err := strconv.Atoi(m[2])
		if err != nil {
			return nil, fmt.Errorf("plan: %q: %w", sc.Text(), err)
		}
		req[m[1]] = n
	}
	if len(req) == 0 {
		return nil, fmt.Errorf("plan: no line \"device NAME: … N requests per round\"")
	}
	return req, nil
}

// transactions returns the Modbus transactions of the stored samples:
// each is one poll round of a device, which took the device's requests of
// the plan. ok is false when a device that has samples is not in the plan.
func transactions(st stored, plan map[string]int) (n int64, ok bool) {
	for dev, d := range st.Samples {
		r, found := plan[dev]
		if !found {
			return 0, false
		}
		n += d * int64(r)
	}
	return n, true
}
