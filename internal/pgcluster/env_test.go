package pgcluster

import "testing"

func TestQuoteConf(t *testing.T) {
	tests := []struct{ in, want string }{
		{"on", "'on'"},
		{"", "''"},
		{"it's", "'it''s'"},
		{`C:\dir`, `'C:\\dir'`},
	}
	for _, tt := range tests {
		if got := quoteConf(tt.in); got != tt.want {
			t.Errorf("quoteConf(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

func TestDSN(t *testing.T) {
	s := &Server{port: 5433}
	tests := []struct{ db, want string }{
		{"app", "host=127.0.0.1 port=5433 user=postgres dbname=app sslmode=disable"},
		{"my db", "host=127.0.0.1 port=5433 user=postgres dbname='my db' sslmode=disable"},
		{`it's\`, `host=127.0.0.1 port=5433 user=postgres dbname='it\'s\\' sslmode=disable`},
		{"", "host=127.0.0.1 port=5433 user=postgres dbname='' sslmode=disable"},
	}
	for _, tt := range tests {
		if got := s.DSN(tt.db); got != tt.want {
			t.Errorf("DSN(%q) = %s, want %s", tt.db, got, tt.want)
		}
	}
}
