// Package dns decides, quickly, whether registry names resolve, and can resolve them
// through given servers instead of the node's resolver.
//
// On a node whose resolv.conf points at the cluster DNS service while calico-node is down,
// lookups are never answered: glibc waits 5 s per attempt and server, Go's resolver as
// long as its context allows. precache bounds that wait so a bootstrap can fall back to
// a bundle in about two seconds instead of timing out pull after pull.
package dns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"
)

// System is the node's resolver (resolv.conf), always Go's own so deadlines are honoured.
var System = &net.Resolver{PreferGo: true}

// Servers returns a resolver that sends queries straight to servers ("1.1.1.1",
// "10.0.0.2:5353"), in order, ignoring resolv.conf: the seed incident's manual workaround
// (a public resolver prepended in resolved.conf) without touching the node.
func Servers(servers []string) (*net.Resolver, error) {
	var addrs []string
	for _, s := range servers {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		host, port, err := net.SplitHostPort(s)
		if err != nil {
			host, port = s, "53"
		}
		if net.ParseIP(host) == nil {
			return nil, fmt.Errorf("--dns-fallback %q: want an IP address (a name would need DNS)", s)
		}
		addrs = append(addrs, net.JoinHostPort(host, port))
	}
	if len(addrs) == 0 {
		return nil, errors.New("--dns-fallback: no servers")
	}
	var (
		mu   sync.Mutex
		next int
	)
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			mu.Lock()
			addr := addrs[next%len(addrs)]
			next++
			mu.Unlock()
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}, nil
}

// Failure says which host did not resolve and why.
type Failure struct {
	Host string
	Err  error
}

// Probe resolves every host (IP literals need nothing) with r, all at once, and gives up
// at deadline. It returns the hosts that did not resolve.
func Probe(ctx context.Context, r *net.Resolver, hosts []string, deadline time.Time) []Failure {
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	var (
		mu  sync.Mutex
		out []Failure
		wg  sync.WaitGroup
	)
	seen := map[string]bool{}
	for _, h := range hosts {
		if h == "" || seen[h] || net.ParseIP(h) != nil {
			continue
		}
		seen[h] = true
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := r.LookupHost(ctx, h)
			if err == nil {
				return
			}
			// The resolver's own timer (derived from the deadline) may fire a moment
			// before the context's: both mean the server did not answer in time.
			var ne net.Error
			if ctx.Err() != nil || errors.As(err, &ne) && ne.Timeout() {
				err = errors.New("no answer before the DNS deadline (--dns-timeout)")
			}
			mu.Lock()
			out = append(out, Failure{Host: h, Err: err})
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}
