package decoder

import (
	"fmt"
	"runtime"
	"slices"
	"strings"
	"testing"
)

func TestStreamedTransactions(t *testing.T) {
	relW := in(100).relation(4, "public", "w", IdentityDefault, col{"id", true, 23, -1}, col{"v", false, 25, -1})
	type step struct {
		msgs   [][]byte
		want   []string // summaries of the txns completed by msgs
		spills int      // spill files afterwards
	}
	tests := []struct {
		name  string
		skip  []string
		steps []step
	}{{
		name: "interleaved with subtransaction and top-level aborts",
		steps: []step{
			{msgs: [][]byte{relT, relU,
				streamStart(100, true),
				in(100).insert(3, tx("100a")),
				in(101).insert(3, tx("101a")),
				in(102).insert(3, tx("102a")),
				streamStop()}, spills: 1},
			{msgs: [][]byte{begin(50), top.insert(3, tx("50")), commit()},
				want: []string{"txn 50: INSERT public.u new=(50)"}, spills: 1},
			{msgs: [][]byte{streamStart(200, true),
				in(200).insert(3, tx("200a")),
				in(201).delete(3, 'O', tx("201a")),
				streamStop()}, spills: 2},
			{msgs: [][]byte{streamStart(100, false),
				in(101).update(3, 'O', []val{tx("101a")}, []val{tx("101b")}),
				in(103).insert(3, tx("103a")),
				in(100).truncate(1, 1),
				relW,
				in(102).insert(4, tx("1"), toast),
				in(100).update(1, 0, nil, []val{tx("1"), null, bin("\xff"), toast}),
				streamStop(),
				streamAbort(100, 101),
				streamAbort(100, 103)}, spills: 2},
			{msgs: [][]byte{streamStart(200, false), in(200).insert(3, tx("200b")), streamStop(),
				streamAbort(200, 200)}, spills: 1},
			{msgs: [][]byte{begin(51), top.insert(3, tx("51")), commit()},
				want: []string{"txn 51: INSERT public.u new=(51)"}, spills: 1},
			{msgs: [][]byte{streamCommit(100)},
				want: []string{"txn 100 streamed: INSERT public.u new=(100a); INSERT public.u new=(102a); " +
					"TRUNCATE public.t cascade; INSERT public.w new=(1,toast); UPDATE public.t new=(1,null,0xff,toast)"},
				spills: 1},
		},
	}, {
		name: "origin in the first stream block drops every change",
		steps: []step{
			{msgs: [][]byte{relU, streamStart(300, true), origin("bdr_c"), in(300).insert(3, tx("1")), in(301).insert(3, tx("2")), streamStop()}},
			{msgs: [][]byte{begin(52), top.insert(3, tx("52")), commit()}, want: []string{"txn 52: INSERT public.u new=(52)"}},
			{msgs: [][]byte{streamStart(300, false), in(300).truncate(0, 3), in(301).delete(3, 'O', tx("1")), streamStop(), streamAbort(300, 301)}},
			{msgs: [][]byte{streamCommit(300)}, want: []string{"txn 300 origin=bdr_c streamed:"}},
		},
	}, {
		name: "skip schemas in a streamed txn",
		skip: []string{"bdr"},
		steps: []step{
			{msgs: [][]byte{relNode, relU, streamStart(400, true), in(400).insert(2, tx("1")), in(400).truncate(0, 2), streamStop()}},
			{msgs: [][]byte{streamStart(400, false), in(401).insert(3, tx("1")), in(400).truncate(0, 2, 3), streamStop()}, spills: 1},
			{msgs: [][]byte{streamCommit(400)}, want: []string{"txn 400 streamed: INSERT public.u new=(1); TRUNCATE public.u"}, spills: 1},
		},
	}, {
		name: "streamed txn with no kept changes has no spill file",
		steps: []step{
			{msgs: [][]byte{relU, streamStart(500, true), in(501).insert(3, tx("1")), streamStop(), streamAbort(500, 501)}, spills: 1},
			{msgs: [][]byte{streamStart(600, true), streamStop(), streamCommit(600)}, want: []string{"txn 600 streamed:"}, spills: 1},
			{msgs: [][]byte{streamCommit(500)}, want: []string{"txn 500 streamed:"}, spills: 1},
		},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			d := newTestDecoder(t, Config{SpillDir: dir, SkipSchemas: tc.skip})
			for i, s := range tc.steps {
				var got []string
				for _, txn := range feed(t, d, s.msgs...) {
					got = append(got, summary(t, txn))
					if again := summary(t, txn); again != got[len(got)-1] {
						t.Errorf("step %d: second Each differs:\n\t%s\n\t%s", i, again, got[len(got)-1])
					}
				}
				if !slices.Equal(got, s.want) {
					t.Errorf("step %d: got\n\t%s\nwant\n\t%s", i, strings.Join(got, "\n\t"), strings.Join(s.want, "\n\t"))
				}
				if n := len(dirFiles(t, dir, ".spill")); n != s.spills {
					t.Errorf("step %d: %d spill files, want %d", i, n, s.spills)
				}
				if d.InTxn() {
					t.Errorf("step %d: InTxn() true", i)
				}
			}
		})
	}
}

// TestStreamedTxnCloseRemovesFile checks that the spill file of a streamed
// transaction lives until the Txn is closed.
func TestStreamedTxnCloseRemovesFile(t *testing.T) {
	dir := t.TempDir()
	d := newTestDecoder(t, Config{SpillDir: dir})
	txns := feed(t, d, relU, streamStart(7, true), in(7).insert(3, tx("1")), streamStop(), streamCommit(7))
	if len(dirFiles(t, dir, ".spill")) != 1 {
		t.Fatal("no spill file")
	}
	if err := txns[0].Close(); err != nil {
		t.Fatal(err)
	}
	if files := dirFiles(t, dir, ".spill"); len(files) != 0 {
		t.Fatalf("spill files after Close: %v", files)
	}
	if err := txns[0].Each(func(*Change) error { return nil }); err == nil {
		t.Error("Each after Close succeeded")
	}
}

// TestStreamedHeap streams a large transaction through a decoder with a
// small memory limit and checks that the Go heap does not grow with it.
func TestStreamedHeap(t *testing.T) {
	if testing.Short() {
		t.Skip("large transaction")
	}
	const (
		changes = 200_000
		block   = 10_000
	)
	d := newTestDecoder(t, Config{MemLimit: 64 << 10})
	feed(t, d, relT)
	payload := strings.Repeat("x", 100)
	// One message buffer, overwritten for every message: the decoder must
	// not keep references into it.
	var buf []byte
	decode := func(msg []byte) *Txn {
		buf = append(buf[:0], msg...)
		txn, err := d.Decode(buf)
		if err != nil {
			t.Fatal(err)
		}
		return txn
	}

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	dataBytes := 0
	for i := 0; i < changes; i++ {
		if i%block == 0 {
			if i > 0 {
				decode(streamStop())
			}
			decode(streamStart(42, i == 0))
		}
		id := fmt.Sprint(i)
		msg := in(42).insert(1, tx(id), tx(payload), bin(id), toast)
		dataBytes += len(msg)
		decode(msg)
	}
	decode(streamStop())
	txn := decode(streamCommit(42))
	runtime.GC()
	runtime.ReadMemStats(&after)
	defer txn.Close()

	growth := int64(after.HeapInuse) - int64(before.HeapInuse)
	t.Logf("data %d bytes, heap in use grew by %d bytes, Txn.Bytes() = %d", dataBytes, growth, txn.Bytes())
	if growth > int64(dataBytes)/10 {
		t.Errorf("heap grew by %d bytes for %d bytes of changes", growth, dataBytes)
	}
	if txn.Len() != changes || txn.Bytes() > 1<<10 {
		t.Errorf("Len() = %d, Bytes() = %d", txn.Len(), txn.Bytes())
	}
	n := 0
	err := txn.Each(func(c *Change) error {
		if string(c.New[0].Data) != fmt.Sprint(n) || string(c.New[2].Data) != fmt.Sprint(n) ||
			string(c.New[1].Data) != payload || c.New[3].Kind != Unchanged {
			return fmt.Errorf("change %d: %s", n, fmtChange(c))
		}
		n++
		return nil
	})
	if err != nil || n != changes {
		t.Fatalf("Each: %d changes, %v", n, err)
	}
}
