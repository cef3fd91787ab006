package pgtest

import (
	"bytes"
	"fmt"
	"os"
	"sync"
)

// SecretsFileEnv names the file RecordSecret appends to, when set: make
// test greps the whole test output for every line of it.
const SecretsFileEnv = "BDR_TEST_SECRETS"

var secrets struct {
	sync.Mutex
	list []string
}

// RecordSecret notes a password, token or key the harness handed out, so
// that no server log (checked here before it is removed) and no test
// output (checked by make test) may show it.
func RecordSecret(s string) {
	if len(s) < 8 {
		return // too short to grep for without false alarms
	}
	secrets.Lock()
	defer secrets.Unlock()
	secrets.list = append(secrets.list, s)
	if path := os.Getenv(SecretsFileEnv); path != "" {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err == nil {
			fmt.Fprintln(f, s)
			f.Close()
		}
	}
}

// leakedSecret reports which recorded secret, if any, the file shows.
func leakedSecret(path string) (string, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", false
	}
	secrets.Lock()
	defer secrets.Unlock()
	for _, s := range secrets.list {
		if bytes.Contains(b, []byte(s)) {
			return s, true
		}
	}
	return "", false
}
