package gcetest

import (
	"io"
	"net/http"
	"net/netip"
	"testing"

	compute "google.golang.org/api/compute/v1"
)

// TestMetadataIPAliases pins the wire format of nic0's alias ranges to the
// public evidence (see metadataAliases): a directory of index keys, each
// range at its key, a JSON array with recursive=true&alt=json. The goldens
// are written out here, not produced by the server.
func TestMetadataIPAliases(t *testing.T) {
	s := NewServer(Options{
		SecondaryRanges: map[string]netip.Prefix{"pods": netip.MustParsePrefix("10.64.0.0/14")},
		Metadata:        Metadata{Project: "p", NumericProject: "1", Zone: "us-central1-a", InstanceName: "vm-1"},
	})
	defer s.Close()
	s.AddInstance("us-central1-a", "vm-1", &compute.AliasIpRange{IpCidrRange: "10.64.2.0/24", SubnetworkRangeName: "pods"},
		&compute.AliasIpRange{IpCidrRange: "10.64.3.0/24", SubnetworkRangeName: "pods"})
	get := func(path string) (int, string) {
		req, _ := http.NewRequest("GET", "http://"+s.MetadataHost()+"/computeMetadata/v1/"+path, nil)
		req.Header.Set("Metadata-Flavor", "Google")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, tc := range []struct {
		path, want string
		code       int
	}{
		{"instance/network-interfaces/0/ip-aliases/", "0\n1\n", 200},
		{"instance/network-interfaces/0/ip-aliases/0", "10.64.2.0/24", 200},
		{"instance/network-interfaces/0/ip-aliases/1", "10.64.3.0/24", 200},
		{"instance/network-interfaces/0/ip-aliases/?recursive=true&alt=json", `["10.64.2.0/24","10.64.3.0/24"]`, 200},
		{"instance/network-interfaces/0/ip-aliases/2", "404 page not found\n", 404},
	} {
		code, body := get(tc.path)
		if code != tc.code || body != tc.want {
			t.Errorf("GET %s = %d %q, want %d %q", tc.path, code, body, tc.code, tc.want)
		}
	}
}

// TestMetadataIPv6 pins nic0's IPv6 keys to the public evidence (see
// metadataIPv6): ipv6s lists the address with a trailing "/" (as
// kubernetes/cloud-provider-gcp parses it), dhcpv6-refresh is present for
// a dual-stack NIC, and an IPv4-only NIC has neither. A range given later
// (SetIPv6) is served at once.
func TestMetadataIPv6(t *testing.T) {
	s := NewServer(Options{
		IPv6Range: netip.MustParsePrefix("fd20:1:2:3::/64"),
		Metadata:  Metadata{Project: "p", NumericProject: "1", Zone: "us-central1-a", InstanceName: "vm-1"},
	})
	defer s.Close()
	get := func(path string) (int, string) {
		req, _ := http.NewRequest("GET", "http://"+s.MetadataHost()+"/computeMetadata/v1/"+path, nil)
		req.Header.Set("Metadata-Flavor", "Google")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	type row struct {
		path, want string
		code       int
	}
	check := func(rows []row) {
		t.Helper()
		for _, tc := range rows {
			code, body := get(tc.path)
			if code != tc.code || body != tc.want {
				t.Errorf("GET %s = %d %q, want %d %q", tc.path, code, body, tc.code, tc.want)
			}
		}
	}
	s.AddInstance("us-central1-a", "vm-1")
	check([]row{
		{"instance/network-interfaces/0/ipv6s", "404 page not found\n", 404},
		{"instance/network-interfaces/0/dhcpv6-refresh", "404 page not found\n", 404},
	})
	s.SetIPv6("us-central1-a", "vm-1", netip.MustParsePrefix("fd20:1:2:3:0:7::/96"))
	check([]row{
		{"instance/network-interfaces/0/ipv6s", "fd20:1:2:3:0:7::/\n", 200},
		{"instance/network-interfaces/0/ipv6s/?recursive=true&alt=json", `["fd20:1:2:3:0:7::"]`, 200},
		{"instance/network-interfaces/0/dhcpv6-refresh", "1", 200},
	})
	s.SetIPv6("us-central1-a", "vm-1", netip.Prefix{})
	check([]row{{"instance/network-interfaces/0/ipv6s", "404 page not found\n", 404}})
}
