package main

import (
	"archive/tar"
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// stage is one stage of a Dockerfile: what it copies from the build stage
// (image path -> /out binary or build-machine file) and its entry point.
type stage struct {
	name       string
	copies     map[string]string
	entrypoint []string
	cmd        []string
}

// parseDockerfile reads the go build lines (/out/NAME -> package, and the
// flags) and every stage after the build stage.
func parseDockerfile(t *testing.T) (builds map[string]string, flags []string, stages []*stage) {
	f, err := os.Open("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	builds = map[string]string{}
	buildRe := regexp.MustCompile(`go build (-trimpath -ldflags "([^"]*)") -o (/out/\S+) (\./\S+)`)
	sc := bufio.NewScanner(f)
	var cur *stage
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		for _, m := range buildRe.FindAllStringSubmatch(line, -1) {
			builds[m[3]] = m[4]
			flags = []string{"-trimpath", "-ldflags", strings.ReplaceAll(m[2], "${VERSION}", "VERSION")}
		}
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		switch fields[0] {
		case "FROM":
			if fields[1] != "scratch" {
				cur = nil
				continue
			}
			cur = &stage{copies: map[string]string{}}
			if len(fields) == 4 {
				cur.name = fields[3]
			}
			stages = append(stages, cur)
		case "COPY":
			if cur != nil && len(fields) == 4 && fields[1] == "--from=build" {
				cur.copies[fields[3]] = fields[2]
			}
		case "ENTRYPOINT", "CMD":
			if cur == nil {
				continue
			}
			var v []string
			if err := json.Unmarshal([]byte(strings.TrimSpace(strings.TrimPrefix(line, fields[0]))), &v); err != nil {
				t.Fatalf("%s not in exec form: %s", fields[0], line)
			}
			if fields[0] == "CMD" {
				cur.cmd = v
			} else {
				cur.entrypoint = v
			}
		}
	}
	return builds, flags, stages
}

// TestDockerfileMatches: the image a user builds with the Dockerfile and the
// one hack/images writes hold the same files, built from the same packages
// with the same flags, with the same entry point.
func TestDockerfileMatches(t *testing.T) {
	builds, flags, stages := parseDockerfile(t)
	if diff := cmp.Diff(GoBuildArgs("VERSION"), flags); diff != "" {
		t.Errorf("go build flags differ from the Dockerfile's (-want +got):\n%s", diff)
	}
	byName := map[string]*stage{}
	for _, s := range stages {
		byName[s.name] = s
	}
	for _, spec := range []struct{ image, stage string }{{"aliasip", ""}, {"aliasip-netcheck", "netcheck"}} {
		var s Spec
		for _, x := range Specs {
			if x.Name == spec.image {
				s = x
			}
		}
		st := byName[spec.stage]
		if st == nil {
			t.Fatalf("Dockerfile has no FROM scratch stage %q for %s", spec.stage, spec.image)
		}
		want := map[string]string{}
		for path, src := range st.copies {
			if pkg, ok := builds[src]; ok {
				want[path] = "package " + pkg
			} else {
				want[path] = "host " + src
			}
		}
		got := map[string]string{}
		for _, f := range s.Files {
			if f.Package != "" {
				got[f.Path] = "package " + f.Package
			} else {
				got[f.Path] = "host " + f.Host
			}
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s: files differ from the Dockerfile's (-dockerfile +hack/images):\n%s", spec.image, diff)
		}
		if diff := cmp.Diff(st.entrypoint, s.Entrypoint); diff != "" {
			t.Errorf("%s: entrypoint differs (-dockerfile +hack/images):\n%s", spec.image, diff)
		}
		if diff := cmp.Diff(st.cmd, s.Cmd); diff != "" {
			t.Errorf("%s: cmd differs (-dockerfile +hack/images):\n%s", spec.image, diff)
		}
	}
}

// TestWrite writes an image tarball and reads it back as a runtime would:
// the tag, the entry point, the platform and each file with its mode.
func TestWrite(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	os.MkdirAll(bin, 0o755)
	os.WriteFile(filepath.Join(bin, "tool"), []byte("#!/bin/true\n"), 0o755)
	s := Spec{Name: "example", Entrypoint: []string{"/usr/bin/tool"}, Cmd: []string{"serve"}, Files: []File{
		{Path: "/usr/bin/tool", Package: "./whatever/tool", Mode: 0o755},
		{Path: "/etc/hosts.copy", Host: "/etc/hosts", Mode: 0o644},
	}}
	out := filepath.Join(dir, "example.tar")
	if _, err := Write(s, bin, "1.2.3", out); err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(out, nil)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture == "" {
		t.Errorf("platform %s/%s", cf.OS, cf.Architecture)
	}
	if diff := cmp.Diff([]string{"/usr/bin/tool"}, cf.Config.Entrypoint); diff != "" {
		t.Errorf("entrypoint: %s", diff)
	}
	// The manifest names the tag the runtime will look up.
	f, _ := os.Open(out)
	defer f.Close()
	tr := tar.NewReader(f)
	var manifest []struct{ RepoTags []string }
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Name == "manifest.json" {
			json.NewDecoder(tr).Decode(&manifest)
		}
	}
	if len(manifest) != 1 || len(manifest[0].RepoTags) != 1 || manifest[0].RepoTags[0] != "index.docker.io/library/example:1.2.3" && manifest[0].RepoTags[0] != "example:1.2.3" {
		t.Errorf("manifest.json RepoTags = %+v, want example:1.2.3", manifest)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers: %d, %v", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got := map[string]string{}
	lr := tar.NewReader(rc)
	for {
		h, err := lr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got[h.Name] = os.FileMode(h.Mode).String()
	}
	want := map[string]string{"etc/": "-rwxr-xr-x", "etc/hosts.copy": "-rw-r--r--", "usr/": "-rwxr-xr-x", "usr/bin/": "-rwxr-xr-x", "usr/bin/tool": "-rwxr-xr-x"}
	keys := func(m map[string]string) []string {
		var k []string
		for x := range m {
			k = append(k, x)
		}
		sort.Strings(k)
		return k
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("layer files (%v) differ (-want +got):\n%s", keys(got), diff)
	}
}

// TestCoreDNSImage: the CoreDNS image is tagged with the name kubeadm and
// kind look it up by and the binary's own version, runs /coredns as uid
// 65532, and the binary carries cap_net_bind_service=+ep as the bytes
// `setcap` writes (the same value CoreDNS's release image has).
func TestCoreDNSImage(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "coredns")
	os.WriteFile(bin, []byte("#!/bin/sh\necho CoreDNS-1.15.0\necho linux/amd64, go1.26.8,\n"), 0o755)
	v, err := coreDNSVersion(bin)
	if err != nil || v != "1.15.0" {
		t.Fatalf("coreDNSVersion = %q, %v; want 1.15.0", v, err)
	}
	s := CoreDNSSpec(bin, v)
	out := filepath.Join(dir, "coredns.tar")
	if _, err := Write(s, filepath.Join(dir, "unused"), "0.1.0", out); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	var manifest []struct{ RepoTags []string }
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Name == "manifest.json" {
			json.NewDecoder(tr).Decode(&manifest)
		}
	}
	if diff := cmp.Diff([]struct{ RepoTags []string }{{RepoTags: []string{"registry.k8s.io/coredns/coredns:v1.15.0"}}}, manifest); diff != "" {
		t.Errorf("manifest.json (-want +got):\n%s", diff)
	}
	img, err := tarball.ImageFromPath(out, nil)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.Config.User != "65532:65532" || !cmp.Equal(cf.Config.Entrypoint, []string{"/coredns"}) {
		t.Errorf("user %q entrypoint %v, want 65532:65532 [/coredns]", cf.Config.User, cf.Config.Entrypoint)
	}
	layers, _ := img.Layers()
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	lr := tar.NewReader(rc)
	h, err := lr.Next()
	if err != nil {
		t.Fatal(err)
	}
	// setcap cap_net_bind_service=+ep, as getfattr -e hex shows it.
	want := "0x0100000200040000000000000000000000000000"
	if got := fmt.Sprintf("%#x", h.PAXRecords["SCHILY.xattr.security.capability"]); h.Name != "coredns" || got != want {
		t.Errorf("%s: security.capability %s, want %s", h.Name, got, want)
	}
}
