package monitoring

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
)

type dashboard struct {
	Title      string  `json:"title"`
	UID        string  `json:"uid"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name       string `json:"name"`
			Type       string `json:"type"`
			Definition string `json:"definition"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	Title      string          `json:"title"`
	Type       string          `json:"type"`
	Datasource json.RawMessage `json:"datasource"`
	Targets    []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's
}

func readDashboard(t *testing.T) *dashboard {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(monitoringDir, "dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	dec := json.NewDecoder(strings.NewReader(string(data)))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("dashboard.json: %v", err)
	}
	if d.Title == "" || d.UID == "" || len(d.Panels) == 0 {
		t.Fatalf("dashboard.json: title %q, uid %q, %d panels", d.Title, d.UID, len(d.Panels))
	}
	return &d
}

// grafanaVars are the dashboard variables its queries may use, with a value that stands
// for them when the query is parsed (as Grafana interpolates before sending).
var grafanaVars = map[string]string{"$__rate_interval": "2m", "$node": ".*"}

var leftVar = regexp.MustCompile(`\$\{?\w+`)

// queries are every panel's PromQL, Grafana's variables interpolated.
func (d *dashboard) queries(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{} // query → panel title
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			walk(p.Panels)
			if p.Type == "row" {
				continue
			}
			if len(p.Targets) == 0 {
				t.Errorf("panel %q has no query", p.Title)
			}
			if !strings.Contains(string(p.Datasource), "${datasource}") {
				t.Errorf("panel %q: datasource %s, want the ${datasource} variable", p.Title, p.Datasource)
			}
			for _, tg := range p.Targets {
				q := tg.Expr
				for k, v := range grafanaVars {
					q = strings.ReplaceAll(q, k, v)
				}
				if v := leftVar.FindString(q); v != "" {
					t.Errorf("panel %q: %s is not one of the dashboard's variables", p.Title, v)
				}
				out[q] = p.Title
			}
		}
	}
	walk(d.Panels)
	return out
}

// TestDashboard: the dashboard parses; each panel's queries parse with Prometheus' parser
// and select only metrics the agent really exports (up being the scrape's own); the node
// variable is built from a real metric and label.
func TestDashboard(t *testing.T) {
	d := readDashboard(t)
	qs := d.queries(t)
	if len(qs) < 10 {
		t.Fatalf("%d queries", len(qs))
	}
	sc := realScrapes(t)
	have := sc.exported()
	used := map[string]bool{}
	for q, title := range qs {
		if _, err := promParser.ParseExpr(q); err != nil {
			t.Errorf("panel %q: %q: %v", title, q, err)
			continue
		}
		for _, name := range metricNames(t, q) {
			used[name] = true
			if !have[name] {
				t.Errorf("panel %q selects %s, which the agent does not export", title, name)
			}
		}
	}
	// Every precache_* metric the agent exports has a panel.
	for name := range have {
		base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")
		if strings.HasPrefix(name, "precache_") && !used[name] && !used[base+"_bucket"] && !used[base+"_count"] {
			t.Errorf("no panel shows %s", name)
		}
	}
	nodeVar := regexp.MustCompile(`^label_values\((\w+), (\w+)\)$`)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		m := nodeVar.FindStringSubmatch(v.Definition)
		if m == nil {
			t.Errorf("variable %s: definition %q", v.Name, v.Definition)
			continue
		}
		found := false
		for _, smp := range sc.healthyA[0].samples {
			found = found || smp.lset.Get(model.MetricNameLabel) == m[1] && smp.lset.Get(m[2]) != ""
		}
		if !found {
			t.Errorf("variable %s: no %s series with a %s label in the agent's scrape", v.Name, m[1], m[2])
		}
	}
}
