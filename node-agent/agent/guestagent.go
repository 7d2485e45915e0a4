package agent

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"gopkg.in/ini.v1"

	"github.com/aliasip/aliasip/node-agent/datapath"
)

// GuestAgentConfig is what aliasip needs to know of the GCE guest agent's
// configuration on this VM.
//
// The guest agent adds a `local` route (table local, protocol
// ethernet_proto_id, 66 by default) for every alias range of the NIC, and
// adds it again on every metadata change it sees and from its route
// monitor (GoogleCloudPlatform/guest-agent: v1 google_guest_agent/
// addresses.go, v2 internal/network/route/route_linux.go). While that
// route exists the VM takes the pod addresses as its own and pods are
// unreachable. The supported set-up turns it off in the agent's
// configuration, /etc/default/instance_configs.cfg:
//
//	[IpForwarding]
//	ip_aliases = false
//
// The guest agent reads instance_configs.cfg.distro, then
// instance_configs.cfg.template, then instance_configs.cfg, a later file
// overriding an earlier one (guest-agent google_guest_agent/main.go and
// its cfg package; the keys are in its instance_configs.cfg template:
// [IpForwarding] ethernet_proto_id = 66, ip_aliases = true).
type GuestAgentConfig struct {
	// IPAliases reports whether the guest agent manages routes for alias
	// ranges (its default: true).
	IPAliases bool
	// ProtoID is the routing protocol of its routes (default 66).
	ProtoID int
	// Files are the configuration files that were found and read.
	Files []string
}

// ReadGuestAgentConfig reads the guest agent's configuration from path
// (normally /etc/default/instance_configs.cfg) and its .distro and
// .template companions. Missing files mean the guest agent's defaults; a
// malformed one is an error.
func ReadGuestAgentConfig(path string) (GuestAgentConfig, error) {
	c := GuestAgentConfig{IPAliases: true, ProtoID: datapath.ProtoGCEGuestAgent}
	var sources []any
	for _, p := range []string{path + ".distro", path + ".template", path} {
		if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
			continue
		} else if err != nil {
			return c, err
		}
		sources = append(sources, p)
		c.Files = append(c.Files, p)
	}
	if len(sources) == 0 {
		return c, nil
	}
	f, err := ini.Load(sources[0], sources[1:]...) // later sources override earlier ones
	if err != nil {
		return c, fmt.Errorf("guest agent config: %w", err)
	}
	sec := f.Section("IpForwarding")
	if k := sec.Key("ip_aliases"); k.String() != "" {
		v, err := k.Bool()
		if err != nil {
			return c, fmt.Errorf("guest agent config: [IpForwarding] ip_aliases = %q: %w", k.String(), err)
		}
		c.IPAliases = v
	}
	if k := sec.Key("ethernet_proto_id"); k.String() != "" {
		v, err := strconv.Atoi(k.String())
		if err != nil || v < 0 || v > 255 {
			return c, fmt.Errorf("guest agent config: [IpForwarding] ethernet_proto_id = %q: want 0..255", k.String())
		}
		c.ProtoID = v
	}
	return c, nil
}
