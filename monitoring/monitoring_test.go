package monitoring

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"testing"

	"gopkg.in/yaml.v3"
)

// future are metrics the rules already use and a later part of bdr exports;
// rules on them never fire until then.
var future = map[string]bool{}

var metricRef = regexp.MustCompile(`\bbdr_[a-z_]+\b`)

// exported collects the metric names bdr's code declares.
func exported(t *testing.T) map[string]bool {
	t.Helper()
	decl := regexp.MustCompile(`Name:\s+"(bdr_[a-z_]+)"`)
	names := map[string]bool{}
	files, err := filepath.Glob("../*/*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range decl.FindAllStringSubmatch(string(b), -1) {
			names[m[1]] = true
		}
	}
	if len(names) < 10 {
		t.Fatalf("found only %d metric declarations; the scan is broken", len(names))
	}
	return names
}

func check(t *testing.T, where string, text string, names map[string]bool) int {
	t.Helper()
	n := 0
	for _, ref := range metricRef.FindAllString(text, -1) {
		n++
		if !names[ref] && !future[ref] {
			t.Errorf("%s uses %s, which bdr does not export", where, ref)
		}
	}
	return n
}

func TestAlertRules(t *testing.T) {
	names := exported(t)
	b, err := os.ReadFile("alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []struct {
				Alert       string            `yaml:"alert"`
				Expr        string            `yaml:"expr"`
				For         string            `yaml:"for"`
				Labels      map[string]string `yaml:"labels"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &rules); err != nil {
		t.Fatal(err)
	}
	var alerts []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || r.Expr == "" || r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
				t.Errorf("rule %+v lacks a name, expression, severity or summary", r)
			}
			if check(t, r.Alert, r.Expr, names) == 0 {
				t.Errorf("rule %s uses no bdr metric", r.Alert)
			}
			alerts = append(alerts, r.Alert)
		}
	}
	sort.Strings(alerts)
	for _, want := range []string{"BdrNodeDown", "BdrReplicationLag", "BdrWALBudgetWarning", "BdrParkedTransactions", "BdrClockSkew"} {
		if i := sort.SearchStrings(alerts, want); i == len(alerts) || alerts[i] != want {
			t.Errorf("no %s rule", want)
		}
	}
}

func TestDashboard(t *testing.T) {
	names := exported(t)
	b, err := os.ReadFile("grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Title  string `json:"title"`
		Panels []struct {
			Title   string `json:"title"`
			Type    string `json:"type"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	used := map[string]bool{}
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			check(t, p.Title, tg.Expr, names)
			for _, ref := range metricRef.FindAllString(tg.Expr, -1) {
				used[ref] = true
			}
		}
	}
	for name := range names {
		if !used[name] {
			t.Errorf("the dashboard does not show %s", name)
		}
	}
}
