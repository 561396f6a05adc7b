package main

import (
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
	"time"
)

// report is the outcome of a bench: one column per binary.
type report struct {
	Workload string  `json:"workload"`
	WindowS  float64 `json:"window_s"`
	WarmupS  float64 `json:"warmup_s"`
	Rounds   int     `json:"rounds"`
	// Stack is how the roles were started: stackRun or stackDirect.
	Stack   string       `json:"stack"`
	Machine *machine     `json:"machine"`
	Results []*binReport `json:"results"`
	// Reference is -reference's outcome, when asked for.
	Reference *referenceReport `json:"reference,omitempty"`
}

// binReport is one binary over all its rounds: sums of the rounds divided
// by sums (so a longer window weighs more), PSS the mean of the rounds'
// means.
type binReport struct {
	Label string `json:"label"`
	Bin   string `json:"bin"`
	// Exec is the wrapper the build ran under (EXEC=), e.g. qemu-arm-static.
	Exec []string `json:"exec,omitempty"`
	// Build is the binary's toolchain and target, from its build info.
	Build        string  `json:"build"`
	ReadingsPerS float64 `json:"readings_per_s"`
	// BadPerS is points polled but not read (timeouts, exceptions) per
	// second; SamplesPerS poll rounds stored per second.
	BadPerS     float64 `json:"bad_per_s"`
	SamplesPerS float64 `json:"samples_per_s"`
	// TransactionsPerS is Modbus requests per second (from the stored
	// poll rounds and the plan); null when unknown.
	TransactionsPerS *float64 `json:"transactions_per_s"`
	// Roles holds broker, poller, logger, health, their "total", and the
	// simulator and the run supervisor (not in the total).
	Roles map[string]*roleReport `json:"roles"`
	Runs  []*runResult           `json:"runs"`
}

type roleReport struct {
	CPUusPerReading float64 `json:"cpu_us_per_reading"`
	// CPUsPerMinute is the CPU seconds the role used per minute of window:
	// the cost of the workload whatever its rate (issue 13's target for
	// the demo is a total of at most 0.2).
	CPUsPerMinute        float64  `json:"cpu_s_per_minute"`
	PSSMB                float64  `json:"pss_mb"`
	PSSMaxMB             float64  `json:"pss_max_mb"`
	PSSAnonMB            float64  `json:"pss_anon_mb"`
	WriteBytesPerReading float64  `json:"write_bytes_per_reading"`
	WakeupsPerTx         *float64 `json:"wakeups_per_transaction"`
	// ResidentMB, of the total only, is the memory the summed roles hold
	// together, each page once (the mean of the runs' ResidentkB): their
	// PSS on a device, where no simulator shares their pages; null when a
	// run could not measure it.
	ResidentMB *float64 `json:"resident_mb,omitempty"`
}

// summarize folds the runs into one binReport per binary, in the order of
// the -bin flags.
func summarize(workload string, window, warmup time.Duration, rounds int, bins binFlag, runs []*runResult) *report {
	rep := &report{Workload: workload, WindowS: window.Seconds(), WarmupS: warmup.Seconds(), Rounds: rounds}
	for i, label := range bins.labels {
		br := &binReport{Label: label, Bin: bins.paths[i], Roles: map[string]*roleReport{}}
		if bins.execs != nil {
			br.Exec = bins.execs[i]
		}
		var secs, resident float64
		var readings, bad, samples, tx int64
		txKnown, residentKnown := true, true
		type acc struct {
			cpu, pss, pssMax, anon float64
			write, wake            uint64
		}
		sums := map[string]*acc{}
		for _, r := range runs {
			if r.Label != label {
				continue
			}
			br.Runs = append(br.Runs, r)
			secs += r.WindowS
			readings += r.Readings
			bad += r.Bad
			samples += r.Samples
			if r.Transactions < 0 {
				txKnown = false
			}
			tx += r.Transactions
			resident += r.ResidentkB
			residentKnown = residentKnown && r.ResidentkB > 0
			for role, rr := range r.Roles {
				a := sums[role]
				if a == nil {
					a = &acc{}
					sums[role] = a
				}
				a.cpu += rr.CPUus
				a.pss += rr.PSSkB
				a.anon += rr.PSSAnonkB
				a.pssMax = math.Max(a.pssMax, float64(rr.PSSMaxkB))
				a.write += rr.WriteBytes
				a.wake += rr.Voluntary
			}
		}
		n := float64(len(br.Runs))
		if n == 0 || readings == 0 {
			rep.Results = append(rep.Results, br)
			continue
		}
		br.ReadingsPerS = float64(readings) / secs
		br.BadPerS = float64(bad) / secs
		br.SamplesPerS = float64(samples) / secs
		if txKnown && tx > 0 {
			v := float64(tx) / secs
			br.TransactionsPerS = &v
		}
		total := &acc{}
		for role, a := range sums {
			rr := &roleReport{
				CPUusPerReading:      a.cpu / float64(readings),
				CPUsPerMinute:        cpuPerMinute(a.cpu, secs),
				PSSMB:                a.pss / n / 1024,
				PSSMaxMB:             a.pssMax / 1024,
				PSSAnonMB:            a.anon / n / 1024,
				WriteBytesPerReading: float64(a.write) / float64(readings),
			}
			if br.TransactionsPerS != nil {
				v := float64(a.wake) / float64(tx)
				rr.WakeupsPerTx = &v
			}
			br.Roles[role] = rr
			for _, s := range summedRoles {
				if s == role {
					total.cpu += a.cpu
					total.pss += a.pss
					total.pssMax += a.pssMax
					total.anon += a.anon
					total.write += a.write
					total.wake += a.wake
				}
			}
		}
		t := &roleReport{
			CPUusPerReading:      total.cpu / float64(readings),
			CPUsPerMinute:        cpuPerMinute(total.cpu, secs),
			PSSMB:                total.pss / n / 1024,
			PSSMaxMB:             total.pssMax / 1024, // sum of the roles' maxima
			PSSAnonMB:            total.anon / n / 1024,
			WriteBytesPerReading: float64(total.write) / float64(readings),
		}
		if br.TransactionsPerS != nil {
			v := float64(total.wake) / float64(tx)
			t.WakeupsPerTx = &v
		}
		if residentKnown {
			v := resident / n / 1024
			t.ResidentMB = &v
		}
		br.Roles["total"] = t
		rep.Results = append(rep.Results, br)
	}
	return rep
}

// cpuPerMinute is CPU seconds per minute of window, from µs of CPU over
// secs seconds of window.
func cpuPerMinute(cpuUS, secs float64) float64 {
	if secs <= 0 {
		return 0
	}
	return cpuUS / 1e6 / secs * 60
}

// tableRoles are the rows of each measure: the summed roles, their total,
// then the processes outside the total.
var tableRoles = append(append(append([]string{}, summedRoles...), "total"), otherRoles...)

// writeTable prints the report with one column per binary and, for two
// binaries, the change of the second against the first.
func (rep *report) writeTable(w io.Writer) error {
	fmt.Fprintf(w, "workload %s\nwindow %gs after a %gs warm-up, %d round(s); totals are broker+poller+logger+health\n",
		rep.Workload, rep.WindowS, rep.WarmupS, rep.Rounds)
	if m := rep.Machine; m != nil {
		fmt.Fprintf(w, "machine: %d CPUs, %s, kernel %s, bench built with %s; load average %s before, %s after\n",
			m.NProc, orUnknown(m.CPUModel), orUnknown(m.Kernel), m.GoVersion, orUnknown(m.LoadBefore), orUnknown(m.LoadAfter))
	}
	switch rep.Stack {
	case stackRun:
		fmt.Fprintln(w, "roles started by `tinyscada run` (-stack run)")
	case stackDirect:
		fmt.Fprintln(w, "roles started by the bench, one process each as the systemd units do (-stack direct); no run process")
	}
	for _, br := range rep.Results {
		under := ""
		if br.Exec != nil {
			under = " under " + strings.Join(br.Exec, " ")
		}
		fmt.Fprintf(w, "%s: %s (%s)%s\n", br.Label, br.Bin, orUnknown(br.Build), under)
	}
	// Say where the CPU times come from; in ticks, what one is worth here.
	ticks := false
	for _, br := range rep.Results {
		for _, run := range br.Runs {
			for _, rr := range run.Roles {
				ticks = ticks || rr.CPUFromTicks
			}
		}
	}
	if !ticks {
		fmt.Fprintln(w, "CPU time is each process's threads' run time from /proc/PID/task/TID/schedstat, to the nanosecond")
	}
	for _, br := range rep.Results {
		if ticks && br.ReadingsPerS > 0 {
			fmt.Fprintf(w, "CPU time of some processes is counted in %d ms ticks (see the warnings): one tick is %.2f µs/reading here\n",
				1000/userHZ, 1e6/userHZ/(br.ReadingsPerS*rep.WindowS*float64(rep.Rounds)))
			break
		}
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	head := []string{"measure", "role"}
	for _, br := range rep.Results {
		head = append(head, fmt.Sprintf("%10s", br.Label))
	}
	two := len(rep.Results) == 2
	if two {
		head = append(head, fmt.Sprintf("%10s", rep.Results[1].Label+" vs "+rep.Results[0].Label))
	}
	row := func(cells ...string) { fmt.Fprintln(tw, strings.Join(cells, "\t")+"\t") }
	row(head...)
	line := func(measure, role string, format string, get func(*binReport) (float64, bool)) {
		cells := []string{measure, role}
		var vals []float64
		for _, br := range rep.Results {
			v, ok := get(br)
			if !ok {
				cells = append(cells, fmt.Sprintf("%10s", "-"))
				vals = append(vals, math.NaN())
				continue
			}
			cells = append(cells, fmt.Sprintf("%10s", fmt.Sprintf(format, v)))
			vals = append(vals, v)
		}
		if two {
			cells = append(cells, fmt.Sprintf("%10s", change(vals[0], vals[1])))
		}
		row(cells...)
	}
	line("readings/s stored", "", "%.1f", func(br *binReport) (float64, bool) { return br.ReadingsPerS, br.ReadingsPerS > 0 })
	line("bad points/s", "", "%.1f", func(br *binReport) (float64, bool) { return br.BadPerS, br.ReadingsPerS > 0 })
	line("poll rounds/s stored", "", "%.1f", func(br *binReport) (float64, bool) { return br.SamplesPerS, br.ReadingsPerS > 0 })
	line("Modbus transactions/s", "", "%.1f", func(br *binReport) (float64, bool) { return known(br.TransactionsPerS) })
	measures := []struct {
		name, format string
		get          func(*roleReport) (float64, bool)
		totalOnly    bool // a figure of the roles together, not of each
	}{
		{"CPU µs/reading", "%.2f", func(r *roleReport) (float64, bool) { return r.CPUusPerReading, true }, false},
		{"CPU s/minute", "%.3f", func(r *roleReport) (float64, bool) { return r.CPUsPerMinute, true }, false},
		{"PSS MB", "%.2f", func(r *roleReport) (float64, bool) { return r.PSSMB, true }, false},
		{"PSS anon MB", "%.2f", func(r *roleReport) (float64, bool) { return r.PSSAnonMB, true }, false},
		{"resident MB, once", "%.2f", func(r *roleReport) (float64, bool) { return known(r.ResidentMB) }, true},
		{"written B/reading", "%.2f", func(r *roleReport) (float64, bool) { return r.WriteBytesPerReading, true }, false},
		{"wake-ups/transaction", "%.2f", func(r *roleReport) (float64, bool) { return known(r.WakeupsPerTx) }, false},
	}
	for _, m := range measures {
		roles := tableRoles
		if m.totalOnly {
			roles = []string{"total"}
		}
		for i, role := range roles {
			name := ""
			if i == 0 {
				name = m.name
			}
			line(name, role, m.format, func(br *binReport) (float64, bool) {
				r := br.Roles[role]
				if r == nil {
					return 0, false
				}
				return m.get(r)
			})
		}
	}
	return tw.Flush()
}

// known is *v and true, or false when v is nil (a figure not measured).
func known(v *float64) (float64, bool) {
	if v == nil {
		return 0, false
	}
	return *v, true
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// change is b against a in percent, or "" when either is unknown or a is 0.
func change(a, b float64) string {
	if math.IsNaN(a) || math.IsNaN(b) || a == 0 {
		return ""
	}
	c := (b - a) / a * 100
	if math.Abs(c) < 0.05 {
		c = 0 // not "-0.0%"
	}
	return fmt.Sprintf("%+.1f%%", c)
}
