package main

import (
	"archive/tar"
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// k8sModuleDir is k8s.io/kubernetes in the module cache at the version
// hack/k8s pins (hack/deps.sh downloads it to build e2e.test).
func k8sModuleDir(t *testing.T) string {
	gomod, err := os.ReadFile("../k8s/go.mod")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^require k8s.io/kubernetes (v\S+)$`).FindSubmatch(gomod)
	if m == nil {
		t.Fatal("hack/k8s/go.mod: no require k8s.io/kubernetes vX.Y.Z line")
	}
	out, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(strings.TrimSpace(string(out)), "k8s.io", "kubernetes@"+string(m[1]))
	if _, err := os.Stat(dir); err != nil {
		t.Skipf("k8s.io/kubernetes %s not in the module cache (hack/deps.sh downloads it): %v", m[1], err)
	}
	return dir
}

// TestE2EImageNames: every e2e image is named exactly as the e2e
// framework's image manifest at the pinned Kubernetes version names it
// (test/utils/image/manifest.go: the registries of initRegistry, the
// name and version of initImageConfigs), and agnhost's tag is its
// test/images/agnhost/VERSION.
func TestE2EImageNames(t *testing.T) {
	dir := k8sModuleDir(t)
	src, err := os.ReadFile(filepath.Join(dir, "test/utils/image/manifest.go"))
	if err != nil {
		t.Fatal(err)
	}
	registries := map[string]string{}
	init := regexp.MustCompile(`(?s)initRegistry = RegistryList\{(.*?)\n\t\}`).FindSubmatch(src)
	if init == nil {
		t.Fatal("manifest.go: no initRegistry")
	}
	for _, m := range regexp.MustCompile(`(\w+):\s+"([^"]+)",`).FindAllSubmatch(init[1], -1) {
		registries[string(m[1])] = string(m[2])
	}
	manifest := map[string]string{}
	for _, m := range regexp.MustCompile(`configs\[(\w+)\] = Config\{list\.(\w+), "([^"]+)", "([^"]+)"\}`).FindAllSubmatch(src, -1) {
		reg, ok := registries[string(m[2])]
		if !ok {
			t.Fatalf("manifest.go: %s uses registry %s, not in initRegistry", m[1], m[2])
		}
		manifest[string(m[1])] = reg + "/" + string(m[3]) + ":" + string(m[4])
	}
	got := map[string]string{
		"Agnhost":         AgnhostImage + ":" + AgnhostTag,
		"BusyBox":         BusyBoxImage + ":" + BusyBoxTag,
		"GlibcDnsTesting": GlibcDNSImage + ":" + GlibcDNSTag,
		"Nginx":           NginxImage + ":" + NginxTag,
		"Pause":           PauseImage + ":" + PauseTag,
	}
	want := map[string]string{}
	for id := range got {
		want[id] = manifest[id]
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("e2e image names differ from manifest.go's (-manifest +hack/images):\n%s", diff)
	}
	v, err := os.ReadFile(filepath.Join(dir, "test/images/agnhost/VERSION"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(v)) != AgnhostTag {
		t.Errorf("test/images/agnhost/VERSION %q, AgnhostTag %q", v, AgnhostTag)
	}
}

// e2eInputs is a fake agnhost (printing its version as cobra does) and
// porter's TLS pair in dir, with this machine's busybox-static and Debian
// tools; it skips the test where hack/deps.sh has not installed them.
func e2eInputs(t *testing.T, dir string) E2EInputs {
	for _, f := range []string{debianBusyBox, hostWget, hostCurl, hostDig, hostNc, hostSS, hostGetent} {
		if _, err := os.Stat(f); err != nil {
			t.Skipf("%s missing (hack/deps.sh installs it)", f)
		}
	}
	in := E2EInputs{
		Agnhost:     filepath.Join(dir, "agnhost"),
		AgnhostData: filepath.Join(dir, "agnhost.d"),
		CoreDNS:     filepath.Join(dir, "coredns"),
		BusyBox:     debianBusyBox,
	}
	os.MkdirAll(in.AgnhostData, 0o755)
	os.WriteFile(in.Agnhost, []byte("#!/bin/sh\necho app version 2.63.0\n"), 0o755)
	os.WriteFile(in.CoreDNS, []byte("coredns"), 0o755)
	os.WriteFile(filepath.Join(in.AgnhostData, "localhost.crt"), []byte("crt"), 0o644)
	os.WriteFile(filepath.Join(in.AgnhostData, "localhost.key"), []byte("key"), 0o600)
	return in
}

// layerFiles reads an image's only layer: path -> type and target or mode.
func layerFiles(t *testing.T, img v1.Image, extract string) map[string]string {
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers: %d, %v", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	files := map[string]string{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		name := "/" + strings.TrimSuffix(h.Name, "/")
		switch h.Typeflag {
		case tar.TypeSymlink:
			files[name] = "-> " + h.Linkname
		case tar.TypeDir:
			files[name] = fmt.Sprintf("dir %o", h.Mode)
		default:
			files[name] = fmt.Sprintf("file %o", h.Mode)
		}
		if extract == "" {
			continue
		}
		p := filepath.Join(extract, h.Name)
		switch h.Typeflag {
		case tar.TypeSymlink:
			err = os.Symlink(h.Linkname, p)
		case tar.TypeDir:
			err = os.MkdirAll(p, os.FileMode(h.Mode)&os.ModePerm)
		default:
			var f *os.File
			if f, err = os.OpenFile(p, os.O_CREATE|os.O_WRONLY, os.FileMode(h.Mode)&os.ModePerm); err == nil {
				_, err = io.Copy(f, tr)
				f.Close()
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// writeE2E writes the spec named name and reads it back: the manifest's
// tag, the config and the layer's files (extracted into extract if set).
func writeE2E(t *testing.T, specs []Spec, name, binDir, extract string) (tag string, cf *v1.ConfigFile, files map[string]string, digest string) {
	for _, s := range specs {
		if s.Name != name {
			continue
		}
		out := filepath.Join(t.TempDir(), "image.tar")
		d, err := Write(s, binDir, "0.1.0", out)
		if err != nil {
			t.Fatal(err)
		}
		m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(out) })
		if err != nil || len(m) != 1 || len(m[0].RepoTags) != 1 {
			t.Fatalf("%s: manifest.json %+v, %v", name, m, err)
		}
		img, err := tarball.ImageFromPath(out, nil)
		if err != nil {
			t.Fatal(err)
		}
		if cf, err = img.ConfigFile(); err != nil {
			t.Fatal(err)
		}
		return m[0].RepoTags[0], cf, layerFiles(t, img, extract), d
	}
	t.Fatalf("no spec %s", name)
	return
}

// TestE2EImages: each e2e image has the manifest's name as its only tag,
// upstream's entry point and command, and the files the tests exec in it.
func TestE2EImages(t *testing.T) {
	dir := t.TempDir()
	specs, err := E2ESpecs(e2eInputs(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	binDir := filepath.Join(dir, "bin")
	os.MkdirAll(binDir, 0o755)
	os.WriteFile(filepath.Join(binDir, "pause"), []byte("pause"), 0o755)
	path := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	for _, c := range []struct {
		name, tag            string
		entrypoint, cmd, env []string
		files                map[string]string // path -> want (see layerFiles)
	}{
		{AgnhostImage, "registry.k8s.io/e2e-test-images/agnhost:2.63.0", []string{"/agnhost"}, []string{"pause"}, path, map[string]string{
			"/agnhost": "file 755", "/agnhost-2": "-> agnhost", "/coredns": "file 755", "/localhost.crt": "file 644", "/localhost.key": "file 644",
			"/uploads": "dir 755", "/tmp": "dir 1777", "/bin/busybox": "file 755", "/bin/sh": "-> dash", "/bin/dash": "file 755", "/usr/bin/wget": "file 755",
			"/bin/false": "-> /bin/busybox", "/usr/bin/seq": "-> /bin/busybox", "/bin/hostname": "-> /bin/busybox",
			"/usr/bin/curl": "file 755", "/usr/bin/dig": "file 755", "/bin/nc.openbsd": "file 755", "/usr/bin/nc": "-> /bin/nc.openbsd",
			"/usr/bin/ss": "file 755", "/usr/bin/getent": "file 755", "/lib64/ld-linux-x86-64.so.2": "file 755",
			"/lib/x86_64-linux-gnu/libc.so.6": "file 755", "/lib/x86_64-linux-gnu/libcurl.so.4": "file 755",
			"/etc/nsswitch.conf": "file 644", "/etc/passwd": "file 644", "/etc/group": "file 644",
		}},
		{BusyBoxImage, "registry.k8s.io/e2e-test-images/busybox:1.37.0-1", nil, []string{"sh"}, path, map[string]string{
			"/bin/busybox": "file 755", "/bin/sh": "-> dash", "/bin/dash": "file 755", "/usr/bin/wget": "file 755", "/usr/bin/nc": "-> /bin/nc.openbsd",
			"/usr/bin/nslookup": "-> /bin/busybox", "/bin/sleep": "-> /bin/busybox", "/bin/cat": "-> /bin/busybox", "/bin/hostname": "-> /bin/busybox",
			"/etc/passwd": "file 644", "/etc/group": "file 644", "/tmp": "dir 1777",
			"/usr/bin/curl": "", "/usr/bin/dig": "", "/lib64/ld-linux-x86-64.so.2": "file 755",
		}},
		{GlibcDNSImage, "registry.k8s.io/e2e-test-images/glibc-dns-testing:2.0.0", nil, []string{"sh"}, path, map[string]string{
			"/bin/sh": "-> dash", "/bin/dash": "file 755", "/usr/bin/seq": "-> /bin/busybox", "/usr/bin/test": "-> /bin/busybox", "/bin/sleep": "-> /bin/busybox",
			"/usr/bin/dig": "file 755", "/usr/bin/getent": "file 755", "/etc/nsswitch.conf": "file 644",
			"/lib64/ld-linux-x86-64.so.2": "file 755", "/lib/x86_64-linux-gnu/libc.so.6": "file 755",
			"/usr/bin/curl": "", "/agnhost": "",
		}},
		{NginxImage, "registry.k8s.io/e2e-test-images/nginx:1.15-4", []string{"/agnhost", "test-webserver"}, nil, path, map[string]string{
			"/agnhost": "file 755",
		}},
		{PauseImage, "registry.k8s.io/pause:3.10.2", []string{"/pause"}, nil, nil, map[string]string{
			"/pause": "file 755",
		}},
	} {
		tag, cf, files, _ := writeE2E(t, specs, c.name, binDir, "")
		if tag != c.tag {
			t.Errorf("%s: tagged %s, want %s", c.name, tag, c.tag)
		}
		if diff := cmp.Diff(c.entrypoint, cf.Config.Entrypoint); diff != "" {
			t.Errorf("%s: entrypoint (-want +got):\n%s", c.name, diff)
		}
		if diff := cmp.Diff(c.cmd, cf.Config.Cmd); diff != "" {
			t.Errorf("%s: cmd (-want +got):\n%s", c.name, diff)
		}
		if diff := cmp.Diff(c.env, cf.Config.Env); diff != "" {
			t.Errorf("%s: env (-want +got):\n%s", c.name, diff)
		}
		for p, want := range c.files {
			if got := files[p]; got != want {
				t.Errorf("%s: %s is %q, want %q", c.name, p, got, want)
			}
		}
		if c.name == PauseImage && len(files) != 1 {
			t.Errorf("pause: files %v, want only /pause", files)
		}
	}
	// registry.k8s.io/pause is aliasip-pause under a second name: the same
	// image, so containerd stores it once.
	_, _, _, e2ePause := writeE2E(t, specs, PauseImage, binDir, "")
	_, _, _, aliasipPause := writeE2E(t, Specs, "aliasip-pause", binDir, "")
	if e2ePause != aliasipPause {
		t.Errorf("registry.k8s.io/pause %s, aliasip-pause %s: want the same image", e2ePause, aliasipPause)
	}
}

// TestE2EImagesRun unpacks the agnhost, busybox and glibc-dns-testing images and
// runs in them (chroot, as root) what the e2e tests exec there: the shell,
// curl, wget and nc against servers of this test, dig, getent. A library
// ldd missed or a loader that does not find them fails here.
func TestE2EImagesRun(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chroot needs root")
	}
	dir := t.TempDir()
	specs, err := E2ESpecs(e2eInputs(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "hello from "+r.URL.Path)
	}))
	defer srv.Close()
	udp, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	go func() { // an echo server as agnhost netexec's UDP port answers
		b := make([]byte, 512)
		for {
			n, from, err := udp.ReadFrom(b)
			if err != nil {
				return
			}
			udp.WriteTo([]byte("got "+string(b[:n])), from)
		}
	}()
	hostPort := strings.TrimPrefix(srv.URL, "http://")
	host, port, _ := net.SplitHostPort(hostPort)
	_, udpPort, _ := net.SplitHostPort(udp.LocalAddr().String())
	run := func(root string, script string) string {
		cmd := exec.Command("/bin/sh", "-c", script)
		cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root}
		cmd.Dir = "/"
		cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("%s: %v\n%s", script, err, out)
		}
		return string(out)
	}
	for _, c := range []struct {
		name   string
		script string
		want   []string // lines the output must contain
	}{
		{AgnhostImage, fmt.Sprintf(`curl -g -q -s --connect-timeout 2 --max-time 5 http://%s/hostname && echo &&
curl -g -q -s -o /dev/null -w %%{http_code} http://%s/ && echo &&
wget -T 5 -qO- http://%s/wget && echo && wget --version | head -n 1 &&
printf 'GET /nc HTTP/1.0\r\n\r\n' | nc -v -t -w 2 %s %s | tail -n 1 && echo &&
echo hostName | nc -u -w 1 %s %s && echo &&
dig -v 2>&1 | head -n 1 &&
ss -ant46 | head -n 1 &&
getent hosts localhost.test &&
/agnhost-2 --version`, hostPort, hostPort, hostPort, host, port, host, udpPort),
			[]string{"hello from /hostname", "200", "hello from /wget", "GNU Wget", "hello from /nc", "got hostName", "DiG 9.", "State", "127.0.0.1", "app version 2.63.0"}},
		{BusyBoxImage, fmt.Sprintf(`wget -q -O - -T 1 http://%s/busybox && echo && wget --version | head -n 1 && echo hostName | nc -u -w 1 %s %s && echo && for i in $(seq 1 2); do cat /etc/hosts; sleep 0; done`, hostPort, host, udpPort),
			[]string{"hello from /busybox", "GNU Wget", "got hostName", "localhost.test"}},
		{GlibcDNSImage, `check="$(dig -v 2>&1)" && test -n "$check" && echo "$check" && for i in $(seq 1 2); do getent hosts localhost.test; sleep 0; done`,
			[]string{"DiG 9.", "127.0.0.1"}},
	} {
		root := t.TempDir()
		writeE2E(t, specs, c.name, filepath.Join(dir, "unused"), root)
		// What the runtime gives every container: /etc/hosts, /dev/null,
		os.WriteFile(filepath.Join(root, "etc/hosts"), []byte("127.0.0.1 localhost.test\n"), 0o644)
		os.Mkdir(filepath.Join(root, "dev"), 0o755)
		if err := syscall.Mknod(filepath.Join(root, "dev/null"), syscall.S_IFCHR|0o666, 1<<8|3); err != nil {
			t.Fatal(err)
		}
		// and /proc, where busybox finds itself to run its applets
		// (/proc/self/exe): without it, it would fall back to PATH and
		// hide an applet run instead of the Debian tool.
		proc := filepath.Join(root, "proc")
		os.Mkdir(proc, 0o555)
		if err := syscall.Mount("proc", proc, "proc", 0, ""); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { syscall.Unmount(proc, syscall.MNT_DETACH) })
		out := run(root, c.script)
		t.Logf("%s:\n%s", c.name, out)
		var lines []string
		for sc := bufio.NewScanner(strings.NewReader(out)); sc.Scan(); {
			lines = append(lines, sc.Text())
		}
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("%s: output lacks %q:\n%s", c.name, w, strings.Join(lines, "\n"))
			}
		}
	}
}
