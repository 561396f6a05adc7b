package store

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/tinyscada/tinyscada/shared/clock"
)

func TestExport(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := newClockScenario(t, clock.Stamp{Wall: time.Unix(30, 0), Mono: 30 * time.Second, Boot: "A"}, may2024)
	c.s.opts.GapAfter = testGapAfter
	ms := c.sample(4)
	ms[0].vals = `"v":1,"on":true`
	ms[1].bad = `"x":"timeout"`
	c.write(ms[0], ms[1], ms[3]) // 3 never comes
	c.f.Step(c.trueOffset - (c.f.Now().Wall.Sub(time.Unix(0, 0)) - c.f.Now().Mono))
	c.synced.Store(true)
	late := c.sample(1)
	late[0].dev = "other"
	c.write(late...)
	if _, err := c.s.CloseGaps(ctx, after()); err != nil {
		t.Fatal(err)
	}
	db, err := OpenReadOnly(c.s.opts.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()

	var buf bytes.Buffer
	n, err := Export(ctx, db, ExportFilter{}, FormatCSV, &buf)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := csv.NewReader(&buf).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if n != len(recs)-1 || n != 7 {
		t.Fatalf("%d lines (%d records):\n%q", n, len(recs), recs)
	}
	want := [][]string{
		{"time", "device", "point", "value", "quality", "note", "row", "wall_time"},
		{fmtTime(c.truth[1]), "meter", "v", "1", "clock_corrected", "", "1", fmtTime(time.Unix(31, 123457).UnixMilli())},
		{fmtTime(c.truth[1]), "meter", "on", "true", "clock_corrected"},
		{fmtTime(c.truth[2]), "meter", "v", "1", "clock_corrected"},
		{fmtTime(c.truth[2]), "meter", "x", "", "bad", "timeout"},
		{fmtTime(c.truth[2]), "", "", "", "gap", "seq: 1 message(s) of poller run run-A never arrived", ""},
		{fmtTime(c.truth[4]), "meter", "v", "1", "clock_corrected"},
		{fmtTime(c.truth[5]), "other", "v", "1", "good", "", "4", ""},
	}
	for i, w := range want {
		for j, f := range w {
			if recs[i][j] != f {
				t.Errorf("line %d field %d = %q, want %q\n%q", i, j, recs[i][j], f, recs[i])
			}
		}
	}

	// Filters; JSON lines.
	buf.Reset()
	n, err = Export(ctx, db, ExportFilter{Devices: []string{"meter"}, Points: []string{"v"}, From: time.UnixMilli(c.truth[2]), NoGaps: true}, FormatJSONL, &buf)
	if err != nil || n != 2 {
		t.Fatalf("filtered: %d lines, %v\n%s", n, err, buf.String())
	}
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		if m["device"] != "meter" || m["point"] != "v" || m["value"] != 1.0 || m["quality"] != "clock_corrected" || m["wall_time"] == nil {
			t.Errorf("line %q", line)
		}
	}
	if _, err := Export(ctx, db, ExportFilter{}, "xml", &buf); err == nil {
		t.Error("unknown format accepted")
	}
}
