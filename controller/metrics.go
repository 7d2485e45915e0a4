package controller

import (
	"maps"
	"net/netip"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/labels"
)

// Metrics are the controller's Prometheus metrics, all prefixed aliasip_.
type Metrics struct {
	Allocations   *prometheus.CounterVec
	CloudCalls    *prometheus.CounterVec
	CloudCallTime *prometheus.HistogramVec
	CloudRequests *prometheus.CounterVec
	CloudLatency  *prometheus.HistogramVec
	SyncLatency   *prometheus.HistogramVec
	Mismatches    prometheus.Counter
	Dropped       prometheus.Counter
	Panics        prometheus.Counter
	LeakedRemoved prometheus.Counter
	PartialLists  prometheus.Counter
	AlertPasses   prometheus.Counter
	Requeued      prometheus.Counter
	Releases      prometheus.Counter
	Growth        *prometheus.CounterVec
	NodeWrites    prometheus.Counter
	Leader        prometheus.Gauge
	poolSource    func() map[string]PoolStats
	nodeSource    func() NodeStats
}

// NodeStats is what aliasip_node_podcidrs and aliasip_nodes_waiting_ipv6
// report: Nodes whose spec.podCIDRs carry a block of each family, and
// dual-stack Nodes without podCIDRs whose NIC has no IPv6 range yet.
type NodeStats struct {
	PodCIDRs    map[string]int // by family: ipv4, ipv6
	WaitingIPv6 int
}

// nodeCollector reports the node figures at scrape time, from the
// informer's cache: a node deleted or given podCIDRs by another writer
// drops out without a sync.
type nodeCollector struct {
	m               *Metrics
	podCIDRs, wait6 *prometheus.Desc
}

func (n *nodeCollector) Describe(ch chan<- *prometheus.Desc) { ch <- n.podCIDRs; ch <- n.wait6 }

func (n *nodeCollector) Collect(ch chan<- prometheus.Metric) {
	if n.m.nodeSource == nil {
		return
	}
	st := n.m.nodeSource()
	for _, f := range []string{"ipv4", "ipv6"} {
		ch <- prometheus.MustNewConstMetric(n.podCIDRs, prometheus.GaugeValue, float64(st.PodCIDRs[f]), f)
	}
	ch <- prometheus.MustNewConstMetric(n.wait6, prometheus.GaugeValue, float64(st.WaitingIPv6))
}

// poolCollector reports aliasip_pool_blocks{range,state} from the pools
// at scrape time: ranges come and go with PodRanges.
type poolCollector struct {
	m    *Metrics
	desc *prometheus.Desc
}

func (p *poolCollector) Describe(ch chan<- *prometheus.Desc) { ch <- p.desc }

func (p *poolCollector) Collect(ch chan<- prometheus.Metric) {
	if p.m.poolSource == nil {
		return
	}
	for name, s := range p.m.poolSource() {
		for state, v := range map[string]int{"used": s.Used, "free": s.Free, "cooling": s.Cooling} {
			ch <- prometheus.MustNewConstMetric(p.desc, prometheus.GaugeValue, float64(v), name, state)
		}
	}
}

// NewMetrics creates the metrics and registers them on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Allocations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aliasip_allocations_total",
			Help: "Node block decisions by result: assigned, adopted, repaired, exhausted, failed (transient), conflict (block held by another resource), refused (the cloud refused the node; block returned).",
		}, []string{"result"}),
		CloudCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aliasip_cloud_calls_total",
			Help: "Cloud interface calls (Aliases, AddAlias, …, each including its retries and operation wait) by method and result.",
		}, []string{"method", "code"}),
		CloudCallTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "aliasip_cloud_call_duration_seconds",
			Help:    "Cloud interface call latency, including retries and waiting for the operation.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 14),
		}, []string{"method"}),
		CloudRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aliasip_cloud_requests_total",
			Help: "Cloud API requests by API method and status code (GCE: each HTTP call; fake: each call).",
		}, []string{"method", "code"}),
		CloudLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "aliasip_cloud_request_duration_seconds",
			Help:    "Cloud API request latency by API method.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 14),
		}, []string{"method"}),
		SyncLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "aliasip_node_sync_duration_seconds",
			Help:    "Time to sync one node, by result.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2.5, 14),
		}, []string{"result"}),
		Mismatches: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aliasip_cidr_mismatches_total",
			Help: "Syncs that found a node's podCIDR differing from the alias on its NIC, or outside the pod range.",
		}),
		Dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aliasip_sync_failing_total",
			Help: "Times a node failed 15 syncs in a row (it stays queued and is retried every minute).",
		}),
		Panics: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aliasip_sync_panics_total",
			Help: "Node syncs that panicked (recovered; the node is retried). Any value above 0 is a bug.",
		}),
		LeakedRemoved: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aliasip_leaked_aliases_removed_total",
			Help: "Alias ranges from the pod range removed from instances that have no Node.",
		}),
		AlertPasses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aliasip_default_range_alert_passes_total",
			Help: "Passes of the default range's exhaustion check (one a second): a pass that raised nothing is still counted.",
		}),
		PartialLists: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aliasip_instance_lists_partial_total",
			Help: "Instance lists (rebuild, leak collection) that could not read every zone; the missing zones' instances were treated as unknown.",
		}),
		Requeued: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aliasip_nodes_requeued_from_cloud_total",
			Help: "Nodes queued again because the leak collector's list showed their NIC disagreeing with their podCIDR (an operation finished out of our sight).",
		}),
		Releases: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aliasip_releases_total",
			Help: "Blocks returned to the pool after their cooldown.",
		}),
		Growth: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aliasip_growth_blocks_total",
			Help: "Extra blocks of growable PodRanges by what happened: granted, draining (asked back), reactivated (a draining block made active again), returned (removed from the NIC), repaired (alias put back), cap_reached, exhausted (no free block), refused, failed.",
		}, []string{"event"}),
		NodeWrites: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aliasip_node_writes_total",
			Help: "Writes (patches) to Node objects.",
		}),
		Leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "aliasip_leader",
			Help: "1 while this process holds the leader lease.",
		}),
	}
	reg.MustRegister(m.Allocations, m.CloudCalls, m.CloudCallTime, m.CloudRequests, m.CloudLatency, m.SyncLatency, m.Mismatches,
		m.Dropped, m.Panics, m.LeakedRemoved, m.AlertPasses, m.PartialLists, m.Requeued, m.Releases, m.Growth, m.NodeWrites, m.Leader)
	reg.MustRegister(&poolCollector{m: m, desc: prometheus.NewDesc("aliasip_pool_blocks",
		"Blocks of each pod range (range: a PodRange's name, or \"default\" for the flags' range) by state: used, free, cooling (cooling blocks count as used too).",
		[]string{"range", "state"}, nil)})
	reg.MustRegister(&nodeCollector{m: m,
		podCIDRs: prometheus.NewDesc("aliasip_node_podcidrs",
			"Nodes whose spec.podCIDRs carry a block of the family, by family: ipv4, and ipv6 (a dual-stack node's /112 of its NIC's IPv6 range, or a single-stack IPv6 node's block).",
			[]string{"family"}, nil),
		wait6: prometheus.NewDesc("aliasip_nodes_waiting_ipv6",
			"Dual-stack nodes without podCIDRs whose NIC has no IPv6 range yet (IPv6NotAssigned): they get both blocks once it has one.",
			nil, nil)})
	return m
}

// ObserveCloudRequest records one cloud API request (the gce.Observer hook).
func (m *Metrics) ObserveCloudRequest(method string, code int, d time.Duration) {
	m.CloudRequests.WithLabelValues(method, strconv.Itoa(code)).Inc()
	m.CloudLatency.WithLabelValues(method).Observe(d.Seconds())
}

// nodeStats counts, from the informer's cache, the Nodes whose podCIDRs
// carry a block of each family, and the waiting dual-stack nodes that
// still exist and still have no podCIDR.
func (c *Controller) nodeStats() NodeStats {
	st := NodeStats{PodCIDRs: map[string]int{}}
	nodes, err := c.nodes.List(labels.Everything())
	if err != nil {
		return st
	}
	c.mu.Lock()
	waiting := maps.Clone(c.ipv6Waiting)
	c.mu.Unlock()
	for _, n := range nodes {
		fams := map[string]bool{}
		cidrs := n.Spec.PodCIDRs
		if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
			cidrs = []string{n.Spec.PodCIDR}
		}
		for _, s := range cidrs {
			if p, err := netip.ParsePrefix(s); err == nil {
				fams[family(p.Addr())] = true
			}
		}
		for f := range fams {
			st.PodCIDRs[f]++
		}
		if waiting[n.Name] && n.Spec.PodCIDR == "" {
			st.WaitingIPv6++
		}
	}
	return st
}

func family(a netip.Addr) string {
	if a.Unmap().Is4() {
		return "ipv4"
	}
	return "ipv6"
}
