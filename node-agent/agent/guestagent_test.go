package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadGuestAgentConfig(t *testing.T) {
	for _, tc := range []struct {
		name                  string
		distro, template, cfg string // "" = file absent
		ipAliases             bool
		proto                 int
		err                   string
	}{
		{name: "no files: the guest agent's defaults", ipAliases: true, proto: 66},
		{name: "turned off", cfg: "[IpForwarding]\nip_aliases = false\n", ipAliases: false, proto: 66},
		{name: "template sets the proto, cfg turns aliases off",
			template: "[IpForwarding]\nethernet_proto_id = 77\nip_aliases = true\n", cfg: "[IpForwarding]\nip_aliases = false\n", ipAliases: false, proto: 77},
		{name: "cfg overrides distro", distro: "[IpForwarding]\nip_aliases = false\n", cfg: "[IpForwarding]\nip_aliases = true\n", ipAliases: true, proto: 66},
		{name: "other sections only", cfg: "[Daemons]\nnetwork_daemon = true\n", ipAliases: true, proto: 66},
		{name: "bad bool", cfg: "[IpForwarding]\nip_aliases = maybe\n", err: "ip_aliases"},
		{name: "bad proto", cfg: "[IpForwarding]\nethernet_proto_id = 300\n", err: "ethernet_proto_id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "instance_configs.cfg")
			for suffix, body := range map[string]string{".distro": tc.distro, ".template": tc.template, "": tc.cfg} {
				if body != "" {
					os.WriteFile(path+suffix, []byte(body), 0o644)
				}
			}
			got, err := ReadGuestAgentConfig(path)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one naming %s", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.IPAliases != tc.ipAliases || got.ProtoID != tc.proto {
				t.Errorf("got ip_aliases=%v proto=%d, want %v %d", got.IPAliases, got.ProtoID, tc.ipAliases, tc.proto)
			}
		})
	}
}
