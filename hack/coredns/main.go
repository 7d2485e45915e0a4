// Command coredns is CoreDNS with only the plugins aliasip's real-node
// cluster (hack/cluster.sh) uses: the cluster DNS of kubeadm's and kind's
// default Corefile, and the outside host's DNS server. hack/deps.sh builds
// it statically into the cache; hack/images packs it as
// registry.k8s.io/coredns/coredns:v<version>.
//
// This is the way CoreDNS documents building it with a chosen set of
// plugins without changing its source: a main package of one's own that
// blank-imports the plugins, sets dnsserver.Directives to their names in
// execution order, and calls coremain.Run ("Compile Time Enabling or
// Disabling Plugins", https://coredns.io/2017/07/25/compile-time-enabling-or-disabling-plugins/,
// section "Build with external golang source code"). CoreDNS's own main
// (coredns.go) does the same with every plugin of plugin.cfg.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/file"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/hosts"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics" // the "prometheus" directive
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

// directives is the order in which a query passes the plugins: the same
// relative order as CoreDNS's plugin.cfg (core/dnsserver/zdirectives.go),
// keeping only the plugins imported above. The order is the execution
// order, whatever the order in a Corefile (plugin.cfg's header).
var directives = []string{
	"reload",
	"ready",
	"health",
	"prometheus",
	"errors",
	"log",
	"loadbalance",
	"cache",
	"hosts",
	"kubernetes",
	"file",
	"loop",
	"forward",
}

func main() {
	dnsserver.Directives = directives
	coremain.Run()
}
