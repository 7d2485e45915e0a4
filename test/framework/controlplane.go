// Package framework starts a real control plane (etcd and kube-apiserver) on
// loopback for aliasip's integration, e2e and benchmark suites, and helpers
// to run the project's binaries against it.
//
// The binaries come from hack/deps.sh (run by `make deps`): etcd from
// Debian's etcd-server package, kube-apiserver and kube-controller-manager
// built once from the k8s.io/kubernetes module into the cache directory.
package framework

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// ErrNotInstalled means the control-plane binaries are missing; run `make deps`.
var ErrNotInstalled = errors.New("control-plane binaries missing: run `make deps` (hack/deps.sh)")

// CacheDir is where hack/deps.sh keeps the binaries it builds.
func CacheDir() string {
	if d := os.Getenv("ALIASIP_CACHE"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "aliasip")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "aliasip")
}

// Binary finds a control-plane binary: $ALIASIP_<NAME>, the cache, or PATH.
func Binary(name string) (string, error) {
	env := "ALIASIP_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
	if p := os.Getenv(env); p != "" {
		return p, nil
	}
	if p := filepath.Join(CacheDir(), "bin", name); isExec(p) {
		return p, nil
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("%s: %w", name, ErrNotInstalled)
}

func isExec(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode()&0o111 != 0
}

// ControlPlane is a running etcd + kube-apiserver.
type ControlPlane struct {
	Dir        string
	URL        string
	Token      string
	Kubeconfig string
	Config     *rest.Config

	etcd, apiserver *Process
}

// StartControlPlane starts etcd and kube-apiserver with state under dir
// (data on /dev/shm when available) and waits until the API server is ready.
func StartControlPlane(ctx context.Context, dir string) (*ControlPlane, error) {
	etcdBin, err := Binary("etcd")
	if err != nil {
		return nil, err
	}
	apiBin, err := Binary("kube-apiserver")
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	cp := &ControlPlane{Dir: dir}
	ok := false
	defer func() {
		if !ok {
			cp.Stop()
		}
	}()

	dataDir := filepath.Join(dir, "etcd")
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		if d, err := os.MkdirTemp("/dev/shm", "aliasip-etcd-"); err == nil {
			dataDir = d
		}
	}
	clientPort, peerPort, apiPort := FreePort(), FreePort(), FreePort()
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", clientPort)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", peerPort)
	cp.etcd, err = startLogged(filepath.Join(dir, "etcd.log"), etcdBin,
		"--data-dir", dataDir,
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "default="+peerURL,
		"--quota-backend-bytes", fmt.Sprint(4<<30))
	if err != nil {
		return nil, err
	}
	if err := Eventually(ctx, 30*time.Second, func() (bool, error) {
		return healthy(http.DefaultClient, cp.etcd, etcdURL+"/health", "")
	}); err != nil {
		return nil, fmt.Errorf("etcd did not become healthy (see %s/etcd.log): %w", dir, err)
	}

	keyFile := filepath.Join(dir, "sa.key")
	if err := writeRSAKey(keyFile); err != nil {
		return nil, err
	}
	tok := make([]byte, 16)
	rand.Read(tok)
	cp.Token = hex.EncodeToString(tok)
	tokens := filepath.Join(dir, "tokens.csv")
	if err := os.WriteFile(tokens, []byte(cp.Token+`,admin,admin,"system:masters"`+"\n"), 0o600); err != nil {
		return nil, err
	}
	cp.URL = fmt.Sprintf("https://127.0.0.1:%d", apiPort)
	cp.apiserver, err = startLogged(filepath.Join(dir, "kube-apiserver.log"), apiBin,
		"--etcd-servers", etcdURL,
		"--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
		"--secure-port", fmt.Sprint(apiPort),
		"--cert-dir", filepath.Join(dir, "certs"),
		"--token-auth-file", tokens,
		// As production clusters run (kubeadm's defaults): a kubelet's
		// credentials reach only its own Node, through the Node authorizer
		// and NodeRestriction; tests impersonate system:node:<name>
		// (AsNode) to act as one.
		"--authorization-mode", "Node,RBAC",
		"--enable-admission-plugins", "NodeRestriction",
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", keyFile,
		"--service-account-signing-key-file", keyFile,
		"--service-cluster-ip-range", "10.96.0.0/16",
		"--allow-privileged",
		// No kube-controller-manager creates default ServiceAccounts here.
		"--disable-admission-plugins", "ServiceAccount",
		"--enable-priority-and-fairness=false",
		"--max-requests-inflight", "2000",
		"--max-mutating-requests-inflight", "1000",
		"--profiling=false",
		"--v", "1")
	if err != nil {
		return nil, err
	}
	cp.Config = &rest.Config{
		Host:            cp.URL,
		BearerToken:     cp.Token,
		TLSClientConfig: rest.TLSClientConfig{Insecure: true},
		QPS:             1000,
		Burst:           2000,
	}
	cp.Kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := cp.writeKubeconfig(); err != nil {
		return nil, err
	}
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	if err := Eventually(ctx, 90*time.Second, func() (bool, error) {
		return healthy(hc, cp.apiserver, cp.URL+"/readyz", cp.Token)
	}); err != nil {
		return nil, fmt.Errorf("kube-apiserver did not become ready (see %s/kube-apiserver.log): %w", dir, err)
	}
	ok = true
	return cp, nil
}

// AsNode returns a clientset with a kubelet's identity: user
// system:node:<name> in group system:nodes, as a node's client certificate
// names it (https://kubernetes.io/docs/reference/access-authn-authz/node/).
func (cp *ControlPlane) AsNode(name string) kubernetes.Interface {
	cfg := rest.CopyConfig(cp.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:node:" + name, Groups: []string{"system:nodes", "system:authenticated"}}
	return kubernetes.NewForConfigOrDie(cfg)
}

// Client returns a clientset with the given QPS (0: the default of 1000).
func (cp *ControlPlane) Client(qps float32) kubernetes.Interface {
	cfg := rest.CopyConfig(cp.Config)
	if qps > 0 {
		cfg.QPS, cfg.Burst = qps, int(qps*2)
	}
	return kubernetes.NewForConfigOrDie(cfg)
}

func (cp *ControlPlane) writeKubeconfig() error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["local"] = &clientcmdapi.Cluster{Server: cp.URL, InsecureSkipTLSVerify: true}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: cp.Token}
	kc.Contexts["local"] = &clientcmdapi.Context{Cluster: "local", AuthInfo: "admin"}
	kc.CurrentContext = "local"
	return clientcmd.WriteToFile(*kc, cp.Kubeconfig)
}

// Stop stops the API server and etcd and removes etcd's data.
func (cp *ControlPlane) Stop() {
	for _, p := range []*Process{cp.apiserver, cp.etcd} {
		if p != nil {
			p.Stop()
		}
	}
	if cp.etcd != nil {
		for i, a := range cp.etcd.Cmd.Args {
			if a == "--data-dir" && strings.HasPrefix(cp.etcd.Cmd.Args[i+1], "/dev/shm/") {
				os.RemoveAll(cp.etcd.Cmd.Args[i+1])
			}
		}
	}
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// healthy reports whether url answers 200 (with token as bearer, if set);
// the error says what it answered instead, and ends the polling (Stop) if
// p, the process serving it, has exited.
func healthy(hc *http.Client, p *Process, url, token string) (bool, error) {
	if p.Exited() {
		return false, Stop(fmt.Errorf("exited: %v", p.Wait()))
	}
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		return false, Stop(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return false, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("%s: %s", url, resp.Status)
	}
	return true, nil
}

func writeRSAKey(path string) error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	der := x509.MarshalPKCS1PrivateKey(key)
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: der}), 0o600)
}

// startLogged starts a command logging to logPath.
func startLogged(logPath, bin string, args ...string) (*Process, error) {
	return StartProcess(logPath, nil, bin, args...)
}
