package decoder

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestRelationCacheReplacement(t *testing.T) {
	d := newTestDecoder(t, Config{})
	relV2 := top.relation(1, "public", "t", IdentityFull,
		col{"id", false, 20, -1}, col{"code", true, 1043, 14}, col{"v", false, 25, -1})
	txns := feed(t, d,
		relT,
		begin(10), top.insert(1, tx("1"), tx("a"), null, null), commit(),
		relV2,
		begin(11), top.insert(1, tx("2"), tx("x"), tx("b")), commit(),
	)
	if len(txns) != 2 {
		t.Fatalf("got %d txns, want 2", len(txns))
	}
	rel := func(txn *Txn) *Relation {
		var r *Relation
		_ = txn.Each(func(c *Change) error { r = c.Rel; return nil })
		return r
	}
	r1, r2 := rel(txns[0]), rel(txns[1])
	if r1 == r2 {
		t.Fatal("relation message did not produce a new *Relation")
	}
	want1 := Relation{ID: 1, Schema: "public", Name: "t", ReplicaIdentity: IdentityDefault, Columns: []Column{
		{"id", 23, -1, true}, {"v", 25, -1, false}, {"b", 17, -1, false}, {"doc", 25, -1, false}}}
	want2 := Relation{ID: 1, Schema: "public", Name: "t", ReplicaIdentity: IdentityFull, Columns: []Column{
		{"id", 20, -1, false}, {"code", 1043, 14, true}, {"v", 25, -1, false}}}
	for _, c := range []struct {
		got, want *Relation
		keys      []int
	}{{r1, &want1, []int{0}}, {r2, &want2, []int{1}}} {
		if c.got.ID != c.want.ID || c.got.String() != c.want.String() ||
			c.got.ReplicaIdentity != c.want.ReplicaIdentity || !slices.Equal(c.got.Columns, c.want.Columns) {
			t.Errorf("relation = %+v, want %+v", *c.got, *c.want)
		}
		if !slices.Equal(c.got.KeyColumns(), c.keys) {
			t.Errorf("KeyColumns() = %v, want %v", c.got.KeyColumns(), c.keys)
		}
	}
}

func TestDecodeChanges(t *testing.T) {
	tests := []struct {
		name string
		msgs [][]byte
		skip []string
		keep []string
		want []string
	}{{
		name: "insert with every value kind",
		msgs: [][]byte{relT, begin(5), top.insert(1, tx("1"), null, bin("\x00\x01"), toast), commit()},
		want: []string{"txn 5: INSERT public.t new=(1,null,0x0001,toast)"},
	}, {
		name: "empty text and binary values",
		msgs: [][]byte{relT, begin(5), top.insert(1, tx("1"), tx(""), bin(""), tx("é")), commit()},
		want: []string{"txn 5: INSERT public.t new=(1,,0x,é)"},
	}, {
		name: "update without old tuple keeps unchanged toast",
		msgs: [][]byte{relT, begin(6), top.update(1, 0, nil, []val{tx("1"), tx("b"), null, toast}), commit()},
		want: []string{"txn 6: UPDATE public.t new=(1,b,null,toast)"},
	}, {
		name: "update with old key",
		msgs: [][]byte{relT, begin(6), top.update(1, 'K', []val{tx("1"), null, null, null}, []val{tx("2"), tx("b"), null, toast}), commit()},
		want: []string{"txn 6: UPDATE public.t old=(1,null,null,null) new=(2,b,null,toast)"},
	}, {
		name: "update with full old row",
		msgs: [][]byte{relU, begin(6), top.update(3, 'O', []val{tx("1")}, []val{tx("2")}), commit()},
		want: []string{"txn 6: UPDATE public.u old=(1) new=(2)"},
	}, {
		name: "delete by key and by full row",
		msgs: [][]byte{relT, relU, begin(7), top.delete(1, 'K', tx("1"), null, null, null), top.delete(3, 'O', tx("9")), commit()},
		want: []string{"txn 7: DELETE public.t old=(1,null,null,null); DELETE public.u old=(9)"},
	}, {
		name: "truncate options",
		msgs: [][]byte{relT, relU, begin(8),
			top.truncate(0, 1), top.truncate(1, 1, 3), top.truncate(2, 3), top.truncate(3, 3, 1), commit()},
		want: []string{"txn 8: TRUNCATE public.t; TRUNCATE public.t,public.u cascade; TRUNCATE public.u restart; TRUNCATE public.u,public.t cascade restart"},
	}, {
		name: "relation message inside a transaction",
		msgs: [][]byte{begin(9), relU, top.insert(3, tx("1")), commit()},
		want: []string{"txn 9: INSERT public.u new=(1)"},
	}, {
		name: "type and logical decoding messages are ignored",
		msgs: [][]byte{top.typ(16384, "public", "mood"), top.message("bdr", "x"), relU,
			begin(9), top.typ(16385, "public", "t2"), top.message("p", "y"), top.insert(3, tx("1")), commit()},
		want: []string{"txn 9: INSERT public.u new=(1)"},
	}, {
		name: "several transactions",
		msgs: [][]byte{relU, begin(1), top.insert(3, tx("1")), commit(), begin(2), commit(), begin(3), top.delete(3, 'O', tx("1")), commit()},
		want: []string{"txn 1: INSERT public.u new=(1)", "txn 2:", "txn 3: DELETE public.u old=(1)"},
	}, {
		name: "skip schemas",
		skip: []string{"bdr"},
		msgs: [][]byte{relT, relNode, relU,
			begin(20), top.insert(2, tx("1")), top.insert(3, tx("1")), top.update(2, 0, nil, []val{tx("1")}),
			top.delete(2, 'K', tx("1")), top.truncate(1, 2, 3), top.truncate(0, 2), commit(),
			begin(21), top.insert(2, tx("2")), top.truncate(0, 2), commit()},
		want: []string{"txn 20: INSERT public.u new=(1); TRUNCATE public.u cascade", "txn 21:"},
	}, {
		name: "kept tables of a skipped schema",
		skip: []string{"bdr"},
		keep: []string{"bdr.delta"},
		msgs: [][]byte{relNode, relDelta, relU,
			begin(22), top.insert(2, tx("1")), top.insert(4, tx("d")), top.insert(3, tx("1")), top.delete(4, 'K', tx("d")), commit()},
		want: []string{"txn 22: INSERT bdr.delta new=(d); INSERT public.u new=(1); DELETE bdr.delta old=(d)"},
	}, {
		name: "origin after begin drops the changes",
		msgs: [][]byte{relT, relU, begin(30), origin("bdr_a"), top.insert(3, tx("1")), top.truncate(0, 1), commit(),
			begin(31), top.insert(3, tx("2")), commit()},
		want: []string{"txn 30 origin=bdr_a:", "txn 31: INSERT public.u new=(2)"},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newTestDecoder(t, Config{SkipSchemas: tc.skip, KeepTables: tc.keep})
			var got []string
			for _, txn := range feed(t, d, tc.msgs...) {
				got = append(got, summary(t, txn))
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("got\n\t%s\nwant\n\t%s", strings.Join(got, "\n\t"), strings.Join(tc.want, "\n\t"))
			}
			if d.InTxn() {
				t.Error("InTxn() after commit")
			}
		})
	}
}

func TestTxnEnvelope(t *testing.T) {
	d := newTestDecoder(t, Config{})
	ts := time.Date(2025, 3, 4, 5, 6, 7, 123456000, time.UTC)
	if _, err := d.Decode(begin(77)); err != nil {
		t.Fatal(err)
	}
	if !d.InTxn() {
		t.Fatal("InTxn() false after begin")
	}
	txn, err := d.Decode(commitAt(0x16B3748, 0x16B3778, ts))
	if err != nil || txn == nil {
		t.Fatalf("commit: %v, %v", txn, err)
	}
	if d.InTxn() {
		t.Error("InTxn() true after commit")
	}
	if txn.Xid != 77 || txn.CommitLSN != 0x16B3748 || txn.EndLSN != 0x16B3778 || !txn.CommitTime.Equal(ts) ||
		txn.Streamed || txn.Filtered() || txn.Len() != 0 || txn.Bytes() != 0 {
		t.Errorf("txn = %+v", txn)
	}

	feed(t, d, relU, begin(78), origin("bdr_b"))
	if !d.InTxn() {
		t.Fatal("InTxn() false inside filtered txn")
	}
	txn = feed(t, d, top.insert(3, tx("1")), commitAt(0x2000, 0x2030, ts))[0]
	if !txn.Filtered() || txn.Origin != "bdr_b" || txn.Len() != 0 || txn.Bytes() != 0 ||
		txn.CommitLSN != 0x2000 || txn.EndLSN != 0x2030 {
		t.Errorf("filtered txn = %+v", txn)
	}
}

func TestProtocolErrors(t *testing.T) {
	tests := []struct {
		name string
		msgs [][]byte // the last one must fail
		want string
	}{
		{"empty message", [][]byte{{}}, "decode: empty message"},
		{"unsupported type", [][]byte{{'P', 0, 0}}, `unsupported message type 'P'`},
		{"commit without begin", [][]byte{commit()}, "decode commit: no transaction in progress"},
		{"nested begin", [][]byte{begin(1), begin(2)}, "decode begin of txn 2: txn 1 still in progress"},
		{"begin inside stream block", [][]byte{streamStart(5, true), begin(2)}, "inside stream block of txn 5"},
		{"unknown relation", [][]byte{begin(1234), top.insert(1234, tx("1"))}, "decode insert in txn 1234: unknown relation id 1234"},
		{"unknown relation in truncate", [][]byte{relU, begin(4), top.truncate(0, 3, 9)}, "decode truncate in txn 4: unknown relation id 9"},
		{"unknown relation in streamed txn", [][]byte{streamStart(5, true), in(5).delete(7, 'K', tx("1"))}, "decode delete in txn 5: unknown relation id 7"},
		{"change outside a transaction", [][]byte{relU, top.insert(3, tx("1"))}, "decode insert: outside a transaction"},
		{"update outside a transaction", [][]byte{relU, top.update(3, 0, nil, []val{tx("1")})}, "decode update: outside a transaction"},
		{"origin outside a transaction", [][]byte{origin("x")}, "decode origin \"x\": outside a transaction"},
		{"column count mismatch", [][]byte{relU, begin(1), top.insert(3, tx("1"), tx("2"))}, "decode insert in txn 1: new tuple: relation public.u has 1 columns, tuple has 2"},
		{"unknown value kind", [][]byte{relU, begin(1), top.insert(3, val{kind: 'x'})}, "unknown value kind 'x'"},
		{"truncated tuple", [][]byte{relU, begin(1), top.insert(3, tx("abc"))[:14]}, "decode insert: malformed message"},
		{"truncated relation", [][]byte{relT[:17]}, "decode relation: malformed message"},
		{"short begin", [][]byte{begin(1)[:10]}, "decode begin: BeginMessage must have 20 bytes"},
		{"stream commit of unknown txn", [][]byte{streamCommit(9)}, "decode stream commit of txn 9: unknown txn"},
		{"stream abort of unknown txn", [][]byte{streamAbort(9, 10)}, "decode stream abort of txn 9: unknown txn"},
		{"stream stop without start", [][]byte{streamStop()}, "decode stream stop: no stream block open"},
		{"nested stream start", [][]byte{streamStart(5, true), streamStart(6, true)}, "stream block of txn 5 still open"},
		{"stream start inside txn", [][]byte{begin(1), streamStart(6, true)}, "decode stream start of txn 6: inside txn 1"},
		{"later segment of unknown txn", [][]byte{streamStart(6, false)}, "decode stream start of txn 6: unknown txn"},
		{"first segment twice", [][]byte{streamStart(6, true), streamStop(), streamStart(6, true)}, "first segment of a txn already streaming"},
		{"stream commit inside block", [][]byte{streamStart(6, true), streamCommit(6)}, "inside stream block of txn 6"},
		{"commit inside stream block", [][]byte{streamStart(6, true), commit()}, "decode commit: inside stream block of txn 6"},
		{"stream commit inside txn", [][]byte{streamStart(6, true), streamStop(), begin(1), streamCommit(6)}, "decode stream commit of txn 6: inside txn 1"},
		{"stream commit after abort", [][]byte{streamStart(6, true), streamStop(), streamAbort(6, 6), streamCommit(6)}, "unknown txn"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newTestDecoder(t, Config{})
			last := len(tc.msgs) - 1
			feed(t, d, tc.msgs[:last]...)
			_, err := d.Decode(tc.msgs[last])
			if err == nil {
				t.Fatalf("no error, want %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want it to contain %q", err, tc.want)
			}
			if !errors.Is(err, ErrProtocol) {
				t.Errorf("errors.Is(%q, ErrProtocol) = false", err)
			}
		})
	}
}

func TestDecodeAfterClose(t *testing.T) {
	d := newTestDecoder(t, Config{})
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := d.Decode(begin(1)); err == nil || errors.Is(err, ErrProtocol) {
		t.Fatalf("Decode after Close: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []Config{{}, {SpillDir: t.TempDir(), MemLimit: -1}} {
		if _, err := New(c); err == nil {
			t.Errorf("New(%+v) succeeded", c)
		}
	}
}
