//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package decoder

import "os"

// Without flock a Decoder cannot tell a live owner from a dead one: New
// then removes every spill file in the directory, so Decoders must not
// share a spill directory on these systems.

func lockFile(*os.File) error { return nil }

func tryLockFile(*os.File) (bool, error) { return true, nil }
