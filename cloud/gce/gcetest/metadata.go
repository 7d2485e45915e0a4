// The metadata server: /computeMetadata/v1/ with its Metadata-Flavor check.

package gcetest

import (
	"encoding/json"
	"fmt"
	"net/http"
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
