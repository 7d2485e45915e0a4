package main

// The images Kubernetes' own e2e suite (e2e.test, built by hack/deps.sh
// from k8s.io/kubernetes/test/e2e) runs its [sig-network] tests with,
// under the exact names its image manifest gives them
// (test/utils/image/manifest.go: initRegistry and initImageConfigs, at the
// Kubernetes version hack/k8s pins; TestE2EImageNames checks them against
// that file), so the kubelet finds them in containerd and pulls nothing.
// Only agnhost and pause are the real programs; every image is written
// here from static binaries and Debian's packages of the build machine
// (hack/deps.sh installs them), not from upstream's Dockerfiles, and is a
// stand-in for upstream's image with what the tests run in it.

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// The e2e framework's names (registry/name:version) for the images the
// [sig-network] tests use. AgnhostTag is also test/images/agnhost/VERSION,
// which hack/deps.sh links into the agnhost binary as main.Version.
const (
	E2ERegistry     = "registry.k8s.io/e2e-test-images" // initRegistry.PromoterE2eRegistry
	AgnhostImage    = E2ERegistry + "/agnhost"
	AgnhostTag      = "2.63.0"
	BusyBoxImage    = E2ERegistry + "/busybox"
	BusyBoxTag      = "1.37.0-1"
	GlibcDNSImage   = E2ERegistry + "/glibc-dns-testing"
	GlibcDNSTag     = "2.0.0"
	NginxImage      = E2ERegistry + "/nginx"
	NginxTag        = "1.15-4"
	PauseImage      = "registry.k8s.io/pause" // initRegistry.GcRegistry + "/pause"
	PauseTag        = "3.10.2"
	e2ePath         = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	debianBusyBox   = "/bin/busybox" // Debian's busybox-static
	nsswitch        = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n"
	upstreamPasswd  = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
	upstreamGroup   = "root:x:0:\nnogroup:x:65534:\n"
	agnhostUserLine = "user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh\n"
	agnhostGroups   = "user-defined-in-image:x:1000:\ngroup-defined-in-image:x:50000:user-defined-in-image\n"
)

// Debian tools the images take, with the shared libraries ldd lists for
// them: curl (curl), dig (bind9-dnsutils), netcat-openbsd's nc (its -u,
// -v, -w, -p, which the tests pass and Debian's busybox nc lacks), GNU
// wget (wget: busybox-static 1:1.35.0-4+deb12u1's wget segfaults when
// given -T, which the Services tests pass: `wget -T 5 -qO-`), ss
// (iproute2) and getent (libc-bin). Each is put at its Debian path and
// replaces a busybox applet of the same name.
//
// /bin/sh is Debian's dash, not busybox's ash: Debian builds
// busybox-static with FEATURE_SH_STANDALONE and FEATURE_PREFER_APPLETS, so
// its ash (and its applets that run programs: env, xargs, timeout) would
// run its own wget and nc applets whatever PATH holds; dash finds
// /usr/bin/wget and /usr/bin/nc by PATH as the tests' `sh -c` expects.
var (
	hostDash   = "/bin/dash"
	hostWget   = "/usr/bin/wget"
	hostCurl   = "/usr/bin/curl"
	hostDig    = "/usr/bin/dig"
	hostNc     = "/bin/nc.openbsd"
	hostSS     = "/usr/bin/ss"
	hostGetent = "/usr/bin/getent"
)

// E2EInputs are where the e2e images' files come from.
type E2EInputs struct {
	Agnhost string // the static agnhost hack/deps.sh built ($cache/bin/agnhost)
	// AgnhostData holds agnhost's own files its upstream image carries
	// beside the binary: porter's TLS pair localhost.crt and localhost.key
	// (hack/deps.sh copies them to $cache/bin/agnhost.d).
	AgnhostData string
	CoreDNS     string // static CoreDNS for agnhost's /coredns; empty: none
	BusyBox     string // Debian's busybox-static, /bin/busybox
}

// E2ESpecs are the e2e suite's images:
//
//   - agnhost (registry.k8s.io/e2e-test-images/agnhost:2.63.0): the real
//     agnhost, built static from k8s.io/kubernetes/test/images/agnhost at
//     the pinned version, as /agnhost with upstream's entry point
//     (/agnhost, command pause) and its other files (/agnhost-2 -> agnhost
//     for the entrypoint tests, /uploads for netexec, porter's
//     /localhost.crt and /localhost.key for the Proxy test's TLS ports,
//     /coredns for the DNS tests that run a CoreDNS server in it: here
//     aliasip's CoreDNS build, which has the hosts and log plugins those
//     tests configure, where upstream's has CoreDNS 1.6.2; users 1000 and
//     group 50000). Upstream bases it on Alpine with curl, netcat-openbsd,
//     bind-tools, iproute2; this stand-in for that base has Debian's
//     busybox-static as /bin/busybox with every applet linked (seq,
//     sleep, hostname, ...), Debian's dash as /bin/sh, and Debian's curl,
//     dig, nc (netcat-openbsd), wget (GNU), ss and getent with their
//     shared libraries: the
//     commands the tests exec in agnhost pods (`sh -c`, curl -g -q -s
//     --connect-timeout --interface -w, `nc -v -t|-u -w`, `ss -ant46`,
//     dig and getent in the DNS probes, wget, /bin/false).
//   - busybox (registry.k8s.io/e2e-test-images/busybox:1.37.0-1): a
//     stand-in for upstream's (the official busybox 1.37.0 image): Debian's
//     busybox-static 1.35 with its applet links, /etc/passwd and
//     /etc/group with root and nobody, and /tmp; command sh. Three applets
//     are replaced by Debian's programs with their shared libraries, so
//     they work as upstream's do: sh by dash (below), wget by GNU wget
//     (this busybox's segfaults on -T) and nc by netcat-openbsd's (this
//     busybox's has no -u, -v).
//   - glibc-dns-testing (registry.k8s.io/e2e-test-images/glibc-dns-testing:2.0.0,
//     formerly jessie-dnsutils): a stand-in for upstream's Debian
//     bookworm-slim with dnsutils, which the DNS tests use as their glibc
//     resolver probe: `sh -c` loops of dig +notcp/+tcp +search, getent
//     hosts, test, echo, seq and sleep. It has dash for the shell,
//     busybox-static for those applets, Debian's dig and getent with their shared
//     libraries (glibc, whose resolver getent uses), and
//     /etc/nsswitch.conf (hosts: files dns); command sh. It has no
//     /coredns (upstream's 1.5.0, which no [sig-network] test runs).
//   - nginx (registry.k8s.io/e2e-test-images/nginx:1.15-4): a stand-in;
//     the Endpoints and EndpointSlice conformance tests only create pods of
//     it that match a Service. It is the agnhost binary serving HTTP on
//     port 80 as nginx does (`/agnhost test-webserver`).
//   - pause (registry.k8s.io/pause:3.10.2): the same image as
//     aliasip-pause (hack/pause, built static): the Service endpoints
//     latency test runs pods of it.
func E2ESpecs(in E2EInputs) ([]Spec, error) {
	bb, err := busyboxFiles(in.BusyBox)
	if err != nil {
		return nil, err
	}
	tools := map[string][]File{}
	for _, t := range []string{hostDash, hostWget, hostCurl, hostDig, hostNc, hostSS, hostGetent} {
		if tools[t], err = withLibraries(t); err != nil {
			return nil, err
		}
	}
	bb = overlay(bb, tools[hostDash], []File{{Path: "/bin/sh", Link: "dash"}})
	etc := func(passwd, group string) []File {
		return []File{
			{Path: "/etc/passwd", Data: passwd, Mode: 0o644},
			{Path: "/etc/group", Data: group, Mode: 0o644},
			{Path: "/etc/nsswitch.conf", Data: nsswitch, Mode: 0o644},
			{Path: "/tmp", Dir: true, Mode: 0o1777},
		}
	}

	agnhost := []File{
		{Path: "/agnhost", Host: in.Agnhost, Mode: 0o755},
		{Path: "/agnhost-2", Link: "agnhost"},
		{Path: "/uploads", Dir: true, Mode: 0o755},
		{Path: "/localhost.crt", Host: filepath.Join(in.AgnhostData, "localhost.crt"), Mode: 0o644},
		{Path: "/localhost.key", Host: filepath.Join(in.AgnhostData, "localhost.key"), Mode: 0o644},
	}
	if in.CoreDNS != "" {
		agnhost = append(agnhost, File{Path: "/coredns", Host: in.CoreDNS, Mode: 0o755})
	}
	agnhost = overlay(bb, etc(upstreamPasswd+agnhostUserLine, upstreamGroup+agnhostGroups), agnhost,
		tools[hostWget], tools[hostCurl], tools[hostDig], tools[hostNc], tools[hostSS], tools[hostGetent],
		[]File{{Path: "/usr/bin/nc", Link: hostNc}})

	glibc := overlay(bb, etc(upstreamPasswd, upstreamGroup), tools[hostDig], tools[hostGetent])

	return []Spec{
		{Name: AgnhostImage, Tag: AgnhostTag, Files: agnhost, Entrypoint: []string{"/agnhost"}, Cmd: []string{"pause"}, Env: []string{e2ePath}},
		{Name: BusyBoxImage, Tag: BusyBoxTag, Files: overlay(bb, []File{
			{Path: "/etc/passwd", Data: upstreamPasswd, Mode: 0o644},
			{Path: "/etc/group", Data: upstreamGroup, Mode: 0o644},
			{Path: "/tmp", Dir: true, Mode: 0o1777},
		}, tools[hostWget], tools[hostNc], []File{{Path: "/usr/bin/nc", Link: hostNc}}), Cmd: []string{"sh"}, Env: []string{e2ePath}},
		{Name: GlibcDNSImage, Tag: GlibcDNSTag, Files: glibc, Cmd: []string{"sh"}, Env: []string{e2ePath}},
		{Name: NginxImage, Tag: NginxTag, Files: []File{{Path: "/agnhost", Host: in.Agnhost, Mode: 0o755}}, Entrypoint: []string{"/agnhost", "test-webserver"}, Env: []string{e2ePath}},
		{Name: PauseImage, Tag: PauseTag, Files: []File{{Path: "/pause", Package: "./hack/pause", Mode: 0o755}}, Entrypoint: []string{"/pause"}},
	}, nil
}

// overlay merges file lists; a later list's file replaces an earlier one
// at the same path (a Debian tool replaces the busybox applet it names).
func overlay(lists ...[]File) []File {
	byPath := map[string]File{}
	for _, l := range lists {
		for _, f := range l {
			byPath[f.Path] = f
		}
	}
	var out []File
	for _, f := range byPath {
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}

// busyboxFiles is the static busybox at bin as /bin/busybox and a symbolic
// link to it for each applet at the path `busybox --list-full` gives it
// (bin/sh, usr/bin/wget, sbin/ip, ...), as busybox --install -s makes them.
func busyboxFiles(bin string) ([]File, error) {
	out, err := exec.Command(bin, "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list-full (install busybox-static: hack/deps.sh): %w", bin, err)
	}
	files := []File{{Path: debianBusyBox, Host: bin, Mode: 0o755}}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		p := "/" + strings.TrimSpace(sc.Text())
		if p == "/" || p == debianBusyBox {
			continue
		}
		files = append(files, File{Path: p, Link: debianBusyBox})
	}
	if len(files) < 100 {
		return nil, fmt.Errorf("%s --list-full lists %d applets: not Debian's busybox-static?", bin, len(files)-1)
	}
	return files, nil
}

// lddRe matches ldd's "name => /path (0x...)" and "/path (0x...)" lines.
var lddRe = regexp.MustCompile(`^\s*(?:\S+ => )?(/\S+) \(0x[0-9a-f]+\)$`)

// withLibraries is the dynamically linked program bin and every shared
// object ldd resolves for it (the dynamic loader included), each at its
// path on the build machine. The image has no ld.so.cache: Debian's
// glibc searches /lib/x86_64-linux-gnu (its multiarch directory) by
// default, where ldd finds them.
func withLibraries(bin string) ([]File, error) {
	st, err := os.Stat(bin)
	if err != nil {
		return nil, fmt.Errorf("%s (hack/deps.sh installs it): %w", bin, err)
	}
	files := []File{{Path: bin, Host: bin, Mode: int64(st.Mode().Perm())}}
	out, err := exec.Command("ldd", bin).Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w", bin, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if strings.Contains(line, "not found") {
			return nil, fmt.Errorf("ldd %s: %s", bin, strings.TrimSpace(line))
		}
		m := lddRe.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		files = append(files, File{Path: path.Clean(m[1]), Host: m[1], Mode: 0o755})
	}
	if len(files) < 2 {
		return nil, fmt.Errorf("ldd %s lists no libraries: %q", bin, out)
	}
	return files, nil
}

// agnhostVersion asks the binary its version: cobra's `agnhost --version`
// prints "app version 2.63.0" (main.Version, which hack/deps.sh sets from
// test/images/agnhost/VERSION).
func agnhostVersion(binary string) (string, error) {
	out, err := exec.Command(binary, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w", binary, err)
	}
	m := regexp.MustCompile(`(?m)^app version (\S+)$`).FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("%s --version printed no version: %q", binary, out)
	}
	return string(m[1]), nil
}
