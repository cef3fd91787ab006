// Package state is bdrd's own durable state in <data_dir>/bdrd.db (bbolt):
// the node's identity and the progress of a join. Never the replication
// position, which lives in PostgreSQL with the data (DESIGN rule 1).
//
// A Store is safe for concurrent use.
package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

var bucket = []byte("bdrd")

// Keys used by bdrd.
const (
	KeyIdentity = "identity"
	KeyJoin     = "join"
	KeyJoinTask = "join-task" // the join under way, to undo it after a restart
	KeyCopied   = "copied"    // a join began copying the group's data here
)

// Identity is who this bdrd is, fixed at init or join.
type Identity struct {
	Name   string `json:"name"`
	NodeID int32  `json:"node_id"`
}

// Store is the bbolt file.
type Store struct {
	db *bolt.DB
}

// Open opens (creating) dir/bdrd.db. It fails fast when another bdrd holds
// the file.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	path := filepath.Join(dir, "bdrd.db")
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("open %s: another bdrd is using this data dir", path)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucket)
		return err
	}); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return &Store{db: db}, nil
}

// Get reads key into v; ok is false when the key is absent.
func (s *Store) Get(key string, v any) (ok bool, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		data := tx.Bucket(bucket).Get([]byte(key))
		if data == nil {
			return nil
		}
		ok = true
		return json.Unmarshal(data, v)
	})
	if err != nil {
		return false, fmt.Errorf("read state %s: %w", key, err)
	}
	return ok, nil
}

// Put stores v under key, durably.
func (s *Store) Put(key string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("write state %s: %w", key, err)
	}
	if err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Put([]byte(key), data) }); err != nil {
		return fmt.Errorf("write state %s: %w", key, err)
	}
	return nil
}

// Delete removes key.
func (s *Store) Delete(key string) error {
	if err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Delete([]byte(key)) }); err != nil {
		return fmt.Errorf("delete state %s: %w", key, err)
	}
	return nil
}

// Close closes the file.
func (s *Store) Close() error { return s.db.Close() }
