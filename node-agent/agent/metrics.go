package agent

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/aliasip/aliasip/node-agent/ipam"
)

// Metrics are the agent's Prometheus metrics, all prefixed aliasip_.
type Metrics struct {
	CNIRequests     *prometheus.CounterVec
	CNILatency      *prometheus.HistogramVec
	RoutesRepaired  prometheus.Counter
	SysctlsRepaired prometheus.Counter
	RoutesRemoved   prometheus.Counter
	GCReleased      *prometheus.CounterVec
	StateRecovered  prometheus.Counter
	FabricRoutes    prometheus.Gauge
	// FabricPasses counts passes of the fabric loop; FabricRefused is how
	// many other Nodes' claims the last pass did not route (fabric.go
	// trustedFabricRoutes): a kubelet's own Node asking for a block it
	// cannot have.
	FabricPasses  prometheus.Counter
	FabricRefused prometheus.Gauge
	Ready         prometheus.Gauge
	// ChainedPluginMissing is 1 for a plugin the flags ask to chain but
	// --cni-bin-dir lacks (so the conflist leaves it out).
	ChainedPluginMissing *prometheus.GaugeVec
	// GuestAgentIPAliases is 1 when the GCE guest agent manages alias
	// routes on this VM; GuestRoutesRemoved counts its routes removed.
	GuestAgentIPAliases prometheus.Gauge
	GuestRoutesRemoved  prometheus.Counter
	// GrowthWait is how long ADDs that found no free address waited for
	// an extra block (growable ranges) before they got one.
	GrowthWait       prometheus.Histogram
	MaxPodsOverBlock prometheus.Gauge
	// Egress masquerade: writes of new rules, repairs of an edited table,
	// failed writes, whether the ConfigMap parses, and the size of the
	// non-masquerade set (merged ranges).
	EgressProgrammed  prometheus.Counter
	EgressRepaired    prometheus.Counter
	EgressFailed      prometheus.Counter
	EgressConfigValid prometheus.Gauge
	EgressNonMasq     prometheus.Gauge
	// ipSource counts each block's addresses (ipam.Store.StatsByFamily):
	// the IPv4 block, then the IPv6 block on a dual-stack node.
	ipSource func() []ipam.FamilyStats
}

// NewMetrics creates the metrics and registers them on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		CNIRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aliasip_cni_requests_total", Help: "Plugin requests served by the agent, by CNI verb and result.",
		}, []string{"verb", "result"}),
		CNILatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "aliasip_cni_request_duration_seconds", Help: "Agent-side latency of plugin requests by CNI verb.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 14),
		}, []string{"verb"}),
		RoutesRepaired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aliasip_routes_repaired_total", Help: "Pod /32 routes the reconciler had to put back.",
		}),
		SysctlsRepaired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aliasip_sysctls_repaired_total", Help: "Host or veth sysctls the reconciler had to set back.",
		}),
		RoutesRemoved: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aliasip_routes_removed_total", Help: "Routes of vanished pods removed by the reconciler.",
		}),
		StateRecovered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aliasip_ipam_state_recovered_total",
			Help: "Times the IPAM state file was unreadable and was rebuilt from the host's pod routes.",
		}),
		GCReleased: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aliasip_gc_released_total", Help: "Pod addresses released by garbage collection, by reason.",
		}, []string{"reason"}),
		FabricRoutes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "aliasip_fabric_routes", Help: "Routes to other nodes' podCIDRs (--fabric=routes).",
		}),
		FabricPasses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aliasip_fabric_passes_total", Help: "Passes of the fabric routes loop (--fabric=routes).",
		}),
		FabricRefused: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "aliasip_fabric_claims_refused", Help: "Other Nodes' block claims the last fabric pass did not route: overlapping this node's blocks, holding their own next hop, an IPv6 block not a /112 of the pod ranges, or a block an older Node claims.",
		}),
		Ready: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "aliasip_agent_ready", Help: "1 when the agent can serve CNI ADD.",
		}),
		ChainedPluginMissing: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "aliasip_cni_chained_plugin_missing", Help: "1 when a plugin to chain is missing from the CNI bin dir and left out of the conflist.",
		}, []string{"plugin"}),
	}
	m.GuestAgentIPAliases = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "aliasip_gce_guest_agent_ip_aliases", Help: "1 when the GCE guest agent manages alias IP routes here ([IpForwarding] ip_aliases not false).",
	})
	m.GuestRoutesRemoved = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "aliasip_guest_agent_routes_removed_total", Help: "Local routes for the podCIDR added by the GCE guest agent and removed by aliasip.",
	})
	m.MaxPodsOverBlock = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "aliasip_max_pods_over_block", Help: "1 when the kubelet's maxPods (the Node's pods capacity) exceeds the pod addresses of the node's block.",
	})
	m.EgressProgrammed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "aliasip_egress_rules_programmed_total", Help: "Writes of the egress masquerade table with new rules (its inputs changed).",
	})
	m.EgressRepaired = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "aliasip_egress_rules_repaired_total", Help: "Writes of the egress masquerade table because it had been flushed, deleted or edited.",
	})
	m.EgressFailed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "aliasip_egress_rules_failed_total", Help: "Failed writes of the egress masquerade table.",
	})
	m.EgressConfigValid = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "aliasip_egress_config_valid", Help: "1 when the masquerade ConfigMap parses (or there is none), 0 when it was refused and the last good rules stay.",
	})
	m.EgressNonMasq = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "aliasip_egress_nonmasquerade_cidrs", Help: "Destinations (as given, before merging) that pods reach with their own addresses.",
	})
	reg.MustRegister(m.EgressProgrammed, m.EgressRepaired, m.EgressFailed, m.EgressConfigValid, m.EgressNonMasq)
	m.GrowthWait = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "aliasip_growth_wait_seconds", Help: "Time CNI ADDs that found no free address waited for an extra block of a growable range before they got an address.",
		Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8},
	})
	reg.MustRegister(m.ChainedPluginMissing, m.GuestAgentIPAliases, m.GuestRoutesRemoved, m.MaxPodsOverBlock, m.GrowthWait)
	reg.MustRegister(m.CNIRequests, m.CNILatency, m.RoutesRepaired, m.SysctlsRepaired, m.RoutesRemoved, m.GCReleased, m.StateRecovered, m.FabricRoutes, m.FabricPasses, m.FabricRefused, m.Ready)
	reg.MustRegister(&podIPsCollector{m: m})
	return m
}

// podIPsDesc is aliasip_pod_ips: a node's pod addresses by state and family.
// The family label came with dual-stack; a single-stack node has only the
// ipv4 series, so a query by state alone reads what it read before.
var podIPsDesc = prometheus.NewDesc("aliasip_pod_ips", "Addresses of the node's podCIDR by state (and family: ipv4 the podCIDR, ipv6 the IPv6 block of a dual-stack node).",
	[]string{"family", "state"}, nil)

// podIPsCollector reports aliasip_pod_ips for each block the store has:
// the ipv4 series always (zero before the store opens), the ipv6 ones on a
// dual-stack node.
type podIPsCollector struct{ m *Metrics }

func (c *podIPsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- podIPsDesc }

func (c *podIPsCollector) Collect(ch chan<- prometheus.Metric) {
	var stats []ipam.FamilyStats
	if c.m.ipSource != nil {
		stats = c.m.ipSource()
	}
	if len(stats) == 0 {
		stats = []ipam.FamilyStats{{}}
	}
	for _, st := range stats {
		family := "ipv4"
		if st.Block.Addr().Is6() {
			family = "ipv6"
		}
		for _, v := range []struct {
			state string
			n     int
		}{{"used", st.Used}, {"free", st.Free}, {"cooling", st.Cooling}} {
			ch <- prometheus.MustNewConstMetric(podIPsDesc, prometheus.GaugeValue, float64(v.n), family, v.state)
		}
	}
}
