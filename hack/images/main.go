// Command images writes the image tarballs of aliasip's real-node cluster
// (make cluster, test/kubelet) from static binaries, with no Docker and no
// registry: the aliasip image (controller, agent, plugin: the same files,
// paths and entry point as the repository's Dockerfile), the test workload
// aliasip-netcheck, the pod sandbox image aliasip-pause, and, given
// --coredns, the cluster DNS image under the name kubeadm and kind give it,
// registry.k8s.io/coredns/coredns:v<version>, and, given --e2e-bin-dir,
// the images Kubernetes' e2e suite runs its [sig-network] tests with,
// under the names of its image manifest (e2e.go: agnhost, busybox,
// glibc-dns-testing, nginx, pause). Layers, config, manifest and
// the `docker save`-format tarball (which `ctr images import` reads) come
// from go-containerregistry.
//
// The repository's binaries are built here with the Dockerfile's flags
// (CGO_ENABLED=0, -trimpath, -ldflags "-s -w -X main.version=TAG");
// CoreDNS is the static binary hack/deps.sh built (hack/coredns).
//
//	go run . --repo ../.. --out-dir ../../bin/images --tag 0.1.0 --coredns ~/.cache/aliasip/bin/coredns --e2e-bin-dir ~/.cache/aliasip/bin
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// File is one file of an image: its path in the image, where its contents
// come from (a Go package of the repository built statically, or a file of
// the build machine), and its mode.
type File struct {
	Path    string // absolute path inside the image
	Package string // a main package of the repository, or
	Host    string // a file on the build machine, or
	Data    string // the file's contents, or
	Link    string // the target of a symbolic link, or
	Dir     bool   // a directory (with Mode, e.g. 0o1777 for /tmp)
	Mode    int64
	// Xattrs are extended attributes of the file, such as a file
	// capability (security.capability), written as the PAX records
	// SCHILY.xattr.NAME that Go's archive/tar, Docker and containerd use
	// for them (archive/tar Header.PAXRecords).
	Xattrs map[string]string
}

// tag is the tag of s: its own, else def (--tag).
func (s Spec) tag(def string) string {
	if s.Tag != "" {
		return s.Tag
	}
	return def
}

// binaryName is the name the binary of f is built as.
func (f File) binaryName() string { return path.Base(f.Path) }

// Spec describes one image.
type Spec struct {
	Name       string // repository
	Tag        string // the tag; empty: --tag
	Files      []File
	Entrypoint []string
	Cmd        []string
	Env        []string
	User       string // uid:gid the container runs as; empty: root
}

// caBundle is Debian's CA bundle: the controller and agent call the GCE
// API and metadata server over TLS, and a FROM-scratch image has no CAs.
const caBundle = "/etc/ssl/certs/ca-certificates.crt"

// Specs are the images this command writes. The aliasip image must stay
// the same as the Dockerfile's final stage (TestDockerfileMatches).
var Specs = []Spec{
	{
		Name: "aliasip",
		Files: []File{
			{Path: "/aliasip-controller", Package: "./controller/cmd/aliasip-controller", Mode: 0o755},
			{Path: "/aliasip-agent", Package: "./node-agent/cmd/aliasip-agent", Mode: 0o755},
			{Path: "/aliasip-cni", Package: "./node-agent/cmd/aliasip-cni", Mode: 0o755},
			{Path: caBundle, Host: caBundle, Mode: 0o644},
		},
		Entrypoint: []string{"/aliasip-controller"},
	},
	{
		Name:       "aliasip-netcheck",
		Files:      []File{{Path: "/netcheck", Package: "./test/netcheck", Mode: 0o755}},
		Entrypoint: []string{"/netcheck"},
		Cmd:        []string{"serve"},
	},
	{
		Name:       "aliasip-pause",
		Files:      []File{{Path: "/pause", Package: "./hack/pause", Mode: 0o755}},
		Entrypoint: []string{"/pause"},
	},
}

// CoreDNSImage is the repository kubeadm's images (cmd/kubeadm/app/images
// GetDNSImage: the image repository, then "coredns/coredns") and kind's
// node images name CoreDNS by; the kubelet looks it up by this name.
const CoreDNSImage = "registry.k8s.io/coredns/coredns"

// CoreDNSSpec is the CoreDNS image of version (x.y.z) from the static
// binary at binary, laid out as CoreDNS's own Dockerfile lays out its
// release image: /coredns as the entry point, run as the distroless
// "nonroot" uid 65532 with the file capability cap_net_bind_service=+ep,
// so it can bind port 53 without root (`setcap
// cap_net_bind_service=+ep /coredns`, then `USER 65532:65532`,
// coredns/coredns Dockerfile). Its base image's other files (CA
// certificates, /etc/passwd) are not needed by the plugins used here.
func CoreDNSSpec(binary, version string) Spec {
	return Spec{
		Name: CoreDNSImage,
		Tag:  "v" + version,
		Files: []File{{Path: "/coredns", Host: binary, Mode: 0o755,
			Xattrs: map[string]string{"security.capability": netBindServiceCap}}},
		Entrypoint: []string{"/coredns"},
		User:       "65532:65532",
	}
}

// netBindServiceCap is the value of security.capability that setcap
// writes for cap_net_bind_service=+ep: struct vfs_cap_data revision 2
// (little-endian u32s), magic_etc = VFS_CAP_REVISION_2 (0x02000000) |
// VFS_CAP_FLAGS_EFFECTIVE (0x1); permitted = 1<<CAP_NET_BIND_SERVICE (10);
// inheritable 0; the upper 32 capability bits 0 (linux
// include/uapi/linux/capability.h, capabilities(7) "File capability
// extended attribute versioning").
const netBindServiceCap = "\x01\x00\x00\x02" + "\x00\x04\x00\x00" + "\x00\x00\x00\x00" + "\x00\x00\x00\x00" + "\x00\x00\x00\x00"

// coreDNSVersion asks the binary its version: `coredns -version` prints
// "CoreDNS-1.15.0" on its first line (coremain: CoreName-CoreVersion).
func coreDNSVersion(binary string) (string, error) {
	out, err := exec.Command(binary, "-version").Output()
	if err != nil {
		return "", fmt.Errorf("%s -version: %w", binary, err)
	}
	m := regexp.MustCompile(`(?m)^CoreDNS-(\d+\.\d+\.\d+)$`).FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("%s -version printed no CoreDNS-x.y.z: %q", binary, out)
	}
	return string(m[1]), nil
}

func main() {
	repo := flag.String("repo", "", "the repository's top directory")
	outDir := flag.String("out-dir", "", "directory to write NAME.tar into")
	tag := flag.String("tag", "", "image tag (also the binaries' main.version)")
	coredns := flag.String("coredns", "", "static CoreDNS binary (hack/deps.sh: $cache/bin/coredns) to write coredns.tar from; empty: no CoreDNS image")
	e2eBinDir := flag.String("e2e-bin-dir", "", "directory with the static agnhost and agnhost.d/ that hack/deps.sh built ($cache/bin) to write the e2e suite's images from (with Debian's busybox-static, curl, dig, nc, ss, getent of this machine); empty: no e2e images")
	flag.Parse()
	if *repo == "" || *outDir == "" || *tag == "" {
		fmt.Fprintln(os.Stderr, "images: --repo, --out-dir and --tag are required")
		os.Exit(2)
	}
	binDir, err := filepath.Abs(filepath.Join(*outDir, "bin"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
	if err := BuildBinaries(*repo, binDir, *tag); err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
	specs := Specs
	if *coredns != "" {
		v, err := coreDNSVersion(*coredns)
		if err != nil {
			fmt.Fprintln(os.Stderr, "images: CoreDNS (run make deps):", err)
			os.Exit(1)
		}
		specs = append(specs[:len(specs):len(specs)], CoreDNSSpec(*coredns, v))
	}
	if *e2eBinDir != "" {
		in := E2EInputs{
			Agnhost:     filepath.Join(*e2eBinDir, "agnhost"),
			AgnhostData: filepath.Join(*e2eBinDir, "agnhost.d"),
			CoreDNS:     *coredns,
			BusyBox:     debianBusyBox,
		}
		if v, err := agnhostVersion(in.Agnhost); err != nil || v != AgnhostTag {
			fmt.Fprintf(os.Stderr, "images: agnhost (run make deps): version %q, want %s (the e2e manifest's agnhost tag): %v\n", v, AgnhostTag, err)
			os.Exit(1)
		}
		e2e, err := E2ESpecs(in)
		if err != nil {
			fmt.Fprintln(os.Stderr, "images: e2e images (run make deps):", err)
			os.Exit(1)
		}
		specs = append(specs[:len(specs):len(specs)], e2e...)
	}
	for _, s := range specs {
		out := filepath.Join(*outDir, path.Base(s.Name)+".tar")
		t := s.tag(*tag)
		digest, err := Write(s, binDir, *tag, out)
		if err != nil {
			fmt.Fprintf(os.Stderr, "images: %s: %v\n", s.Name, err)
			os.Exit(1)
		}
		fmt.Printf("images: %s:%s %s -> %s\n", s.Name, t, digest, out)
	}
}

// GoBuildArgs are the `go build` arguments of every binary, the same as
// the Dockerfile's (with CGO_ENABLED=0 in the environment).
func GoBuildArgs(version string) []string {
	return []string{"-trimpath", "-ldflags", "-s -w -X main.version=" + version}
}

// BuildBinaries builds every Package of Specs statically into binDir.
func BuildBinaries(repo, binDir, version string) error {
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return err
	}
	for _, s := range Specs {
		for _, f := range s.Files {
			if f.Package == "" {
				continue
			}
			args := append([]string{"build"}, GoBuildArgs(version)...)
			args = append(args, "-o", filepath.Join(binDir, f.binaryName()), f.Package)
			cmd := exec.Command("go", args...)
			cmd.Dir = repo
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
			if err := cmd.Run(); err != nil {
				return fmt.Errorf("go build %s: %w", f.Package, err)
			}
		}
	}
	return nil
}

// Build returns the image of spec s with its files read from binDir or the host.
func Build(s Spec, binDir string) (v1.Image, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	files := append([]File(nil), s.Files...)
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	epoch := time.Unix(0, 0)
	for i, f := range files {
		if i > 0 && files[i-1].Path == f.Path {
			return nil, fmt.Errorf("%s: %s twice", s.Name, f.Path)
		}
		var data []byte
		switch {
		case f.Link != "" || f.Dir:
		case f.Package == "" && f.Host == "":
			data = []byte(f.Data)
		default:
			src := f.Host
			if f.Package != "" {
				src = filepath.Join(binDir, f.binaryName())
			}
			var err error
			if data, err = os.ReadFile(src); err != nil {
				return nil, err
			}
		}
		// Parent directories first, as a runtime's unpacker expects.
		var parents []string
		for d := path.Dir(f.Path); d != "/"; d = path.Dir(d) {
			parents = append([]string{d}, parents...)
		}
		for _, d := range parents {
			if dirs[d] {
				continue
			}
			dirs[d] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d[1:] + "/", Mode: 0o755, ModTime: epoch}); err != nil {
				return nil, err
			}
		}
		h := &tar.Header{Typeflag: tar.TypeReg, Name: f.Path[1:], Mode: f.Mode, Size: int64(len(data)), ModTime: epoch}
		switch {
		case f.Link != "":
			h = &tar.Header{Typeflag: tar.TypeSymlink, Name: f.Path[1:], Linkname: f.Link, Mode: 0o777, ModTime: epoch}
		case f.Dir:
			if dirs[f.Path] {
				return nil, fmt.Errorf("%s: directory %s after a file in it", s.Name, f.Path)
			}
			dirs[f.Path] = true
			h = &tar.Header{Typeflag: tar.TypeDir, Name: f.Path[1:] + "/", Mode: f.Mode, ModTime: epoch}
		}
		for k, v := range f.Xattrs {
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords["SCHILY.xattr."+k] = v
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	layerBytes := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerBytes)), nil
	})
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Config.Entrypoint, cf.Config.Cmd, cf.Config.Env, cf.Config.User = s.Entrypoint, s.Cmd, s.Env, s.User
	cf.Created = v1.Time{Time: epoch}
	return mutate.ConfigFile(img, cf)
}

// Write builds s and writes it as a `docker save`-format tarball tagged
// NAME:TAG (s.Tag, else tag), returning the image digest.
func Write(s Spec, binDir, tag, out string) (string, error) {
	img, err := Build(s, binDir)
	if err != nil {
		return "", err
	}
	ref, err := name.NewTag(s.Name + ":" + s.tag(tag))
	if err != nil {
		return "", err
	}
	tmp := out + ".tmp"
	if err := tarball.WriteToFile(tmp, ref, img); err != nil {
		return "", err
	}
	d, err := img.Digest()
	if err != nil {
		return "", err
	}
	return d.String(), os.Rename(tmp, out)
}
