package state

import (
	"strings"
	"testing"
)

func TestStore(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	var id Identity
	if ok, err := s.Get(KeyIdentity, &id); err != nil || ok {
		t.Fatalf("Get on empty store = %v, %v", ok, err)
	}
	if err := s.Put(KeyIdentity, Identity{Name: "a", NodeID: 3}); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "another bdrd") {
		t.Fatalf("second Open = %v, want refusal", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if ok, err := s.Get(KeyIdentity, &id); err != nil || !ok || id != (Identity{"a", 3}) {
		t.Fatalf("after reopen: %v %v %+v", ok, err, id)
	}
	if err := s.Delete(KeyIdentity); err != nil {
		t.Fatal(err)
	}
	if ok, _ := s.Get(KeyIdentity, &id); ok {
		t.Fatal("key survived Delete")
	}
}
