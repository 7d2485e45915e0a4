package app

import (
	"net"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestOptionsValidate(t *testing.T) {
	for _, tc := range []struct {
		args   []string
		err    string
		fabric string
	}{
		{[]string{"--node-name=n", "--cloud=fake"}, "", "routes"},
		{[]string{"--node-name=n", "--cloud=gce"}, "", "none"},
		{[]string{"--node-name=n", "--cloud=fake", "--fabric=none"}, "", "none"},
		{[]string{"--cloud=fake"}, "--node-name", ""},
		{[]string{"--node-name=n", "--cloud=aws"}, "want gce or fake", ""},
		{[]string{"--node-name=n", "--fabric=vxlan"}, "--fabric", ""},
		{[]string{"--node-name=n", "--state-dir=relative"}, "absolute", ""},
		{[]string{"--node-name=n", "--resync-period=0s"}, "positive", ""},
	} {
		o := NewOptions("", "/bin")
		fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
		o.AddFlags(fs)
		if err := fs.Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		err := o.Validate()
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%v: %v", tc.args, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%v: %v, want %q", tc.args, err, tc.err)
		case tc.err == "" && o.Fabric != tc.fabric:
			t.Errorf("%v: fabric %q, want %q", tc.args, o.Fabric, tc.fabric)
		}
	}
}

// The default ports stay clear of 9090–9100 (Prometheus, Alertmanager,
// Pushgateway, node exporters), since the agent runs on the host network.
func TestDefaultPortClearOfMonitoring(t *testing.T) {
	o := NewOptions("", "/bin")
	_, port, err := net.SplitHostPort(o.MetricsAddr)
	if err != nil {
		t.Fatal(err)
	}
	if port >= "9090" && port <= "9100" && len(port) == 4 {
		t.Errorf("default metrics port %s collides with the monitoring range", port)
	}
}
