package decoder

import (
	"testing"
)

// BenchmarkDecodeInsert decodes insert messages of a four-column row, in
// ordinary transactions of 1000 inserts held in memory, and in a streamed
// transaction going to a spill file.
func BenchmarkDecodeInsert(b *testing.B) {
	msg := top.insert(1, tx("123456"), tx("some text value of moderate length"), bin("\x00\x01\x02\x03"), null)
	b.Run("memory", func(b *testing.B) {
		d := newTestDecoder(b, Config{})
		feed(b, d, relT, begin(1))
		b.SetBytes(int64(len(msg)))
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if _, err := d.Decode(msg); err != nil {
				b.Fatal(err)
			}
			if i%1000 == 999 {
				txn, err := d.Decode(commit())
				if err != nil {
					b.Fatal(err)
				}
				_ = txn.Close()
				if _, err := d.Decode(begin(uint32(i))); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	b.Run("streamed", func(b *testing.B) {
		smsg := in(7).insert(1, tx("123456"), tx("some text value of moderate length"), bin("\x00\x01\x02\x03"), null)
		d := newTestDecoder(b, Config{})
		feed(b, d, relT, streamStart(7, true))
		b.SetBytes(int64(len(smsg)))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := d.Decode(smsg); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		feed(b, d, streamStop(), streamCommit(7))
	})
}
