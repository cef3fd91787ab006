package pgtest

import (
	"os"
	"path/filepath"
	"testing"
)

func TestLeakedSecret(t *testing.T) {
	out := filepath.Join(t.TempDir(), "secrets")
	t.Setenv(SecretsFileEnv, out)
	RecordSecret("short") // ignored: too short to grep for
	RecordSecret("pw-TESTSECRET1234")
	log := filepath.Join(t.TempDir(), "server.log")
	if err := os.WriteFile(log, []byte("LOG:  connection authorized: user=postgres database=x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if s, leaked := leakedSecret(log); leaked {
		t.Errorf("clean log reported as showing %q", s)
	}
	if err := os.WriteFile(log, []byte("FATAL:  bad option password=pw-TESTSECRET1234\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, leaked := leakedSecret(log); !leaked {
		t.Error("a log showing a recorded password was not caught")
	}
	b, err := os.ReadFile(out)
	if err != nil || string(b) != "pw-TESTSECRET1234\n" {
		t.Errorf("secrets file: %q, %v; want the long secret only", b, err)
	}
}
