package decoder

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func bigTxn(xid uint32, n int) [][]byte {
	msgs := [][]byte{relT, relU, begin(xid)}
	for i := range n {
		id := fmt.Sprint(i)
		msgs = append(msgs, top.insert(1, tx(id), tx("value "+id), bin(id), toast))
	}
	return append(msgs,
		top.update(1, 'K', []val{tx("0"), null, null, null}, []val{tx("-1"), null, null, toast}),
		top.delete(3, 'O', tx("9")),
		top.truncate(3, 1, 3),
		commit())
}

func TestSpillByMemLimit(t *testing.T) {
	// The reference: the same transaction with the default memory limit.
	ref := feed(t, newTestDecoder(t, Config{}), bigTxn(9, 50)...)[0]
	want := changeStrings(t, ref)
	if ref.Bytes() <= 0 || len(want) != 53 {
		t.Fatalf("reference txn: %d changes, Bytes() = %d", len(want), ref.Bytes())
	}

	tests := []struct {
		name     string
		memLimit int64
		spilled  bool
	}{
		{"fits in memory", 1 << 20, false},
		{"exactly the limit", ref.Bytes(), false},
		{"one byte short", ref.Bytes() - 1, true},
		{"tiny limit", 300, true},
		{"one byte", 1, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			d := newTestDecoder(t, Config{SpillDir: dir, MemLimit: tc.memLimit})
			txn := feed(t, d, bigTxn(9, 50)...)[0]
			files := dirFiles(t, dir, ".spill")
			if got := len(files) == 1; got != tc.spilled {
				t.Fatalf("spill files %v, want spilled=%v", files, tc.spilled)
			}
			if tc.spilled {
				if txn.Bytes() > 200 {
					t.Errorf("spilled txn Bytes() = %d", txn.Bytes())
				}
				fi, err := os.Stat(files[0])
				if err != nil || fi.Mode().Perm() != 0o600 {
					t.Errorf("spill file mode: %v, %v", fi.Mode(), err)
				}
			} else if txn.Bytes() != ref.Bytes() {
				t.Errorf("Bytes() = %d, want %d", txn.Bytes(), ref.Bytes())
			}
			for pass := range 2 {
				if got := changeStrings(t, txn); !slices.Equal(got, want) {
					t.Fatalf("pass %d: changes differ:\n%q\nwant\n%q", pass, got, want)
				}
			}
			if err := txn.Close(); err != nil {
				t.Fatal(err)
			}
			if err := txn.Close(); err != nil {
				t.Fatalf("second Close: %v", err)
			}
			if files := dirFiles(t, dir, ".spill"); len(files) != 0 {
				t.Errorf("spill files after Close: %v", files)
			}
			if err := txn.Each(func(*Change) error { return nil }); err == nil {
				t.Error("Each after Close succeeded")
			}
		})
	}
}

func TestEachStopsOnError(t *testing.T) {
	for _, limit := range []int64{0, 1} {
		d := newTestDecoder(t, Config{MemLimit: limit})
		txn := feed(t, d, bigTxn(1, 10)...)[0]
		stop := fmt.Errorf("stop")
		n := 0
		err := txn.Each(func(*Change) error { n++; return stop })
		if err != stop || n != 1 {
			t.Errorf("mem limit %d: Each = %v after %d calls", limit, err, n)
		}
	}
}

func TestStaleSpillFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	stale := []string{
		write("bdrspill-00000000000000aa.lock"), // unlocked: its process is gone
		write("bdrspill-00000000000000aa-12-1.spill"),
		write("bdrspill-00000000000000aa-13-2.spill"),
		write("bdrspill-00000000000000bb-14-1.spill"), // no lock file at all
	}
	kept := []string{
		write("notes.txt"),
		write("bdrspill-xyz.spill"),
		write("bdrspill-00000000000000aa-12-1.spill.bak"),
		write("bdrspill-00000000000000cc.lock.old"),
	}

	// A live decoder sharing the directory, with an unfinished streamed
	// transaction and a finished one not yet closed.
	a := newTestDecoder(t, Config{SpillDir: dir})
	done := feed(t, a, relU, streamStart(1, true), in(1).insert(3, tx("done")), streamStop(), streamCommit(1),
		streamStart(2, true), in(2).insert(3, tx("open")), streamStop())[0]
	live := append(dirFiles(t, dir, ".spill"), dirFiles(t, dir, ".lock")...)
	live = slices.DeleteFunc(live, func(p string) bool { return slices.Contains(stale, p) || slices.Contains(kept, p) })
	if len(live) != 3 {
		t.Fatalf("live decoder files: %v", live)
	}

	newTestDecoder(t, Config{SpillDir: dir})
	for _, p := range stale {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("stale %s not removed: %v", filepath.Base(p), err)
		}
	}
	for _, p := range append(kept, live...) {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s removed: %v", filepath.Base(p), err)
		}
	}

	// The live decoder carries on undisturbed.
	open := feed(t, a, streamStart(2, false), in(2).insert(3, tx("more")), streamStop(), streamCommit(2))[0]
	if got := summary(t, open); got != "txn 2 streamed: INSERT public.u new=(open); INSERT public.u new=(more)" {
		t.Errorf("got %q", got)
	}
	if got := summary(t, done); got != "txn 1 streamed: INSERT public.u new=(done)" {
		t.Errorf("got %q", got)
	}
}

func TestCloseRemovesUnfinished(t *testing.T) {
	dir := t.TempDir()
	d, err := New(Config{SpillDir: dir, MemLimit: 1})
	if err != nil {
		t.Fatal(err)
	}
	msgs := [][]byte{relU,
		streamStart(1, true), in(1).insert(3, tx("1")), streamStop(),
		streamStart(2, true), in(2).insert(3, tx("1")), streamStop(),
		streamStart(3, true), in(3).insert(3, tx("1")), streamStop(), streamCommit(3),
		begin(4), top.insert(3, tx("1")), top.insert(3, tx("2"))}
	txn := feed(t, d, msgs...)[0]
	if n := len(dirFiles(t, dir, ".spill")); n != 4 {
		t.Fatalf("%d spill files, want 4", n)
	}
	// Another decoder in the same directory, closed inside a stream block.
	d2, err := New(Config{SpillDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	feed(t, d2, relU, streamStart(1, true), in(1).insert(3, tx("2")))
	if err := d2.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	// The returned transaction outlives the decoder, and keeps its lock.
	if files := append(dirFiles(t, dir, ".spill"), dirFiles(t, dir, ".lock")...); len(files) != 2 {
		t.Errorf("files after decoder Close: %v", files)
	}
	if got := summary(t, txn); got != "txn 3 streamed: INSERT public.u new=(1)" {
		t.Errorf("got %q", got)
	}
	if err := txn.Close(); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("files left: %v", entries)
	}
}

// TestTxnHandoff reads transactions on another goroutine while the decoder
// goes on; run with -race.
func TestTxnHandoff(t *testing.T) {
	d := newTestDecoder(t, Config{MemLimit: 2 << 10})
	ch := make(chan *Txn, 4)
	done := make(chan error)
	go func() {
		var err error
		for txn := range ch {
			for range 2 {
				n := 0
				if e := txn.Each(func(c *Change) error {
					if c.Rel == nil && c.Op != Truncate {
						return fmt.Errorf("change without relation")
					}
					n++
					return nil
				}); e != nil || n != txn.Len() {
					err = fmt.Errorf("txn %d: %d of %d changes: %v", txn.Xid, n, txn.Len(), e)
				}
			}
			if e := txn.Close(); e != nil {
				err = e
			}
		}
		done <- err
	}()
	send := func(msgs ...[]byte) {
		for _, m := range msgs {
			txn, err := d.Decode(m)
			if err != nil {
				t.Fatal(err)
			}
			if txn != nil {
				ch <- txn
			}
		}
	}
	for i := range 30 {
		xid := uint32(1000 + i)
		send(bigTxn(xid, i*3)...)
		send(streamStart(xid+100, true), in(xid+100).insert(3, tx("s")), streamStop(),
			relT, streamStart(xid+100, false), in(xid+100).insert(1, tx("1"), null, null, toast), streamStop(),
			streamCommit(xid+100))
	}
	close(ch)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestOriginAfterSpill checks that an Origin message arriving after a
// transaction spilled drops the spill file with the changes.
func TestOriginAfterSpill(t *testing.T) {
	dir := t.TempDir()
	d := newTestDecoder(t, Config{SpillDir: dir, MemLimit: 1})
	feed(t, d, relU, begin(5), top.insert(3, tx("1")), top.insert(3, tx("2")))
	if n := len(dirFiles(t, dir, ".spill")); n != 1 {
		t.Fatalf("%d spill files, want 1", n)
	}
	txn := feed(t, d, origin("bdr_x"), top.insert(3, tx("3")), commit())[0]
	if n := len(dirFiles(t, dir, ".spill")); n != 0 {
		t.Errorf("%d spill files after origin, want 0", n)
	}
	if got := summary(t, txn); got != "txn 5 origin=bdr_x:" || txn.Bytes() != 0 {
		t.Errorf("got %q, Bytes() = %d", got, txn.Bytes())
	}
}
