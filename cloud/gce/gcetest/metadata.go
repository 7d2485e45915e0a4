// The metadata server: /computeMetadata/v1/ with its Metadata-Flavor check.

package gcetest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
)

// Metadata is what the metadata server returns.
type Metadata struct {
	Project           string
	NumericProject    string
	Zone              string
	InstanceName      string
	InstanceAttrs     map[string]string
	ProjectAttrs      map[string]string
	NetworkInterfaces []MetadataNIC
}

// MetadataNIC is one network interface in the metadata.
type MetadataNIC struct {
	IP      string
	Network string
}

// metadata serves /computeMetadata/v1/..., refusing requests without the
// Metadata-Flavor: Google header as the real server does.
func (s *Server) metadata(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Metadata-Flavor") != "Google" {
		http.Error(w, "Missing Metadata-Flavor:Google header.", http.StatusForbidden)
		return
	}
	s.mu.Lock()
	s.counts["metadata"]++
	s.mu.Unlock()
	w.Header().Set("Metadata-Flavor", "Google")
	md := s.opts.Metadata
	path := strings.TrimPrefix(r.URL.Path, "/computeMetadata/v1/")
	var val string
	ok := true
	switch {
	case path == "project/project-id":
		val = md.Project
	case path == "project/numeric-project-id":
		val = md.NumericProject
	case path == "instance/zone":
		val = fmt.Sprintf("projects/%s/zones/%s", md.NumericProject, md.Zone)
	case path == "instance/name":
		val = md.InstanceName
	case path == "instance/hostname":
		val = md.InstanceName + ".c." + md.Project + ".internal"
	case strings.HasPrefix(path, "instance/attributes/"):
		val, ok = md.InstanceAttrs[strings.TrimPrefix(path, "instance/attributes/")]
	case strings.HasPrefix(path, "project/attributes/"):
		val, ok = md.ProjectAttrs[strings.TrimPrefix(path, "project/attributes/")]
	case strings.HasPrefix(path, "instance/network-interfaces/"):
		rest := strings.Split(strings.TrimPrefix(path, "instance/network-interfaces/"), "/")
		i, err := strconv.Atoi(rest[0])
		if err != nil || len(rest) < 2 {
			ok = false
			break
		}
		sub := strings.Join(rest[1:], "/")
		if i == 0 && strings.HasPrefix(sub, "ip-aliases/") {
			// nic0's alias ranges come from the instance itself.
			val, ok = s.metadataAliases(md.InstanceName, strings.TrimPrefix(sub, "ip-aliases/"), r.URL.Query())
			break
		}
		if i == 0 && (sub == "ipv6s" || sub == "ipv6s/" || sub == "dhcpv6-refresh") {
			// nic0's IPv6 comes from the instance itself.
			val, ok = s.metadataIPv6(md.InstanceName, sub, r.URL.Query())
			break
		}
		if i >= len(md.NetworkInterfaces) {
			ok = false
			break
		}
		switch sub {
		case "ip":
			val = md.NetworkInterfaces[i].IP
		case "network":
			val = md.NetworkInterfaces[i].Network
		default:
			ok = false
		}
	default:
		ok = false
	}
	if !ok || val == "" && !strings.HasSuffix(path, "ip-aliases/") {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/text")
	fmt.Fprint(w, val)
}

// metadataAliases answers instance/network-interfaces/0/ip-aliases/... the
// way the real metadata server does: ip-aliases/ is a directory whose
// entries are index keys ("0\n1\n"); each range is the value at
// ip-aliases/N; ?recursive=true&alt=json gives the ranges as a JSON array.
// Evidence: kubernetes cluster/gce/windows/k8s-node-setup.psm1
// (Get_IpAliasRange reads .../ip-aliases/0), GoogleCloudPlatform
// guest-test-infra's network image tests (GetMetadata
// "network-interfaces/0/ip-aliases/0"), and the directory listing rules of
// https://cloud.google.com/compute/docs/metadata/querying-metadata
// (a listing names the entries; recursive=true&alt=json returns the
// contents).
func (s *Server) metadataAliases(name, key string, q url.Values) (string, bool) {
	s.mu.Lock()
	var ranges []string
	for _, in := range s.instances {
		if in.name == name {
			for _, a := range in.aliases {
				ranges = append(ranges, a.IpCidrRange)
			}
		}
	}
	s.mu.Unlock()
	switch {
	case key == "" && q.Get("recursive") == "true":
		b, _ := json.Marshal(append([]string{}, ranges...))
		return string(b), true
	case key == "":
		var b strings.Builder
		for i := range ranges {
			fmt.Fprintf(&b, "%d\n", i)
		}
		return b.String(), true
	default:
		i, err := strconv.Atoi(key)
		if err != nil || i < 0 || i >= len(ranges) {
			return "", false
		}
		return ranges[i], true
	}
}

// metadataIPv6 answers nic0's IPv6 keys; a NIC without an IPv6 range has
// none of them (404), as an IPv4-only NIC has no ip-aliases entries.
//
//   - ipv6s lists the NIC's IPv6 addresses (kubernetes/cloud-provider-gcp
//     providers/gce/gce_instances.go reads instance/network-interfaces/N/ipv6s
//     for a node's InternalIP: "Both internal and external IPv6 addresses
//     are written to this array"; grpc-go's google-c2p resolver reads
//     network-interfaces/0/ipv6s to learn whether the VM has IPv6). Its
//     listing is one entry a line, each ending in "/": cloud-provider-gcp
//     splits the answer on "/\n" and takes the first non-empty entry as
//     the address. With recursive=true&alt=json the addresses come as a
//     JSON array, by the directory rules of
//     https://cloud.google.com/compute/docs/metadata/querying-metadata
//     (UNVERIFIED for this key: no public copy of the answer was found).
//     The address is the one compute's ipv6Address gives (render).
//   - dhcpv6-refresh: the GCE guest agent
//     (GoogleCloudPlatform/guest-agent metadata/metadata.go
//     NetworkInterfaces.DHCPv6Refresh; google_guest_agent/network/manager/
//     common.go interfaceListsIpv4Ipv6) counts a NIC as IPv6-capable when
//     this key is not empty, and then gets the address itself by DHCPv6
//     (dhclient -6); it reads no address from the metadata for a
//     primary NIC. The value here is arbitrary (UNVERIFIED: the agent's
//     tests use "123456"; GCE's own value was not found): only its
//     presence is read.
func (s *Server) metadataIPv6(name, key string, q url.Values) (string, bool) {
	s.mu.Lock()
	var p netip.Prefix
	for _, in := range s.instances {
		if in.name == name {
			p = in.ipv6
		}
	}
	s.mu.Unlock()
	if !p.IsValid() {
		return "", false
	}
	switch {
	case key == "dhcpv6-refresh":
		return "1", true
	case q.Get("recursive") == "true":
		b, _ := json.Marshal([]string{p.Addr().String()})
		return string(b), true
	default:
		return p.Addr().String() + "/\n", true
	}
}
