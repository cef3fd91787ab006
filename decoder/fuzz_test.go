package decoder

import "testing"

// FuzzDecode feeds arbitrary messages, inside and outside transactions and
// stream blocks: the decoder may reject them but must not panic.
func FuzzDecode(f *testing.F) {
	for _, m := range [][]byte{
		relT, relU, begin(1), commit(), origin("x"), streamStart(2, true), streamStop(), streamCommit(2), streamAbort(2, 3),
		top.insert(1, tx("1"), null, bin("x"), toast), top.update(3, 'K', []val{tx("1")}, []val{tx("2")}),
		top.delete(3, 'O', tx("1")), top.truncate(3, 1, 3), top.typ(1, "a", "b"), top.message("p", "c"),
		in(2).insert(3, tx("1")), in(2).relation(5, "s", "r", 'd', col{"a", true, 23, -1}),
	} {
		f.Add(m, uint8(0))
		f.Add(m, uint8(1))
		f.Add(m, uint8(2))
	}
	f.Fuzz(func(t *testing.T, msg []byte, state uint8) {
		d := newTestDecoder(t, Config{MemLimit: 1})
		setup := [][]byte{relT, relU}
		switch state % 3 {
		case 1:
			setup = append(setup, begin(1))
		case 2:
			setup = append(setup, streamStart(2, true))
		}
		feed(t, d, setup...)
		if txn, err := d.Decode(msg); err == nil && txn != nil {
			_ = txn.Each(func(*Change) error { return nil })
			_ = txn.Close()
		}
	})
}
