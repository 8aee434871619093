// The cluster DNS server of the testbed's real node: CoreDNS, so that pods there resolve Service
// names such as prometheus.monitoring.svc.cluster.local through the kubernetes plugin. The usual
// image cannot be pulled here, so the testbed builds CoreDNS from its Go module, with only the
// plugins it needs (no forward: pods must not resolve outside names), so it builds in a fraction
// of the time the full CoreDNS (about sixty plugins, with their cloud SDKs) takes.
//
// This does what CoreDNS's own coredns.go, core/plugin/zplugin.go and
// core/dnsserver/zdirectives.go do (those are generated from plugin.cfg), for the chosen plugins.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	// The plugins, each registering itself with CoreDNS's caddy when imported.
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

// The directives a Corefile may use, in the order their plugins see a query. Ordering matters:
// it is CoreDNS's own (plugin.cfg), keeping only the plugins imported above.
var directives = []string{
	"bind",
	"ready",
	"health",
	"errors",
	"log",
	"cache",
	"kubernetes",
}

func main() {
	if err := dnsserver.SetDirectives(directives); err != nil {
		panic(err)
	}
	coremain.Run()
}
