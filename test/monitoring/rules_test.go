package monitoring

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/rules"
	"github.com/prometheus/prometheus/util/teststorage"
	sigsyaml "sigs.k8s.io/yaml"
)

const runbookBase = "https://github.com/precache/precache/blob/main/docs/operations.md#"

var promParser = parser.NewParser(parser.Options{})

// ruleGroups extracts spec.groups from the PrometheusRule, as the Prometheus Operator
// hands them to Prometheus, and parses them with Prometheus' rule parser (unknown fields
// rejected, every expression and template checked).
func ruleGroups(t *testing.T) *rulefmt.RuleGroups {
	t.Helper()
	path := filepath.Join(monitoringDir, "prometheusrule.yaml")
	var pr monitoringv1.PrometheusRule
	readStrict(t, path, &pr) // the operator's own schema
	if pr.APIVersion != "monitoring.coreos.com/v1" || pr.Kind != "PrometheusRule" {
		t.Fatalf("%s/%s, want monitoring.coreos.com/v1 PrometheusRule", pr.APIVersion, pr.Kind)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Spec struct {
			Groups any `json:"groups"`
		} `json:"spec"`
	}
	if err := sigsyaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	groups, err := sigsyaml.Marshal(map[string]any{"groups": doc.Spec.Groups})
	if err != nil {
		t.Fatal(err)
	}
	rgs, errs := rulefmt.Parse(groups, false, model.UTF8Validation, promParser, slog.New(slog.DiscardHandler))
	for _, err := range errs {
		t.Errorf("rulefmt: %v", err)
	}
	if rgs == nil || len(errs) > 0 {
		t.FailNow()
	}
	return rgs
}

func alertRules(t *testing.T) []rulefmt.Rule {
	t.Helper()
	var out []rulefmt.Rule
	for _, g := range ruleGroups(t).Groups {
		out = append(out, g.Rules...)
	}
	return out
}

// TestRulesParse: the rules parse with Prometheus' rule parser; every alert has a severity,
// a summary, a description naming the node, and a runbook that is a section of
// docs/operations.md.
func TestRulesParse(t *testing.T) {
	t.Parallel()
	anchors := docAnchors(t)
	rs := alertRules(t)
	if len(rs) == 0 {
		t.Fatal("no rules")
	}
	for _, r := range rs {
		t.Run(r.Alert, func(t *testing.T) {
			if r.Alert == "" {
				t.Fatalf("recording rule %q: only alerts are expected here", r.Record)
			}
			if s := r.Labels["severity"]; s != "warning" && s != "critical" {
				t.Errorf("severity %q", s)
			}
			for _, k := range []string{"summary", "description", "runbook_url"} {
				if r.Annotations[k] == "" {
					t.Errorf("no %s", k)
				}
			}
			if r.Alert != "PrecacheAgentAbsent" && !strings.Contains(r.Annotations["description"], "$labels.node") {
				t.Errorf("the description does not name the node: %q", r.Annotations["description"])
			}
			anchor, ok := strings.CutPrefix(r.Annotations["runbook_url"], runbookBase)
			if !ok || !anchors[anchor] {
				t.Errorf("runbook_url %s: not a section of docs/operations.md (%s…)", r.Annotations["runbook_url"], runbookBase)
			}
			if anchor != strings.ToLower(r.Alert) {
				t.Errorf("runbook anchor %q, want the alert's own section %q", anchor, strings.ToLower(r.Alert))
			}
		})
	}
}

// docAnchors are GitHub's anchors for the headings of docs/operations.md.
func docAnchors(t *testing.T) map[string]bool {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	drop := regexp.MustCompile(`[^\p{L}\p{N} _-]`)
	out := map[string]bool{}
	for _, line := range strings.Split(string(data), "\n") {
		if !strings.HasPrefix(line, "#") {
			continue
		}
		h := strings.TrimSpace(strings.TrimLeft(line, "#"))
		out[strings.ReplaceAll(drop.ReplaceAllString(strings.ToLower(h), ""), " ", "-")] = true
	}
	return out
}

// metricNames are the metric names expr selects.
func metricNames(t *testing.T, expr string) []string {
	t.Helper()
	e, err := promParser.ParseExpr(expr)
	if err != nil {
		t.Fatalf("%q: %v", expr, err)
	}
	var names []string
	for _, sel := range parser.ExtractSelectors(e) {
		for _, m := range sel {
			if m.Name == model.MetricNameLabel && m.Type == labels.MatchEqual && !slices.Contains(names, m.Value) {
				names = append(names, m.Value)
			}
		}
	}
	return names
}

// exported are the metric names of the agents' real scrapes, healthy and failing (a counter
// with a label, such as precache_failures_total{reason}, appears once it is counted; up is
// the scrape's own).
func (sc *agentScrapes) exported() map[string]bool {
	out := map[string]bool{}
	for _, s := range slices.Concat(sc.healthyA, sc.loopB, sc.failingA, sc.failingB, []scrape{sc.downA}) {
		for _, smp := range s.samples {
			out[smp.lset.Get(model.MetricNameLabel)] = true
		}
	}
	return out
}

// TestRulesNameRealMetrics: every metric an alert selects is one the agent really exports.
func TestRulesNameRealMetrics(t *testing.T) {
	have := realScrapes(t).exported()
	for _, r := range alertRules(t) {
		for _, name := range metricNames(t, r.Expr) {
			if !have[name] {
				t.Errorf("%s selects %s, which the agent does not export", r.Alert, name)
			}
		}
	}
}

// scenario is a history of scrapes, one a minute: each real scrape of a part once, in
// order, then its last repeated until the part's minutes are over.
type part struct {
	scrapes []scrape
	minutes int
}

// TestAlerts evaluates each alert with Prometheus' rule and PromQL engines over real
// scrapes of the agent, one a minute, and checks which fired: each fires when its condition
// held for real, and no other does.
func TestAlerts(t *testing.T) {
	sc := realScrapes(t)
	tests := []struct {
		name  string
		parts []part
		node  string
		want  []string
	}{
		{"all right", []part{{sc.healthyA, 30}}, "node-a", nil},
		{"the node's DNS depends on the cluster", []part{{sc.loopB, 30}}, "node-b",
			[]string{"PrecacheNodeDNSDependsOnCluster"}},
		{"the registry refuses and the images are gone", []part{{sc.healthyA, 10}, {sc.failingA, 80}}, "node-a",
			[]string{"PrecacheImagesNotRight", "PrecacheNoRecentSuccess", "PrecacheReconcilesFailing"}},
		{"the same, on a node whose DNS depends on the cluster", []part{{sc.loopB, 10}, {sc.failingB, 80}}, "node-b",
			[]string{"PrecacheImagesNotRight", "PrecacheNoRecentSuccess", "PrecacheNodeCannotRecover", "PrecacheNodeDNSDependsOnCluster", "PrecacheReconcilesFailing"}},
		{"the agent is gone", []part{{sc.healthyA, 10}, {[]scrape{sc.downA}, 20}}, "node-a",
			[]string{"PrecacheAgentDown"}},
		{"nothing is scraped", []part{{nil, 30}}, "",
			[]string{"PrecacheAgentAbsent"}},
	}
	rs := alertRules(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fired := evaluate(t, rs, tt.parts)
			var got []string
			for name := range fired {
				got = append(got, name)
			}
			sort.Strings(got)
			if !slices.Equal(got, tt.want) {
				t.Errorf("fired %v, want %v", got, tt.want)
			}
			for name, a := range fired {
				for k, v := range a.Annotations.Map() {
					if strings.Contains(v, "<error expanding template") {
						t.Errorf("%s %s: %s", name, k, v)
					}
				}
				if name == "PrecacheAgentAbsent" {
					continue
				}
				if a.Labels.Get("node") != tt.node || !strings.Contains(a.Annotations.Get("description"), tt.node) {
					t.Errorf("%s: labels %s, description %q: want node %s named", name, a.Labels, a.Annotations.Get("description"), tt.node)
				}
				t.Logf("%s fired: %s", name, a.Annotations.Get("description"))
			}
			if a, ok := fired["PrecacheReconcilesFailing"]; ok {
				// The description lists the failure reasons the agent really counted.
				last := tt.parts[len(tt.parts)-1].scrapes
				var reasons []string
				for _, smp := range last[len(last)-1].samples {
					if smp.lset.Get(model.MetricNameLabel) == "precache_failures_total" && smp.v > 0 {
						reasons = append(reasons, smp.lset.Get("reason"))
					}
				}
				if len(reasons) == 0 {
					t.Fatal("no precache_failures_total sample above 0 in the failing scrapes")
				}
				for _, r := range reasons {
					if !strings.Contains(a.Annotations.Get("description"), r+" (") {
						t.Errorf("the description does not list reason %s: %q", r, a.Annotations.Get("description"))
					}
				}
			}
		})
	}
}

// evaluate loads the scenario into a TSDB and evaluates every alert once a minute, as a
// rule group with a one-minute interval does, returning the alerts that reached firing
// (the last firing instance of each).
func evaluate(t *testing.T, rs []rulefmt.Rule, parts []part) map[string]*rules.Alert {
	t.Helper()
	start := time.Now().Truncate(time.Minute)
	for _, p := range parts {
		if len(p.scrapes) > 0 {
			start = p.scrapes[0].at
			break
		}
	}
	st := teststorage.New(t)
	app := st.Appender(context.Background())
	minute := 0
	for _, p := range parts {
		for i := range p.minutes {
			if len(p.scrapes) > 0 {
				s := p.scrapes[min(i, len(p.scrapes)-1)]
				ts := start.Add(time.Duration(minute) * time.Minute).UnixMilli()
				for _, smp := range s.samples {
					if _, err := app.Append(0, smp.lset, ts, smp.v); err != nil {
						t.Fatalf("appending %s: %v", smp.lset, err)
					}
				}
			}
			minute++
		}
	}
	if err := app.Commit(); err != nil {
		t.Fatal(err)
	}
	engine := promql.NewEngine(promql.EngineOpts{MaxSamples: 1e6, Timeout: time.Minute, LookbackDelta: 5 * time.Minute, Parser: promParser})
	query := rules.EngineQueryFunc(engine, st)
	fired := map[string]*rules.Alert{}
	for _, r := range rs {
		expr, err := promParser.ParseExpr(r.Expr)
		if err != nil {
			t.Fatal(err)
		}
		ar := rules.NewAlertingRule(r.Alert, expr, time.Duration(r.For), time.Duration(r.KeepFiringFor),
			labels.FromMap(r.Labels), labels.FromMap(r.Annotations), labels.EmptyLabels(), "", true, slog.New(slog.DiscardHandler))
		for m := range minute {
			if _, err := ar.Eval(context.Background(), 0, start.Add(time.Duration(m)*time.Minute), query, nil, 0); err != nil {
				t.Fatalf("%s at minute %d: %v", r.Alert, m, err)
			}
			for _, a := range ar.ActiveAlerts() {
				if a.State == rules.StateFiring {
					fired[r.Alert] = a
				}
			}
		}
	}
	return fired
}

// agentScrapes are scrapes of real agents, made once for every test that needs them.
type agentScrapes struct {
	healthyA []scrape // node-a: every image right and pinned, DNS independent of the cluster
	loopB    []scrape // node-b: every image right, DNS only through the cluster's
	failingA []scrape // node-a once its registry refuses and its images are gone: one per failed reconcile
	failingB []scrape // node-b, the same
	downA    scrape   // node-a's target once the agent has exited
}

var (
	realOnce sync.Once
	realData *agentScrapes
)

// realScrapes runs two nodes' agents against the test cluster and scrapes them in each
// state the alerts are about (the first test to ask pays; the others reuse the scrapes).
func realScrapes(t *testing.T) *agentScrapes {
	t.Helper()
	needDaemons(t)
	realOnce.Do(func() { realData = makeRealScrapes(t) })
	if realData == nil {
		t.Fatal("the agents' scrapes could not be made (see the first test that asked)")
	}
	return realData
}

func makeRealScrapes(t *testing.T) *agentScrapes {
	pm, ds := podMonitor(t), daemonSet(t)
	a := startNode(t, "node-a", "192.0.2.53") // a resolver outside the cluster
	b := startNode(t, "node-b", clusterDNSIP) // the CoreDNS service: the loop
	ta := targetLabels(t, pm, ds, a.name, a.pod, a.addr)
	tb := targetLabels(t, pm, ds, b.name, b.pod, b.addr)
	right := func(dns float64) func(scrape) error {
		return func(s scrape) error {
			desired, _ := s.value("precache_images_desired")
			present, _ := s.value("precache_images_present")
			pinned, _ := s.value("precache_images_pinned")
			ok, _ := s.value("precache_reconciles_total", "result", "ok")
			d, _ := s.value("precache_dns_depends_on_cluster")
			if desired == 0 || present != desired || pinned != desired || ok == 0 || d != dns {
				return fmt.Errorf("desired %v present %v pinned %v, ok reconciles %v, DNS depends on the cluster %v (want %v)", desired, present, pinned, ok, d, dns)
			}
			return nil
		}
	}
	r := &agentScrapes{}
	r.healthyA = append(r.healthyA, a.waitScrape(t, ta, 90*time.Second, "every image right, DNS independent", right(0)))
	r.loopB = append(r.loopB, b.waitScrape(t, tb, 90*time.Second, "every image right, DNS through the cluster", right(1)))
	for range 2 {
		time.Sleep(time.Second)
		r.healthyA = append(r.healthyA, a.scrape(t, ta))
		r.loopB = append(r.loopB, b.scrape(t, tb))
	}
	if v, _ := r.healthyA[0].value("precache_pull_duration_seconds_count"); v == 0 {
		t.Errorf("no pull recorded in precache_pull_duration_seconds on a fresh node")
	}

	// Each node's registry stops answering (connection refused) and its images are lost:
	// every reconcile fails, retried after 1 s, 2 s, 4 s… Keep a scrape per failed reconcile.
	for _, n := range []*node{a, b} {
		_ = n.reg.Close()
		n.loseImages(t)
	}
	const failures = 6
	failed := func(s scrape) float64 { v, _ := s.value("precache_reconciles_total", "result", "failed"); return v }
	deadline := time.Now().Add(3 * time.Minute) // each failure is ~3.5 s of retries, then 1 s, 2 s, 4 s… of backoff
	for len(r.failingA) < failures || len(r.failingB) < failures {
		if time.Now().After(deadline) {
			t.Fatalf("failed reconciles not seen in time: node-a %d scrapes, node-b %d", len(r.failingA), len(r.failingB))
		}
		for _, x := range []struct {
			n   *node
			tl  labels.Labels
			seq *[]scrape
		}{{a, ta, &r.failingA}, {b, tb, &r.failingB}} {
			s := x.n.scrape(t, x.tl)
			if f := failed(s); f > 0 && len(*x.seq) < failures && (len(*x.seq) == 0 || f > failed((*x.seq)[len(*x.seq)-1])) {
				*x.seq = append(*x.seq, s)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, s := range append(r.failingA, r.failingB...) {
		desired, _ := s.value("precache_images_desired")
		present, _ := s.value("precache_images_present")
		if present >= desired {
			t.Fatalf("a failing scrape with %v of %v images present", present, desired)
		}
	}
	a.stop(t)
	r.downA = a.scrape(t, ta)
	if up, _ := r.downA.value("up"); up != 0 || len(r.downA.samples) != 1 {
		t.Fatalf("a scrape of the exited agent: %d samples, up %v", len(r.downA.samples), up)
	}
	return r
}

// TestAlertsSectionLinks: the links inside docs/operations.md's "Alerts" section lead to
// headings of the document.
func TestAlertsSectionLinks(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(filepath.Join(repoRoot, "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(data), "\n## Alerts\n")
	if !ok {
		t.Fatal(`docs/operations.md has no "## Alerts" section`)
	}
	if i := strings.Index(section, "\n## "); i >= 0 {
		section = section[:i]
	}
	anchors := docAnchors(t)
	links := regexp.MustCompile(`\]\(#([^)]+)\)`).FindAllStringSubmatch(section, -1)
	if len(links) == 0 {
		t.Fatal("no links in the Alerts section")
	}
	for _, m := range links {
		if !anchors[m[1]] {
			t.Errorf("link #%s: no such heading in docs/operations.md", m[1])
		}
	}
}
