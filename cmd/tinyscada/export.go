package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/tinyscada/tinyscada/shared/store"
)

// exportCmd is `tinyscada export`: readings from the logger's database as
// CSV or JSON lines on stdout.
func exportCmd(ctx context.Context, args []string) error {
	fs, cfgPath := commandFlags("export", "usage: tinyscada export [-config FILE | -db FILE] [-format csv|jsonl] [-device D,...] [-point P,...] [-from T] [-to T] [-no-gaps]\n"+
		"Writes the stored readings to stdout with their corrected time and quality (see docs/logger.md); -config names the configuration whose logger database to read.")
	dbPath := fs.String("db", "", "database `file` to read (overrides -config)")
	format := fs.String("format", "csv", "output `format`: csv or jsonl")
	devices := fs.String("device", "", "only these `devices` (comma-separated)")
	points := fs.String("point", "", "only these `points` (comma-separated)")
	from := fs.String("from", "", "only readings at or after this `time` (RFC 3339, or YYYY-MM-DD, UTC)")
	to := fs.String("to", "", "only readings at or before this `time` (RFC 3339, or YYYY-MM-DD for the end of that day)")
	noGaps := fs.Bool("no-gaps", false, "leave out the records of missing readings")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	f := store.ExportFilter{Devices: splitList(*devices), Points: splitList(*points), NoGaps: *noGaps}
	var err error
	if f.From, err = parseWhen(*from, false); err != nil {
		fmt.Fprintf(os.Stderr, "tinyscada export: -from: %v\n", err)
		return errUsage
	}
	if f.To, err = parseWhen(*to, true); err != nil {
		fmt.Fprintf(os.Stderr, "tinyscada export: -to: %v\n", err)
		return errUsage
	}
	if *format != store.FormatCSV && *format != store.FormatJSONL {
		fmt.Fprintf(os.Stderr, "tinyscada export: -format %q: want csv or jsonl\n", *format)
		return errUsage
	}
	path := *dbPath
	if path == "" {
		cfg, err := loadConfig(*cfgPath)
		if err != nil {
			return err
		}
		path = cfg.Logger.Path(cfg.StateDir)
	}
	db, err := store.OpenReadOnly(path)
	if err != nil {
		return err
	}
	defer db.Close()
	w := bufio.NewWriter(os.Stdout)
	n, err := store.Export(ctx, db, f, *format, w)
	if ferr := w.Flush(); err == nil {
		err = ferr
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "tinyscada export: %d lines from %s\n", n, path)
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// parseWhen parses an RFC 3339 time or a UTC date; a date as an upper
// bound means the end of that day.
func parseWhen(s string, end bool) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	d, err := time.Parse("2006-01-02", s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is neither RFC 3339 (2024-05-01T12:00:00Z) nor a date (2024-05-01)", s)
	}
	if end {
		d = d.Add(24*time.Hour - time.Millisecond)
	}
	return d, nil
}
