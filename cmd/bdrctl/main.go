// Command bdrctl is the operator's command line for a bdr group. It talks
// HTTP/JSON to the admin API of one bdrd (--node, or $BDRCTL_NODE), with
// the admin token (--token-file, $BDRCTL_TOKEN or $BDRCTL_TOKEN_FILE).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/bdr-dev/bdr/bench"
	"github.com/bdr-dev/bdr/internal/adminapi"
	"github.com/bdr-dev/bdr/internal/checksum"
)

const usage = `usage: bdrctl [--node ADDR] [--token-file FILE] COMMAND [ARGS]

Commands:
  init                     make this node the first member of a new group
  join --via ADDR          join the group of the member whose admin API is at ADDR
       [--no-wait]         return once admitted instead of waiting until caught up
       [--force]           replace the user tables the database holds with the group's
       [--copy-workers N]  copy the rows in at most N sessions (default: bdrd's --copy-workers)
  part NAME                remove node NAME from the group (run against another member)
  leave                    remove this node from the group, from its own side
  status [--json] [--local] nodes with liveness, streams, lag, errors, WAL kept
                           (--local: this node's own view, without asking the others)
  checksum [--json]        per-table checksums of every member, and whether they agree
  errors list [--all] [--json]  transactions this node parked because they could not be
                           applied (--all: also those applied or discarded since)
  errors retry ID          apply parked transaction ID now, and say whether it applied
  errors discard ID        give parked transaction ID up (its row stays, marked discarded)
  bench apply [flags]      apply benchmark: bdrd against native logical replication
                           (--bdrd PATH --scale 10 --clients 8 --duration 20s --json)
  bench join [flags]       join under pgbench load against pg_dump | pg_restore
                           (--bdrd PATH --scale 50 --clients 8 --rate 100 --copy-workers 0 --json)
  bench wan [flags]        pgbench across emulated WAN links: streaming replication,
                           multi-master near writes (one site, all sites), no replication
                           (--bdrd PATH --nodes 2 --rtt 77ms --jitter 0ms --bandwidth 160mbit
                            --scale 10 --clients 10 --rate 0 --duration 60s
                            --modes sr,baseline,mm-local,mm-both --site-cpus auto|off|0/1
                            --site-weight 10 --gomaxprocs 1 --rounds 0 --fsync=false
                            --json --out DIR --compare-seed)
  bench pgbench [flags]    pgbench from this host against a member of an existing group and
                           the replication lag between every pair of members
                           (--node ADDR --target NAME --clients 10 --rate 0 --duration 60s
                            --init --scale 10 --json --out DIR)

--node defaults to $BDRCTL_NODE, then 127.0.0.1:7801; ADDR is host:port or
unix:/path/to.sock. The admin token bdrd requires comes from --token-file FILE,
else $BDRCTL_TOKEN, else the file named by $BDRCTL_TOKEN_FILE. --node and
--token-file may also follow the command.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// usageError is a command line mistake: exit status 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	err := dispatch(ctx, args, stdout, stderr)
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "bdrctl: %s\n%s", ue.msg, usage)
		return 2
	default:
		fmt.Fprintf(stderr, "bdrctl: %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
		return 1
	}
}

// tokenError is a bdrd refusing bdrctl's token, or its lack of one.
type tokenError struct{ node string }

func (e tokenError) Error() string {
	return e.node + ": missing or wrong admin token (set BDRCTL_TOKEN or --token-file)"
}

// refused turns a 401 answer of the bdrd at node into a tokenError.
func refused(node string, err error) error {
	if unauthorized(err) {
		return tokenError{node}
	}
	return err
}

func unauthorized(err error) bool {
	var e *adminapi.Error
	return errors.As(err, &e) && e.Status == http.StatusUnauthorized
}

// maxToken bounds a token file.
const maxToken = 4 << 10

// adminToken is the token bdrctl presents, "" for none: the token file
// given on the command line (explicit), else $BDRCTL_TOKEN, else the file
// in $BDRCTL_TOKEN_FILE (the flag's default). Whitespace around it is dropped.
func adminToken(file string, explicit bool) (string, error) {
	if !explicit {
		if tok := strings.TrimSpace(os.Getenv("BDRCTL_TOKEN")); tok != "" {
			return tok, nil
		}
	}
	if file == "" {
		return "", nil
	}
	f, err := os.Open(file)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return "", fmt.Errorf("--token-file %s: %w", file, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxToken+1))
	switch {
	case err != nil:
		return "", fmt.Errorf("--token-file %s: cannot read it", file)
	case len(b) > maxToken:
		return "", fmt.Errorf("--token-file %s: larger than 4 KiB; it should hold only the token", file)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("--token-file %s is empty", file)
	}
	return tok, nil
}

// clients makes admin API clients that present the token.
type clients struct{ token string }

func (c clients) to(addr string, timeout time.Duration) *adminapi.Client {
	return adminapi.NewClient(addr, timeout).WithToken(c.token)
}

func defaultNode() string {
	if v := os.Getenv("BDRCTL_NODE"); v != "" {
		return v
	}
	return "127.0.0.1:7801"
}

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	global := flag.NewFlagSet("bdrctl", flag.ContinueOnError)
	global.SetOutput(io.Discard)
	node := global.String("node", defaultNode(), "admin address of the bdrd to talk to")
	tokenFile := global.String("token-file", os.Getenv("BDRCTL_TOKEN_FILE"), "file holding the admin token")
	if err := global.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usage)
			return err
		}
		return usageError{err.Error()}
	}
	if global.NArg() == 0 {
		return usageError{"no command given"}
	}
	cmd, rest := global.Arg(0), global.Args()[1:]
	fs := flag.NewFlagSet("bdrctl "+cmd, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(node, "node", *node, "admin address of the bdrd to talk to")
	fs.StringVar(tokenFile, "token-file", *tokenFile, "file holding the admin token")
	// connect reads the token once the command's flags are parsed.
	connect := func() (clients, error) {
		explicit := false
		visit := func(f *flag.Flag) { explicit = explicit || f.Name == "token-file" }
		global.Visit(visit)
		fs.Visit(visit)
		tok, err := adminToken(*tokenFile, explicit)
		return clients{token: tok}, err
	}
	switch cmd {
	case "init":
		if err := parse(fs, rest, 0); err != nil {
			return err
		}
		cl, err := connect()
		if err != nil {
			return err
		}
		info, err := cl.to(*node, time.Minute).Init(ctx)
		if err != nil {
			return refused(*node, err)
		}
		fmt.Fprintf(stdout, "node %s (id %d) is the first member of a new group\n", info.Name, info.ID)
		return nil
	case "join":
		via := fs.String("via", "", "admin address of a member to join through")
		noWait := fs.Bool("no-wait", false, "return once admitted")
		force := fs.Bool("force", false, "replace the user tables of the database with the group's")
		workers := fs.Int("copy-workers", 0, "copy the rows in at most this many sessions (0: bdrd's --copy-workers)")
		if err := parse(fs, rest, 0); err != nil {
			return err
		}
		if *via == "" {
			return usageError{"join needs --via ADDR"}
		}
		if *workers < 0 {
			return usageError{"join: --copy-workers must be positive"}
		}
		cl, err := connect()
		if err != nil {
			return err
		}
		return refused(*node, join(ctx, cl.to(*node, time.Minute), adminapi.JoinRequest{Via: *via, Force: *force, CopyWorkers: *workers}, *noWait, stdout))
	case "part":
		if err := parse(fs, rest, 1); err != nil {
			return err
		}
		cl, err := connect()
		if err != nil {
			return err
		}
		res, err := cl.to(*node, 5*time.Minute).Part(ctx, fs.Arg(0))
		if err != nil {
			return refused(*node, err)
		}
		fmt.Fprintf(stdout, "node %s parted; cleaned up on: %s\n", res.Name, strings.Join(res.Done, ", "))
		if len(res.Unreachable) > 0 {
			fmt.Fprintf(stdout, "not reachable, clean up when back: %s\n", strings.Join(res.Unreachable, ", "))
		}
		return nil
	case "leave":
		if err := parse(fs, rest, 0); err != nil {
			return err
		}
		cl, err := connect()
		if err != nil {
			return err
		}
		res, err := cl.to(*node, 5*time.Minute).LeaveGroup(ctx)
		if err != nil {
			return refused(*node, err)
		}
		fmt.Fprintf(stdout, "node %s left the group; the members drop its streams: %s\n", res.Name, strings.Join(res.Done, ", "))
		return nil
	case "status":
		asJSON := fs.Bool("json", false, "print JSON")
		local := fs.Bool("local", false, "only this node's own view, without asking the other members")
		if err := parse(fs, rest, 0); err != nil {
			return err
		}
		cl, err := connect()
		if err != nil {
			return err
		}
		st, err := cl.to(*node, 30*time.Second).Status(ctx, !*local)
		if err != nil {
			return refused(*node, err)
		}
		if *asJSON {
			return printJSON(stdout, st)
		}
		printStatus(stdout, st)
		return nil
	case "checksum":
		asJSON := fs.Bool("json", false, "print JSON")
		if err := parse(fs, rest, 0); err != nil {
			return err
		}
		cl, err := connect()
		if err != nil {
			return err
		}
		return checksums(ctx, cl, *node, *asJSON, stdout)
	case "errors":
		return errorsCommand(ctx, fs, rest, connect, *node, stdout)
	case "bench":
		return benchCommand(ctx, rest, stdout, stderr)
	}
	return usageError{fmt.Sprintf("unknown command %q", cmd)}
}

func parse(fs *flag.FlagSet, args []string, positional int) error {
	if err := fs.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	if fs.NArg() != positional {
		if positional == 0 {
			return usageError{fmt.Sprintf("%s takes no arguments", fs.Name())}
		}
		return usageError{fmt.Sprintf("%s takes %d argument(s)", fs.Name(), positional)}
	}
	return nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// join starts the join through c's node and, unless noWait, follows it to
// the end.
func join(ctx context.Context, c *adminapi.Client, r adminapi.JoinRequest, noWait bool, w io.Writer) error {
	v := newJoinView(w)
	if noWait {
		jp, err := c.Join(ctx, r)
		if err == nil {
			v.show(jp)
		}
		return err
	}
	err := c.JoinAndWait(ctx, r, 300*time.Millisecond, v.show)
	if errors.Is(err, context.Canceled) {
		return fmt.Errorf("stopped waiting; the join goes on (bdrctl status shows it)")
	}
	return err
}

func printStatus(w io.Writer, st adminapi.Status) {
	id := "not a member"
	if st.Node.ID > 0 {
		id = fmt.Sprintf("id %d, %s", st.Node.ID, st.Node.State)
	}
	fmt.Fprintf(w, "node %s (%s), bdrd %s\n", st.Node.Name, id, st.Node.Version)
	fmt.Fprintf(w, "conflicts recorded on this node: %d\n", st.Conflicts)
	if st.Node.ID > 0 {
		leader := st.Leader
		if leader == "" {
			leader = "NONE (no quorum seen from this node: joins and parts are impossible here)"
		}
		fmt.Fprintf(w, "consensus leader: %s\n", leader)
	}
	if st.Join != nil && (!st.Join.Done || st.Join.Error != "") {
		fmt.Fprintf(w, "join: %s: %s%s\n", st.Join.Phase, st.Join.Message, suffix(" error: ", st.Join.Error))
		if c := st.Join.Copy; c != nil && !st.Join.Done {
			fmt.Fprintf(w, "copy: %s\n", copySummary(c))
		}
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "\nNODE\tID\tSTATE\tLIVE\tLIVE SINCE\tCLOCK SKEW\tADMIN\tREASON")
	var skewed []string
	for _, n := range st.Nodes {
		live, since := n.Live, "-"
		if live == "" {
			live = "-"
		} else {
			since = n.LiveSince.Local().Format(time.DateTime)
		}
		if n.Live == "down" || n.Live == "db-down" || n.Live == "suspect" {
			live = strings.ToUpper(live)
		}
		skew := "-"
		if n.ClockSkewSeconds != nil {
			skew = fmt.Sprintf("%+.3fs", *n.ClockSkewSeconds)
			if n.ClockSkewOver {
				skew += " OVER"
				skewed = append(skewed, fmt.Sprintf("%s %+.3fs", n.Name, *n.ClockSkewSeconds))
			}
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", n.Name, n.ID, n.State, live, since, skew, n.AdminAddr, oneLine(n.Reason))
	}
	fmt.Fprintln(tw, "\nFROM\tTO\tSTATE\tLAG BYTES\tLAG SECONDS\tLAST APPLIED\tPARKED\tLAST ERROR")
	for _, s := range st.Streams {
		last := "-"
		if !s.LastCommit.IsZero() {
			last = s.LastCommit.Local().Format("2006-01-02 15:04:05.000")
		}
		state := s.State
		if s.Paused {
			state += " (paused)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%.1f\t%s\t%d\t%s\n", s.From, s.To, state, s.LagBytes, s.LagSeconds, last, s.Parked, oneLine(s.LastError))
	}
	if len(st.WAL) > 0 {
		fmt.Fprintln(tw, "\nWAL KEPT FOR\tBYTES\tBUDGET\tUSED\tSTATE")
		for _, b := range st.WAL {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%.0f%%\t%s\n", b.Peer, b.RetainedBytes, b.BudgetBytes, 100*b.UsedRatio, b.State)
		}
	}
	_ = tw.Flush()
	if len(skewed) > 0 {
		bound := time.Duration(st.ClockSkewBoundSeconds * float64(time.Second))
		fmt.Fprintf(w, "\nWARNING: clocks differ from %s's by more than %s (--max-clock-skew): %s; last update wins "+
			"compares commit times, so a node whose clock is ahead wins over later changes: fix the time synchronization (NTP)\n",
			st.Node.Name, bound, strings.Join(skewed, ", "))
	}
	if len(st.Unreachable) > 0 {
		fmt.Fprintf(w, "\nnot reachable: %s\n", strings.Join(st.Unreachable, ", "))
	}
}

func suffix(prefix, s string) string {
	if s == "" {
		return ""
	}
	return prefix + s
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 120 {
		s = s[:117] + "..."
	}
	return s
}

// checksums prints each member's per-table checksums and whether they agree.
// It exits with an error when they differ. Every member gets the same token.
func checksums(ctx context.Context, cl clients, node string, asJSON bool, w io.Writer) error {
	st, err := cl.to(node, 30*time.Second).Status(ctx, true)
	if err != nil {
		return refused(node, err)
	}
	var all []adminapi.Checksums
	for _, n := range st.Nodes {
		if n.State != "active" {
			continue
		}
		cs, err := cl.to(n.AdminAddr, 10*time.Minute).Checksums(ctx)
		if unauthorized(err) {
			return tokenError{n.AdminAddr}
		}
		if err != nil {
			return fmt.Errorf("checksums of %s: %w", n.Name, err)
		}
		all = append(all, cs)
	}
	var diffs []string
	for _, cs := range all[min(1, len(all)):] {
		for _, d := range checksum.Diff(all[0].Tables, cs.Tables) {
			diffs = append(diffs, fmt.Sprintf("%s vs %s: %s", all[0].Node, cs.Node, d))
		}
	}
	if asJSON {
		if err := printJSON(w, map[string]any{"nodes": all, "differences": diffs}); err != nil {
			return err
		}
	} else {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "NODE\tTABLE\tROWS\tCHECKSUM")
		for _, cs := range all {
			names := make([]string, 0, len(cs.Tables))
			for t := range cs.Tables {
				names = append(names, t)
			}
			sort.Strings(names)
			for _, t := range names {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", cs.Node, t, cs.Tables[t].Rows, cs.Tables[t].Hash)
			}
		}
		_ = tw.Flush()
	}
	if len(diffs) > 0 {
		return fmt.Errorf("members differ: %s", strings.Join(diffs, "; "))
	}
	if !asJSON {
		fmt.Fprintf(w, "all %d members are identical\n", len(all))
	}
	return nil
}

// benchCommand runs a benchmark on this machine.
func benchCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	names := []string{"apply", "join", "wan", "pgbench"}
	if len(args) == 0 || !slices.Contains(names, args[0]) {
		return usageError{"bench needs a benchmark name: apply, join, wan or pgbench"}
	}
	fs := flag.NewFlagSet("bdrctl bench "+args[0], flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	self, _ := os.Executable()
	bdrd := fs.String("bdrd", filepath.Join(filepath.Dir(self), "bdrd"), "bdrd binary")
	dir := fs.String("dir", "", "parent directory of the servers (default: the temp dir)")
	asJSON := fs.Bool("json", false, "print JSON")
	switch args[0] {
	case "wan":
		return benchWAN(ctx, fs, args, bdrd, dir, asJSON, stdout, stderr)
	case "pgbench":
		return benchSites(ctx, fs, args, asJSON, stdout, stderr)
	case "join":
		cfg := bench.JoinConfig{Progress: stderr}
		fs.IntVar(&cfg.Scale, "scale", 50, "pgbench scale of the group's database")
		fs.IntVar(&cfg.Clients, "clients", 8, "pgbench clients on each member")
		fs.IntVar(&cfg.Rate, "rate", 100, "pgbench transactions a second on each member (0: unlimited)")
		fs.IntVar(&cfg.CopyWorkers, "copy-workers", 0, "the most sessions the measured join copies the rows with (0: bdrd's default)")
		if err := parse(fs, args[1:], 0); err != nil {
			return err
		}
		cfg.Bdrd, cfg.Dir = *bdrd, *dir
		res, err := bench.RunJoin(ctx, cfg)
		return printBench(stdout, *asJSON, res, res.Ratio(), res.Report, err)
	}
	cfg := bench.ApplyConfig{Progress: stderr}
	fs.IntVar(&cfg.Scale, "scale", 10, "pgbench scale")
	fs.IntVar(&cfg.Clients, "clients", 8, "pgbench clients")
	fs.DurationVar(&cfg.Duration, "duration", 20*time.Second, "pgbench duration")
	fs.IntVar(&cfg.Conflicts, "conflicts", 0, "pgbench transactions on the subscriber after the publisher's, so that the catch-up meets conflicts (0: none)")
	if err := parse(fs, args[1:], 0); err != nil {
		return err
	}
	cfg.Bdrd, cfg.Dir = *bdrd, *dir
	res, err := bench.RunApply(ctx, cfg)
	return printBench(stdout, *asJSON, res, res.Ratio(), res.Report, err)
}

// printBench prints a benchmark's result, as JSON or as its report.
func printBench(w io.Writer, asJSON bool, res any, ratio float64, report func() string, err error) error {
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(w, map[string]any{"result": res, "ratio": ratio})
	}
	_, err = io.WriteString(w, report())
	return err
}
