package cni

import (
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/aliasip/aliasip/internal/sockrpc"
	"github.com/aliasip/aliasip/node-agent/api"
	"github.com/aliasip/aliasip/node-agent/datapath"
)

func TestParseConf(t *testing.T) {
	for _, tc := range []struct {
		in   string
		code uint
	}{
		{`{"cniVersion":"1.1.0","name":"aliasip","type":"aliasip-cni","socket":"/run/a.sock"}`, 0},
		{`{"cniVersion":"1.1.0","name":"aliasip","type":"aliasip-cni"}`, types.ErrInvalidNetworkConfig},
		{`{"socket": 5}`, types.ErrDecodingFailure},
		{`not json`, types.ErrDecodingFailure},
	} {
		conf, err := parseConf([]byte(tc.in))
		var te *types.Error
		switch {
		case tc.code == 0 && err != nil:
			t.Errorf("%s: %v", tc.in, err)
		case tc.code == 0 && conf.TimeoutSeconds != 10:
			t.Errorf("%s: default timeout %d", tc.in, conf.TimeoutSeconds)
		case tc.code != 0 && (!errors.As(err, &te) || te.Code != tc.code):
			t.Errorf("%s: %v, want CNI code %d", tc.in, err, tc.code)
		}
	}
}

// FuzzParseConf: any bytes give a config with a socket or a CNI error,
// never a panic.
func FuzzParseConf(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"aliasip","type":"aliasip-cni","socket":"/run/a.sock","prevResult":{"ips":[]}}`))
	f.Add([]byte(`{"socket":""}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		conf, err := parseConf(data)
		if err != nil {
			var te *types.Error
			if !errors.As(err, &te) {
				t.Fatalf("not a CNI error: %v", err)
			}
			return
		}
		if conf.Socket == "" || conf.TimeoutSeconds <= 0 {
			t.Fatalf("accepted %+v", conf)
		}
	})
}

// The plugin's log is bounded: past the limit it rotates to one .1 file.
func TestLogRotates(t *testing.T) {
	old := maxLogSize
	maxLogSize = 1000
	t.Cleanup(func() { maxLogSize = old })
	path := filepath.Join(t.TempDir(), "cni.log")
	for i := 0; i < 200; i++ {
		l, done := logger(&NetConf{LogFile: path})
		l.Printf("ADD %03d %s", i, strings.Repeat("x", 40))
		done()
	}
	for _, p := range []string{path, path + ".1"} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if st.Size() > maxLogSize+200 {
			t.Errorf("%s is %d bytes, over the %d limit", p, st.Size(), maxLogSize)
		}
	}
	if b, _ := os.ReadFile(path); !strings.Contains(string(b), "ADD 199") {
		t.Error("the last line is not in the current log")
	}
}

// TestHostVethHeldIsTryAgainLater: an ADD refused because another pod of
// the same name still runs on the node is retried by the runtime (CNI
// error 11, "try again later"), not reported as an internal failure.
func TestHostVethHeldIsTryAgainLater(t *testing.T) {
	err := agentError("allocate pod IP", &sockrpc.Error{Code: api.CodeHostVethHeld, Message: "host veth ali… is held"})
	var te *types.Error
	if !errors.As(err, &te) || te.Code != types.ErrTryAgainLater || !strings.Contains(te.Details, "is held") {
		t.Fatalf("agentError: %#v, want code %d with the agent's message", err, types.ErrTryAgainLater)
	}
}

// ADD's result: the IPv4 address first, as before; a dual-stack pod's IPv6
// address after it with GatewayIPv6, and a default route per family.
func TestAddResult(t *testing.T) {
	res := &datapath.SetupResult{HostMAC: datapath.HostVethMAC, PodMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}}
	ip := netip.MustParseAddr("10.1.0.5")
	for _, tc := range []struct {
		name string
		ip6  netip.Addr
		want string
	}{
		{"single-stack", netip.Addr{}, `{"cniVersion":"1.1.0","interfaces":[{"mac":"ee:ee:ee:ee:ee:ee","name":"ali0"},{"mac":"02:00:00:00:00:01","name":"eth0","sandbox":"/run/netns/p"}],` +
			`"ips":[{"address":"10.1.0.5/32","gateway":"169.254.1.1","interface":1}],"routes":[{"dst":"0.0.0.0/0","gw":"169.254.1.1"}]}`},
		{"dual-stack", netip.MustParseAddr("fd00:1::5"), `{"cniVersion":"1.1.0","interfaces":[{"mac":"ee:ee:ee:ee:ee:ee","name":"ali0"},{"mac":"02:00:00:00:00:01","name":"eth0","sandbox":"/run/netns/p"}],` +
			`"ips":[{"address":"10.1.0.5/32","gateway":"169.254.1.1","interface":1},{"address":"fd00:1::5/128","gateway":"fe80::ecee:eeff:feee:eeee","interface":1}],` +
			`"routes":[{"dst":"0.0.0.0/0","gw":"169.254.1.1"},{"dst":"::/0","gw":"fe80::ecee:eeff:feee:eeee"}]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := json.Marshal(addResult("ali0", "eth0", "/run/netns/p", res, ip, tc.ip6))
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != tc.want {
				t.Errorf("result\n got %s\nwant %s", b, tc.want)
			}
		})
	}
}
