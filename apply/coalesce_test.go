package apply

import (
	"bytes"
	"io"
	"testing"
	"time"
)

// chunks returns one chunk per Read and counts the reads.
type chunks struct {
	data  [][]byte
	reads int
}

func (c *chunks) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	c.reads++
	n := copy(p, c.data[0])
	c.data[0] = c.data[0][n:]
	if len(c.data[0]) == 0 {
		c.data = c.data[1:]
	}
	return n, nil
}

// TestCoalescingReader checks that the reader passes every byte through in
// order and waits before a read only right after a short one.
func TestCoalescingReader(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 3*shortRead)
	src := &chunks{data: [][]byte{[]byte("a"), big, []byte("b"), []byte("c")}}
	r := &coalescingReader{r: src, wait: 20 * time.Millisecond}
	buf := make([]byte, 16<<10)
	var got []byte
	var waits []time.Duration
	for {
		start := time.Now()
		n, err := r.Read(buf)
		waits = append(waits, time.Since(start))
		got = append(got, buf[:n]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	want := append(append([]byte("a"), big...), "bc"...)
	if !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes, want %d in order", len(got), len(want))
	}
	// Reads: "a" (first, no wait), big (after a short read: waits), "b"
	// (after a full read: no wait), "c" (waits), EOF (waits).
	if waits[0] > 10*time.Millisecond || waits[2] > 10*time.Millisecond {
		t.Errorf("waited before a read that did not follow a short one: %v", waits)
	}
	if waits[1] < 15*time.Millisecond || waits[3] < 15*time.Millisecond {
		t.Errorf("did not wait after a short read: %v", waits)
	}
}
