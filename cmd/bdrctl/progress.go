package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/bdr-dev/bdr/internal/adminapi"
)

// joinView shows the progress of a join: on a terminal, a block of progress
// bars redrawn in place; elsewhere, plain lines (a line per phase or
// message change, per finished table, and every plainEvery while copying).
type joinView struct {
	w        io.Writer
	tty      bool
	drawn    int // lines of the block on the terminal
	last     string
	lastCopy time.Time
	done     map[string]bool
}

const (
	plainEvery = 5 * time.Second
	barWidth   = 24
	maxTables  = 8 // table lines shown on a terminal
)

func newJoinView(w io.Writer) *joinView {
	return &joinView{w: w, tty: isTerminal(w), done: map[string]bool{}}
}

// isTerminal reports whether w is a character device.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func (v *joinView) show(jp adminapi.JoinProgress) {
	if v.tty {
		v.draw(jp)
		return
	}
	if cur := jp.Phase + "\x00" + jp.Message; cur != v.last {
		v.last = cur
		fmt.Fprintf(v.w, "join: %s: %s\n", jp.Phase, jp.Message)
	}
	c := jp.Copy
	if c == nil {
		return
	}
	for _, t := range c.Tables {
		if t.Done && !v.done[t.Name] {
			v.done[t.Name] = true
			fmt.Fprintf(v.w, "copied %s: %s rows, %s\n", t.Name, count(t.Rows), size(t.Bytes))
		}
	}
	if !c.Done && time.Since(v.lastCopy) >= plainEvery {
		v.lastCopy = time.Now()
		fmt.Fprintf(v.w, "copy: %s\n", copySummary(c))
	}
}

// draw redraws the block: the phase, the copy summary and a bar per table
// (the unfinished ones first, at most maxTables).
func (v *joinView) draw(jp adminapi.JoinProgress) {
	var lines []string
	lines = append(lines, fmt.Sprintf("join: %s: %s", jp.Phase, jp.Message))
	if c := jp.Copy; c != nil {
		lines = append(lines, "copy: "+copySummary(c))
		var busy, finished []adminapi.TableProgress
		for _, t := range c.Tables {
			if t.Done {
				finished = append(finished, t)
			} else {
				busy = append(busy, t)
			}
		}
		shown := append(busy, finished...)
		if len(shown) > maxTables {
			shown = shown[:maxTables]
		}
		for _, t := range shown {
			lines = append(lines, fmt.Sprintf("  %s %s rows %s  %s", bar(t), count(t.Rows), size(t.Bytes), t.Name))
		}
		if n := len(c.Tables) - len(shown); n > 0 {
			lines = append(lines, fmt.Sprintf("  ... and %d more tables", n))
		}
	}
	var b strings.Builder
	if v.drawn > 0 {
		fmt.Fprintf(&b, "\x1b[%dA", v.drawn) // back to the top of the block
	}
	b.WriteString("\x1b[J") // clear it
	for _, l := range lines {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	_, _ = io.WriteString(v.w, b.String())
	v.drawn = len(lines)
}

func bar(t adminapi.TableProgress) string {
	f := 0.0
	switch {
	case t.Done:
		f = 1
	case t.EstimatedRows > 0:
		f = min(float64(t.Rows)/float64(t.EstimatedRows), 0.99)
	}
	n := int(f * barWidth)
	return fmt.Sprintf("[%s%s] %3.0f%%", strings.Repeat("#", n), strings.Repeat(".", barWidth-n), 100*f)
}

// copySummary is the whole copy in one line: tables, rows, bytes, ETA.
func copySummary(c *adminapi.CopyProgress) string {
	var rows, bytes, est int64
	done := 0
	for _, t := range c.Tables {
		rows += t.Rows
		bytes += t.Bytes
		est += max(t.EstimatedRows, t.Rows)
		if t.Done {
			done++
		}
	}
	s := fmt.Sprintf("%d of %d tables, %s of ~%s rows, %s", done, len(c.Tables), count(rows), count(est), size(bytes))
	if c.Sessions > 1 {
		s += fmt.Sprintf(", %d sessions", c.Sessions)
	}
	switch {
	case c.Done:
		s += ", rows copied"
	case c.ETASeconds != nil:
		s += ", ETA " + (time.Duration(*c.ETASeconds) * time.Second).String()
	}
	return s
}

func count(n int64) string {
	s := fmt.Sprint(n)
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	return b.String()
}

func size(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
