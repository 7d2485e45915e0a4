package bench

import "testing"

// TestDPBreakdownParse: the perf report rows are read with their sample
// counts, and symbols land in the group the breakdown table names (a
// symbol put in the wrong group would move time between rows silently).
func TestDPBreakdownParse(t *testing.T) {
	out := []byte(`# Samples: 15K of event 'cpu-clock:ppp'
#
# Overhead       Samples  Symbol
# ........  ............  .............................................
#
     5.11%           812  [k] _raw_spin_unlock_irqrestore
     3.99%           635  [k] _copy_from_iter
     0.48%            77  [k] veth_xmit
     0.44%            70  [k] nf_conntrack_tcp_packet
     0.24%            38  [k] fib_table_lookup
     0.23%            37  [k] ip_route_input_slow
     0.20%            32  [k] tcp_sendmsg_locked
     0.19%            31  [k] __netif_receive_skb_core.constprop.0
     0.17%            27  [k] kmem_cache_free
     0.10%            16  [.] iperf_send
     0.01%             2  [k] some_unknown_function
`)
	samples, err := dpParseReport(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(samples) != 11 || samples["[k] _copy_from_iter"] != 635 || samples["[.] iperf_send"] != 16 {
		t.Fatalf("parsed %v", samples)
	}
	want := map[string]string{
		"[k] _raw_spin_unlock_irqrestore":          "irq-off sections, attributed late (VM without PMU)",
		"[k] _copy_from_iter":                      "copy to/from user space",
		"[k] veth_xmit":                            "device: veth, backlog, bridge, GRO/GSO",
		"[k] __netif_receive_skb_core.constprop.0": "device: veth, backlog, bridge, GRO/GSO",
		"[k] nf_conntrack_tcp_packet":              "netfilter, conntrack, NAT",
		"[k] fib_table_lookup":                     "IP: receive, route lookup, forward, output, neighbour",
		"[k] ip_route_input_slow":                  "IP: receive, route lookup, forward, output, neighbour",
		"[k] tcp_sendmsg_locked":                   "TCP and sockets",
		"[k] kmem_cache_free":                      "skb and page memory",
		"[.] iperf_send":                           "user space (iperf3)",
		"[k] some_unknown_function":                "other kernel",
	}
	for sym, g := range want {
		if got := dpGroupOf(sym); got != g {
			t.Errorf("%s: group %q, want %q", sym, got, g)
		}
	}
	if _, err := dpParseReport([]byte("# no rows\n")); err == nil {
		t.Error("a report without rows parsed without error")
	}
}
