package catalog

import (
	"context"
	"strings"
	"testing"

	"github.com/bdr-dev/bdr/internal/pgtest"
)

// TestTombstoneTriggers: tables with a key get the tombstone triggers when
// they exist before the migration and when they are created or altered
// after it; deletes and key changes leave tombstones, local and applied
// (session_replication_role replica) alike.
func TestTombstoneTriggers(t *testing.T) {
	ctx := context.Background()
	_, dsn := pgtest.NewDB(t, pgtest.Shared(t, 0))
	conn := pgtest.Conn(t, dsn)
	exec := execFunc(t, conn)
	exec(`CREATE TABLE before (id int PRIMARY KEY, v text)`)
	if err := Migrate(ctx, conn); err != nil {
		t.Fatal(err)
	}
	exec(`CREATE TABLE after (a int, b text, v text, PRIMARY KEY (a, b))`)
	exec(`CREATE TABLE nokey (v text)`)
	exec(`CREATE TABLE later (id int NOT NULL, v text)`)
	exec(`ALTER TABLE later ADD PRIMARY KEY (id)`)
	exec(`CREATE TABLE full_ident (id int PRIMARY KEY, v text)`)
	exec(`ALTER TABLE full_ident REPLICA IDENTITY FULL`)
	exec(`CREATE TEMP TABLE tmp (id int PRIMARY KEY)`)

	triggers := func(table string) string {
		t.Helper()
		var s string
		if err := conn.QueryRow(ctx, `SELECT coalesce(string_agg(tgname || ':' || tgenabled::text, ',' ORDER BY tgname), '')
			FROM pg_trigger WHERE tgrelid = $1::regclass AND tgname LIKE 'bdr\_%'`, table).Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	const both = "bdr_tombstone:A,bdr_tombstone_key:A"
	for table, want := range map[string]string{"before": both, "after": both, "later": both, "nokey": "", "full_ident": "", "tmp": ""} {
		if got := triggers(table); got != want {
			t.Errorf("triggers of %s = %q, want %q", table, got, want)
		}
	}

	exec(`INSERT INTO before VALUES (1, 'x'), (2, 'y'), (3, 'z')`)
	exec(`INSERT INTO after VALUES (1, 'one', 'x')`)
	exec(`DELETE FROM before WHERE id = 1`)
	exec(`UPDATE before SET id = 4 WHERE id = 2`)
	exec(`UPDATE before SET v = 'changed' WHERE id = 3`) // not a key change
	exec(`SET session_replication_role = replica`)
	exec(`DELETE FROM after`)
	exec(`RESET session_replication_role`)
	var got string
	if err := conn.QueryRow(ctx, `SELECT string_agg(relid::regclass || ' ' || key::text || ' ' || deleted, '; ' ORDER BY relid::regclass::text, key::text)
		FROM bdr.tombstones`).Scan(&got); err != nil {
		t.Fatal(err)
	}
	if want := `after {"a": 1, "b": "one"} true; before {"id": 1} true; before {"id": 2} true`; got != want {
		t.Errorf("tombstones = %q, want %q", got, want)
	}
	// The applier builds the key with jsonb_build_object: the same value.
	var match bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM bdr.tombstones WHERE relid = 'after'::regclass
		AND key = pg_catalog.jsonb_build_object('a', $1::int, 'b', $2::text))`, 1, "one").Scan(&match); err != nil || !match {
		t.Errorf("tombstone of (1, 'one') found by jsonb_build_object: %v, %v", match, err)
	}

	// Losing the key takes the triggers off.
	exec(`ALTER TABLE later REPLICA IDENTITY FULL`)
	if got := triggers("later"); got != "" {
		t.Errorf("triggers of later after REPLICA IDENTITY FULL = %q", got)
	}
}

// TestFilterDump: bdr's event trigger always goes; the tombstone triggers
// go only for a database without schema bdr; nothing else does.
func TestFilterDump(t *testing.T) {
	dump := `CREATE TABLE public.kv (k integer NOT NULL, v text);
CREATE TRIGGER bdr_tombstone AFTER DELETE ON public.kv FOR EACH ROW EXECUTE FUNCTION bdr.tombstone('k');
CREATE TRIGGER audit AFTER DELETE ON public.kv FOR EACH ROW EXECUTE FUNCTION public.audit();
ALTER TABLE public.kv ENABLE ALWAYS TRIGGER bdr_tombstone;
ALTER TABLE public.kv ENABLE ALWAYS TRIGGER audit;
CREATE EVENT TRIGGER bdr_track_deletes ON ddl_command_end
         WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE')
   EXECUTE FUNCTION bdr.track_deletes_ddl();
ALTER EVENT TRIGGER bdr_track_deletes OWNER TO postgres;
CREATE EVENT TRIGGER mine ON ddl_command_end EXECUTE FUNCTION public.mine();
`
	keep := FilterDump(dump, true)
	drop := FilterDump(dump, false)
	var streamed strings.Builder
	if err := CopyDump(&streamed, strings.NewReader(dump), false); err != nil || streamed.String() != drop {
		t.Errorf("CopyDump = %q, %v; want FilterDump's %q", streamed.String(), err, drop)
	}
	for _, c := range []struct {
		out, line string
		want      bool
	}{
		{keep, "CREATE TABLE public.kv", true},
		{keep, "CREATE TRIGGER bdr_tombstone", true},
		{keep, "ENABLE ALWAYS TRIGGER bdr_tombstone", true},
		{keep, "bdr_track_deletes", false},
		{keep, "TAG IN", false},
		{keep, "CREATE EVENT TRIGGER mine", true},
		{drop, "CREATE TRIGGER bdr_tombstone", false},
		{drop, "ENABLE ALWAYS TRIGGER bdr_tombstone", false},
		{drop, "CREATE TRIGGER audit", true},
		{drop, "ENABLE ALWAYS TRIGGER audit", true},
		{drop, "track_deletes_ddl", false},
		{drop, "CREATE EVENT TRIGGER mine", true},
	} {
		if got := strings.Contains(c.out, c.line); got != c.want {
			t.Errorf("%q in the filtered dump: %v, want %v:\n%s", c.line, got, c.want, c.out)
		}
	}
}
