package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/bdr-dev/bdr/internal/adminapi"
)

// errorsCommand is bdrctl errors list|retry|discard: the transactions the
// node parked because they could not be applied.
func errorsCommand(ctx context.Context, fs *flag.FlagSet, args []string, connect func() (clients, error), node string, w io.Writer) error {
	if len(args) == 0 {
		return usageError{"errors needs list, retry ID or discard ID"}
	}
	sub, rest := args[0], args[1:]
	switch sub {
	case "list":
		all := fs.Bool("all", false, "also the transactions applied or discarded since")
		asJSON := fs.Bool("json", false, "print JSON")
		if err := parse(fs, rest, 0); err != nil {
			return err
		}
		cl, err := connect()
		if err != nil {
			return err
		}
		list, err := cl.to(node, 30*time.Second).ApplyErrors(ctx, *all)
		if err != nil {
			return refused(node, err)
		}
		if *asJSON {
			return printJSON(w, list)
		}
		printApplyErrors(w, list)
		return nil
	case adminapi.ErrorRetry, adminapi.ErrorDiscard:
		if err := parse(fs, rest, 1); err != nil {
			return err
		}
		id, err := strconv.ParseInt(fs.Arg(0), 10, 64)
		if err != nil || id <= 0 {
			return usageError{fmt.Sprintf("errors %s: %q is not a transaction id (see bdrctl errors list)", sub, fs.Arg(0))}
		}
		cl, err := connect()
		if err != nil {
			return err
		}
		e, err := cl.to(node, time.Minute).ApplyErrorAction(ctx, id, sub)
		if err != nil {
			return refused(node, err)
		}
		switch e.State {
		case "applied":
			fmt.Fprintf(w, "transaction %d from %s applied\n", e.ID, e.Origin)
		case "discarded":
			fmt.Fprintf(w, "transaction %d from %s discarded (%d changes to %s not applied)\n",
				e.ID, e.Origin, e.Changes, strings.Join(e.Tables, ", "))
		default:
			return fmt.Errorf("transaction %d from %s still fails (attempt %d): %s", e.ID, e.Origin, e.Attempts, oneLine(e.Error))
		}
		return nil
	}
	return usageError{fmt.Sprintf("unknown errors command %q: want list, retry ID or discard ID", sub)}
}

func printApplyErrors(w io.Writer, list adminapi.ApplyErrors) {
	if len(list.Errors) == 0 {
		fmt.Fprintf(w, "no parked transactions on %s\n", list.Node)
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tFROM\tXID\tCOMMIT LSN\tCOMMITTED\tCHANGES\tTABLES\tSTATE\tATTEMPTS\tNEXT RETRY\tERROR")
	for _, e := range list.Errors {
		next := "-"
		if e.NextRetry != nil && e.State == "parked" {
			next = e.NextRetry.Local().Format(time.TimeOnly)
		}
		msg := e.Error
		if e.SQLState != "" {
			msg = e.SQLState + " " + msg
		}
		fmt.Fprintf(tw, "%d\t%s\t%d\t%s\t%s\t%d\t%s\t%s\t%d\t%s\t%s\n", e.ID, e.Origin, e.Xid, e.CommitLSN,
			e.CommitTime.Local().Format("2006-01-02 15:04:05.000"), e.Changes, strings.Join(e.Tables, ","),
			e.State, e.Attempts, next, oneLine(msg))
	}
	_ = tw.Flush()
}
