// Package chart tests charts/aliasip with a real helm: lint, render, refuse
// bad values, install into a real kube-apiserver (every object accepted by
// the API's validation), and check that the rendered command lines are
// flags the binaries accept.
package chart

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	aliasipv1alpha1 "github.com/aliasip/aliasip/controller/apis/aliasip/v1alpha1"
	"github.com/aliasip/aliasip/controller/generated/clientset/versioned"
	"github.com/aliasip/aliasip/test/framework"
)

func helm(t *testing.T) string {
	t.Helper()
	h, err := framework.Binary("helm")
	if errors.Is(err, framework.ErrNotInstalled) {
		t.Skipf("skipping: %v", err)
	}
	return h
}

func chartDir() string { return filepath.Join(framework.RepoRoot(), "charts", "aliasip") }

func run(t *testing.T, bin string, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(bin, args...).CombinedOutput()
	return string(out), err
}

func TestLintAndRender(t *testing.T) {
	h := helm(t)
	for _, values := range [][]string{
		{"--set", "cloud=gce"},
		{"--set", "cloud=gce,gce.project=p,gce.zone=us-central1-a,gce.subnetwork=nodes,gce.secondaryRange=pods"},
		{"--set", "cloud=fake,clusterCIDR=10.244.0.0/16"},
	} {
		if out, err := run(t, h, append([]string{"lint", "--strict", chartDir()}, values...)...); err != nil {
			t.Errorf("helm lint %v: %v\n%s", values, err, out)
		}
		out, err := run(t, h, append([]string{"template", "aliasip", chartDir(), "-n", "kube-system"}, values...)...)
		if err != nil {
			t.Fatalf("helm template %v: %v\n%s", values, err, out)
		}
		for _, want := range []string{"kind: Deployment", "kind: DaemonSet", "/aliasip-controller", "/aliasip-agent", "hostNetwork: true"} {
			if !strings.Contains(out, want) {
				t.Errorf("rendered chart %v lacks %q", values, want)
			}
		}
		// Least privilege for the agent: not privileged, NET_ADMIN only, no
		// host /var/log (the plugin writes its own bounded log on the host).
		for _, want := range []string{"privileged: false", "drop: [ALL]", "add: [NET_ADMIN]", "allowPrivilegeEscalation: false"} {
			if !strings.Contains(out, want) {
				t.Errorf("rendered chart %v lacks %q", values, want)
			}
		}
		for _, bad := range []string{"privileged: true", "path: /var/log"} {
			if strings.Contains(out, bad) {
				t.Errorf("rendered chart %v has %q", values, bad)
			}
		}
		// On the host network, the default ports stay clear of 9090–9100
		// (Prometheus, Alertmanager, Pushgateway, node exporters).
		for _, m := range regexp.MustCompile(`(?:containerPort: |addr=:)(\d+)`).FindAllStringSubmatch(out, -1) {
			if p, _ := strconv.Atoi(m[1]); p >= 9090 && p <= 9100 {
				t.Errorf("rendered chart %v uses port %d, in the monitoring range 9090-9100", values, p)
			}
		}
	}
	// The own-Node policy is on by default and can be turned off for
	// clusters whose tokens carry no node-name claim.
	for v, want := range map[string]bool{"": true, ",agent.ownNodePolicy=false": false} {
		out, err := run(t, h, "template", "aliasip", chartDir(), "--set", "cloud=fake,clusterCIDR=10.244.0.0/16"+v)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Contains(out, "kind: ValidatingAdmissionPolicy\n"); got != want {
			t.Errorf("values %q: policy rendered %v, want %v", v, got, want)
		}
		// Without the policy the agent may not write NodeBlocks reports
		// (they would be writable for every node).
		if got := strings.Contains(out, "resources: [nodeblocks]\n    verbs: [get, list, watch, update, patch]"); got != want {
			t.Errorf("values %q: the agent may write NodeBlocks reports: %v, want %v", v, got, want)
		}
		if !strings.Contains(out, "resources: [nodeblocks]\n    verbs: [get, list, watch") {
			t.Errorf("values %q: the agent may not read NodeBlocks", v)
		}
	}
	// values.schema.json refuses bad values before anything renders, naming
	// the field.
	for _, bad := range []struct {
		set, msg string
	}{
		{"cloud=fake", "/clusterCIDR"},
		{"cloud=aws", "/cloud': value must be one of 'gce', 'fake'"},
		{"cloud=fake,clusterCIDR=banana", "/clusterCIDR"},
		{"cloud=fake,clusterCIDR=10.244.0.0/16,nodeCIDRMaskSize=33", "/nodeCIDRMaskSize"},
		{"cloud=fake,clusterCIDR=10.0.0.0/8,nodeCIDRMaskSize=7", "/nodeCIDRMaskSize"},
		{"cloud=gce,nodeCIDRMaskSize=33", "/nodeCIDRMaskSize"}, // GCE ranges are IPv4 even when read from the subnetwork
		{"cloud=gce,clusterCIDR=fd00:10::/48,nodeCIDRMaskSize=64", "/clusterCIDR"},
		{"cloud=fake,clusterCIDR=fd00:10::/48,nodeCIDRMaskSize=127,agent.fabric=none", "/nodeCIDRMaskSize"},
		// Fabric routes need an IPv4 default range to bound them.
		{"cloud=gce,agent.fabric=routes", "/clusterCIDR"},
		{"cloud=fake,clusterCIDR=fd00:10::/48,nodeCIDRMaskSize=64", "/clusterCIDR"},
		{"cloud=fake,clusterCIDR=fd00:10::/48,nodeCIDRMaskSize=64,agent.fabric=routes", "/clusterCIDR"},
		{"cloud=fake,clusterCIDR=10.244.0.0/16,agent.ipCooldown=5 minutes", "/agent/ipCooldown"},
		{"cloud=fake,clusterCIDR=10.244.0.0/16,controller.releaseCooldown=soon", "/controller/releaseCooldown"},
		{"cloud=fake,clusterCIDR=10.244.0.0/16,controller.metricsPort=0", "/controller/metricsPort"},
		{"cloud=fake,clusterCIDR=10.244.0.0/16,agent.metricsPort=70000", "/agent/metricsPort"},
		{"cloud=fake,clusterCIDR=10.244.0.0/16,controller.replicas=0", "/controller/replicas"},
		{"cloud=fake,clusterCIDR=10.244.0.0/16,agent.fabric=vxlan", "/agent/fabric"},
		{"cloud=fake,clusterCIDR=10.244.0.0/16,agent.stateDir=var/lib", "/agent/stateDir"},
		{"cloud=fake,clusterCIDR=10.244.0.0/16,image.pullPolicy=Sometimes", "/image/pullPolicy"},
		{"cloud=fake,clusterCIDR=10.244.0.0/16,agent.chainPortmapp=false", "'chainPortmapp' not allowed"},
		{"cloud=fake,clusterCIDR=10.244.0.0/16,fake.providerSchemes={kind://}", "/fake/providerSchemes/0"},
		{"cloud=fake,clusterCIDR=10.244.0.0/16,egress.config.nonMasqueradeCIDRs={10.0.0.0}", "/egress/config/nonMasqueradeCIDRs/0"},
		{"cloud=fake,clusterCIDR=10.244.0.0/16,egress.config.resyncInterval=1 minute", "/egress/config/resyncInterval"},
		{"cloud=fake,clusterCIDR=10.244.0.0/16,egress.config.nonMasqueradeCIRDs={10.0.0.0/8}", "'nonMasqueradeCIRDs' not allowed"},
		{"cloud=fake,clusterCIDR=10.244.0.0/16,egress.masquerade=maybe", "/egress/masquerade"},
		{"cloud=fake,clusterCIDR=10.244.0.0/16,ipv6.enabled=true", "/ipv6/range"},
		{"cloud=fake,clusterCIDR=10.244.0.0/16,ipv6.enabled=true,ipv6.range=10.245.0.0/16", "/ipv6/range"},
		{"cloud=fake,clusterCIDR=10.244.0.0/16,ipv6.enabled=yes", "/ipv6/enabled"},
		{"cloud=fake,clusterCIDR=10.244.0.0/16,ipv6.enable=true", "'enable' not allowed"},
	} {
		out, err := run(t, h, "template", "aliasip", chartDir(), "--set", bad.set)
		if err == nil || !strings.Contains(out, bad.msg) {
			t.Errorf("--set %s: %v, output %q; want a failure naming %q", bad.set, err, out, bad.msg)
		}
	}
	// Good values beyond the defaults render.
	for _, good := range []string{
		"cloud=fake,clusterCIDR=fd00:10::/48,nodeCIDRMaskSize=64,agent.fabric=none",
		"cloud=gce,clusterCIDR=10.64.0.0/14,agent.fabric=routes",
		"cloud=fake,clusterCIDR=10.244.0.0/16,nodeCIDRMaskSize=28,agent.fabric=none,agent.ipCooldown=1m30s,controller.releaseCooldown=0s",
		"cloud=gce,gce.secondaryRange=pods,tests.enabled=false",
	} {
		if out, err := run(t, h, "template", "aliasip", chartDir(), "--set", good); err != nil {
			t.Errorf("--set %s: %v\n%s", good, err, out)
		}
	}
}

// fake.providerSchemes becomes --fake-provider-schemes, with cloud=fake
// only; an empty list is passed on (only nodes without a providerID are
// instances), a removed key leaves the controller's default.
func TestFakeProviderSchemesFlag(t *testing.T) {
	h := helm(t)
	const fake = "cloud=fake,clusterCIDR=10.244.0.0/16"
	// --set cannot give an empty list ({} is [""]): a values file does.
	emptyList := filepath.Join(t.TempDir(), "empty.yaml")
	if err := os.WriteFile(emptyList, []byte("fake:\n  providerSchemes: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		set    string
		values string // a values file, if any
		want   string // the rendered flag; "" = none
	}{
		{set: fake, want: "- --fake-provider-schemes=fake,kind\n"},
		{set: fake + ",fake.providerSchemes={kind}", want: "- --fake-provider-schemes=kind\n"},
		{set: fake, values: emptyList, want: "- --fake-provider-schemes=\n"},
		{set: fake + ",fake.providerSchemes=null", want: ""},
		{set: "cloud=gce", want: ""},
		{set: "cloud=gce,fake.providerSchemes={kind}", want: ""},
	} {
		args := []string{"template", "aliasip", chartDir(), "--show-only", "templates/controller.yaml", "--set", tc.set}
		if tc.values != "" {
			args = append(args, "-f", tc.values)
		}
		out, err := run(t, h, args...)
		if err != nil {
			t.Errorf("--set %s: %v\n%s", tc.set, err, out)
			continue
		}
		got := strings.Count(out, "--fake-provider-schemes")
		switch {
		case tc.want == "" && got != 0:
			t.Errorf("--set %s renders --fake-provider-schemes:\n%s", tc.set, out)
		case tc.want != "" && (got != 1 || !strings.Contains(out, tc.want)):
			t.Errorf("--set %s: want %q once in the controller args, got:\n%s", tc.set, tc.want, out)
		}
	}
}

// The helm test hook: a pod on the pod network running netcheck
// verify-install with just the RBAC it needs, gone once it passed.
func TestHelmTestHook(t *testing.T) {
	h := helm(t)
	out, err := run(t, h, "template", "aliasip", chartDir(), "-n", "kube-system", "--set", "cloud=fake,clusterCIDR=10.244.0.0/16")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"name: aliasip-verify-install", "helm.sh/hook: test", "image: aliasip-netcheck:0.1.0",
		"args: [verify-install, --namespace=kube-system, --daemonset=aliasip-agent]", "resourceNames: [aliasip-agent]"} {
		if !strings.Contains(out, want) {
			t.Errorf("rendered chart lacks %q", want)
		}
	}
	out, _ = run(t, h, "template", "aliasip", chartDir(), "--set", "cloud=fake,clusterCIDR=10.244.0.0/16,tests.enabled=false")
	if strings.Contains(out, "helm.sh/hook: test") {
		t.Errorf("tests.enabled=false still renders test hooks")
	}
}

// The chart installs cleanly into a real API server, and the command lines
// it renders are accepted by the binaries' flag validation.
func TestInstallAndFlags(t *testing.T) {
	h := helm(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	cp, err := framework.StartControlPlane(ctx, filepath.Join(dir, "cp"))
	if errors.Is(err, framework.ErrNotInstalled) {
		t.Skipf("skipping: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer cp.Stop()
	ctrl, err := framework.BuildBinary(dir, "aliasip-controller", "./controller/cmd/aliasip-controller")
	if err != nil {
		t.Fatal(err)
	}
	agent, err := framework.BuildBinary(dir, "aliasip-agent", "./node-agent/cmd/aliasip-agent")
	if err != nil {
		t.Fatal(err)
	}
	out, err := run(t, h, "install", "aliasip", chartDir(), "--kubeconfig", cp.Kubeconfig, "-n", "kube-system",
		"--set", "cloud=fake,clusterCIDR=10.244.0.0/16", "--wait=false")
	if err != nil {
		t.Fatalf("helm install: %v\n%s", err, out)
	}
	client := cp.Client(0)
	dep, err := client.AppsV1().Deployments("kube-system").Get(ctx, "aliasip-controller", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("controller Deployment: %v", err)
	}
	ds, err := client.AppsV1().DaemonSets("kube-system").Get(ctx, "aliasip-agent", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("agent DaemonSet: %v", err)
	}
	for _, name := range []string{"aliasip-controller", "aliasip-agent"} {
		if _, err := client.RbacV1().ClusterRoles().Get(ctx, name, metav1.GetOptions{}); err != nil {
			t.Errorf("ClusterRole %s: %v", name, err)
		}
	}
	// The chart's crds/ are installed first (helm's crds directory) and
	// served: a PodRange can be created through the generated clientset.
	prs := versioned.NewForConfigOrDie(cp.Config).AliasipV1alpha1().PodRanges()
	if err := framework.Eventually(ctx, 30*time.Second, func() (bool, error) {
		_, err := prs.List(ctx, metav1.ListOptions{})
		return err == nil, err
	}); err != nil {
		t.Fatalf("PodRanges not served after helm install: %v", err)
	}
	if _, err := prs.Create(ctx, &aliasipv1alpha1.PodRange{
		ObjectMeta: metav1.ObjectMeta{Name: "pool-a"},
		Spec: aliasipv1alpha1.PodRangeSpec{CIDR: "10.64.0.0/14", MaxPodsPerNode: ptrTo(int32(110)),
			NodeSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pool": "a"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Errorf("create a PodRange: %v", err)
	}

	// Least privilege, asked of the real API server as the controller's
	// ServiceAccount the way an operator would (kubectl auth can-i).
	kubectl, err := framework.Binary("kubectl")
	if err != nil {
		t.Fatal(err)
	}
	canIAs := func(sa string, args ...string) bool {
		cmd := exec.CommandContext(ctx, kubectl, append([]string{"--kubeconfig", cp.Kubeconfig, "auth", "can-i",
			"--as=system:serviceaccount:kube-system:" + sa, "-n", "kube-system"}, args...)...)
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Fatalf("kubectl auth can-i %v: %v\n%s", args, err, out)
		}
		return err == nil
	}
	canI := func(args ...string) bool { return canIAs("aliasip-controller", args...) }
	for _, c := range []struct {
		args []string
		want bool
	}{
		{[]string{"patch", "nodes"}, true},
		{[]string{"watch", "nodes"}, true},
		{[]string{"create", "events"}, true},
		{[]string{"get", "leases/aliasip-controller"}, true},
		{[]string{"update", "leases/aliasip-controller"}, true},
		{[]string{"create", "leases"}, true},
		{[]string{"update", "configmaps/aliasip-controller-cooling"}, true},
		{[]string{"create", "configmaps"}, true},
		{[]string{"update", "configmaps/coredns"}, false},
		{[]string{"get", "configmaps/coredns"}, false},
		{[]string{"update", "leases/kube-scheduler"}, false},
		{[]string{"delete", "leases/aliasip-controller"}, false},
		{[]string{"get", "secrets"}, false},
		{[]string{"list", "secrets"}, false},
		{[]string{"delete", "nodes"}, false},
		{[]string{"create", "events.events.k8s.io"}, false},
		{[]string{"list", "pods"}, false},
		{[]string{"watch", "podranges.aliasip.io"}, true},
		{[]string{"update", "podranges.aliasip.io", "--subresource=status"}, true},
		{[]string{"update", "podranges.aliasip.io", "--subresource=finalizers"}, false},
		{[]string{"patch", "podranges.aliasip.io"}, true},
		{[]string{"create", "podranges.aliasip.io"}, false},
		{[]string{"delete", "podranges.aliasip.io"}, false},
		// NodeBlocks: the controller creates them and writes their status.
		{[]string{"create", "nodeblocks.aliasip.io"}, true},
		{[]string{"update", "nodeblocks.aliasip.io", "--subresource=status"}, true},
		{[]string{"delete", "nodeblocks.aliasip.io"}, true},
		{[]string{"update", "nodeblocks.aliasip.io"}, false},
	} {
		if got := canI(c.args...); got != c.want {
			t.Errorf("aliasip-controller can-i %v = %v, want %v", c.args, got, c.want)
		}
	}

	// The agent reads its masquerade ConfigMap and nothing else of the
	// ConfigMaps; list and watch only by name (a metadata.name field
	// selector, as the agent's informer sends), and PodRanges read-only.
	agentCan := func(args ...string) bool { return canIAs("aliasip-agent", args...) }
	for _, c := range []struct {
		args []string
		want bool
	}{
		{[]string{"get", "configmaps/ip-masq-agent"}, true},
		{[]string{"watch", "configmaps/ip-masq-agent"}, true},
		{[]string{"list", "configmaps/ip-masq-agent"}, true},
		{[]string{"update", "configmaps/ip-masq-agent"}, false},
		{[]string{"get", "configmaps/coredns"}, false},
		{[]string{"list", "configmaps"}, false},
		{[]string{"get", "configmaps/ip-masq-agent", "-n", "default"}, false},
		{[]string{"watch", "podranges.aliasip.io"}, true},
		{[]string{"update", "podranges.aliasip.io"}, false},
		// NodeBlocks: the agent writes the report (spec; its own node's
		// only, by the admission policy), never the granted blocks.
		{[]string{"watch", "nodeblocks.aliasip.io"}, true},
		{[]string{"update", "nodeblocks.aliasip.io"}, true},
		{[]string{"update", "nodeblocks.aliasip.io", "--subresource=status"}, false},
		{[]string{"patch", "nodeblocks.aliasip.io", "--subresource=status"}, false},
		{[]string{"create", "nodeblocks.aliasip.io"}, false},
		{[]string{"delete", "nodeblocks.aliasip.io"}, false},
		{[]string{"get", "secrets"}, false},
	} {
		if got := agentCan(c.args...); got != c.want {
			t.Errorf("aliasip-agent can-i %v = %v, want %v", c.args, got, c.want)
		}
	}

	agentCanPatchOnlyItsOwnNode(ctx, t, cp, client)

	// The rendered flags pass each binary's validation: a bad flag exits 2
	// at once; a good command line gets through its set-up to its work —
	// the controller runs its workers, the agent waits for its (missing)
	// Node — and is still running.
	for _, c := range []struct {
		bin     string
		running string // the log line of a daemon at work
		args    []string
	}{
		{ctrl, "Controller running", append(dep.Spec.Template.Spec.Containers[0].Args, "--kubeconfig", cp.Kubeconfig, "--metrics-addr", "127.0.0.1:0", "--health-addr", "127.0.0.1:0")},
		{agent, "Not ready", append(ds.Spec.Template.Spec.Containers[0].Args, "--kubeconfig", cp.Kubeconfig, "--node-name", "no-such-node",
			"--metrics-addr", "127.0.0.1:0", "--state-dir", filepath.Join(dir, "state"), "--socket", filepath.Join(dir, "s.sock"),
			"--cni-conf-dir", filepath.Join(dir, "conf"), "--cni-bin-dir", filepath.Join(dir, "bin"))},
	} {
		p, err := framework.StartProcess(filepath.Join(dir, filepath.Base(c.bin)+".log"), nil, c.bin, c.args...)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.WaitLog(ctx, time.Minute, c.running); err != nil {
			b, _ := os.ReadFile(p.Log)
			t.Errorf("%s with the chart's flags: %v\n%s", filepath.Base(c.bin), err, b)
		} else if p.Exited() {
			t.Errorf("%s with the chart's flags exited: %v", filepath.Base(c.bin), p.Wait())
		}
		p.Stop()
	}

	if out, err := run(t, h, "uninstall", "aliasip", "--kubeconfig", cp.Kubeconfig, "-n", "kube-system"); err != nil {
		t.Fatalf("helm uninstall: %v\n%s", err, out)
	}
	if _, err := client.AppsV1().DaemonSets("kube-system").Get(ctx, "aliasip-agent", metav1.GetOptions{}); err == nil {
		t.Error("DaemonSet left after uninstall")
	}
}

// ipv6.enabled renders the controller's --dual-stack (and with the fake
// cloud its --fake-ipv6-range), and the agents take ipv6.range as a pod
// range their egress rules never masquerade; off, nothing of it renders.
func TestDualStackValues(t *testing.T) {
	h := helm(t)
	render := func(set string) string {
		t.Helper()
		out, err := run(t, h, "template", "aliasip", chartDir(), "-n", "kube-system", "--set", set)
		if err != nil {
			t.Fatalf("--set %s: %v\n%s", set, err, out)
		}
		return out
	}
	for _, c := range []struct {
		set        string
		want, none []string
	}{{
		set:  "cloud=fake,clusterCIDR=10.244.0.0/16,ipv6.enabled=true,ipv6.range=fd00:10:244::/64",
		want: []string{"- --dual-stack=true", "- --fake-ipv6-range=fd00:10:244::/64", "- --cluster-cidr=10.244.0.0/16,fd00:10:244::/64"},
	}, {
		set:  "cloud=gce,ipv6.enabled=true",
		want: []string{"- --dual-stack=true"},
		none: []string{"--fake-ipv6-range", "--cluster-cidr"},
	}, {
		set:  "cloud=gce,ipv6.enabled=true,ipv6.range=2600:1900:4000:1::/64",
		want: []string{"- --dual-stack=true", "- --cluster-cidr=2600:1900:4000:1::/64"},
		none: []string{"--fake-ipv6-range"},
	}, {
		// The agents learn the default range's block length: with fabric
		// routes another node's block of any other length there is not
		// routed (the controller gets the same value).
		set:  "cloud=fake,clusterCIDR=10.244.0.0/16,nodeCIDRMaskSize=26",
		want: []string{"- --cluster-cidr=10.244.0.0/16\n            - --node-cidr-mask-size=26\n"},
	}, {
		set:  "cloud=fake,clusterCIDR=10.244.0.0/16,ipv6.range=fd00:10:244::/64",
		want: []string{"- --cluster-cidr=10.244.0.0/16\n"},
		none: []string{"--dual-stack", "--fake-ipv6-range", "fd00:10:244::/64"},
	}} {
		out := render(c.set)
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("--set %s lacks %q", c.set, w)
			}
		}
		for _, n := range c.none {
			if strings.Contains(out, n) {
				t.Errorf("--set %s renders %q", c.set, n)
			}
		}
	}
}

// With cloud=gce the controller stays on control-plane nodes unless told
// otherwise, and can run with its own Google identity from a Secret instead
// of the node VM's service account.
func TestControllerIdentityAndPlacement(t *testing.T) {
	h := helm(t)
	render := func(set string) string {
		t.Helper()
		out, err := run(t, h, "template", "aliasip", chartDir(), "-n", "kube-system", "--show-only", "templates/controller.yaml", "--set", set)
		if err != nil {
			t.Fatalf("--set %s: %v\n%s", set, err, out)
		}
		return out
	}
	gce := render("cloud=gce,controller.gcpCredentialsSecret=aliasip-gcp")
	for _, want := range []string{
		"nodeSelector:\n        node-role.kubernetes.io/control-plane: \"\"",
		"name: GOOGLE_APPLICATION_CREDENTIALS\n              value: /var/run/secrets/aliasip-gcp/key.json",
		"secret: {secretName: aliasip-gcp}",
		"mountPath: /var/run/secrets/aliasip-gcp, readOnly: true",
	} {
		if !strings.Contains(gce, want) {
			t.Errorf("gce controller lacks %q:\n%s", want, gce)
		}
	}
	if out := render("cloud=gce"); strings.Contains(out, "GOOGLE_APPLICATION_CREDENTIALS") {
		t.Errorf("credentials env without a Secret")
	}
	if out := render("cloud=gce,controller.nodeSelector.pool=infra"); strings.Contains(out, "control-plane: \"\"") || !strings.Contains(out, "pool: infra") {
		t.Errorf("an explicit nodeSelector does not replace the default:\n%s", out)
	}
	if out := render("cloud=fake,clusterCIDR=10.244.0.0/16"); strings.Contains(out, "nodeSelector") {
		t.Errorf("fake controller pinned to control-plane nodes (kind-like clusters may have none to spare):\n%s", out)
	}
}

// agentCanPatchOnlyItsOwnNode proves the chart's ValidatingAdmissionPolicy
// against the real API server: with the token the agent's pod on node A
// gets (a TokenRequest bound to that pod, as the kubelet asks for it), the
// agent can patch node A's status and not node B's.
func agentCanPatchOnlyItsOwnNode(ctx context.Context, t *testing.T, cp *framework.ControlPlane, client kubernetes.Interface) {
	t.Helper()
	if err := framework.CreateNodes(ctx, client, []string{"vap-a", "vap-b"}, nil); err != nil {
		t.Fatal(err)
	}
	pod, err := client.CoreV1().Pods("kube-system").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "vap-agent", Namespace: "kube-system"},
		Spec: corev1.PodSpec{NodeName: "vap-a", ServiceAccountName: "aliasip-agent",
			Containers: []corev1.Container{{Name: "agent", Image: "aliasip:test"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tr, err := client.CoreV1().ServiceAccounts("kube-system").CreateToken(ctx, "aliasip-agent", &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			ExpirationSeconds: ptrTo(int64(600)),
			BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	agentCfg := rest.AnonymousClientConfig(cp.Config)
	agentCfg.BearerToken = tr.Status.Token
	agent := kubernetes.NewForConfigOrDie(agentCfg)
	patch := []byte(`{"status":{"conditions":[{"type":"NetworkUnavailable","status":"False","reason":"AliasipReady","message":"test"}]}}`)
	// The policy may take a moment to be loaded by the API server.
	var lastB error
	if err := framework.Eventually(ctx, 30*time.Second, func() (bool, error) {
		_, lastB = agent.CoreV1().Nodes().Patch(ctx, "vap-b", types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status")
		return apierrors.IsInvalid(lastB) || apierrors.IsForbidden(lastB), nil
	}); err != nil {
		t.Fatalf("the agent of node vap-a patched node vap-b's status (last error: %v)", lastB)
	}
	if !strings.Contains(lastB.Error(), "only its own Node") {
		t.Errorf("refused, but not by the policy: %v", lastB)
	}
	if _, err := agent.CoreV1().Nodes().Patch(ctx, "vap-a", types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status"); err != nil {
		t.Errorf("the agent of node vap-a cannot patch its own Node's status: %v", err)
	}
	// The same for NodeBlocks: the agent of vap-a writes vap-a's report
	// (spec), not vap-b's, and never a status (the granted blocks).
	admin := versioned.NewForConfigOrDie(cp.Config).AliasipV1alpha1().NodeBlocks()
	agentNB := versioned.NewForConfigOrDie(agentCfg).AliasipV1alpha1().NodeBlocks()
	for _, n := range []string{"vap-a", "vap-b"} {
		if _, err := admin.Create(ctx, &aliasipv1alpha1.NodeBlocks{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	report := func(name string) error {
		nb, err := agentNB.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		nb.Spec.Allocated, nb.Spec.Waiting = 3, 1
		_, err = agentNB.Update(ctx, nb, metav1.UpdateOptions{})
		return err
	}
	if err := report("vap-b"); err == nil || !strings.Contains(err.Error(), "only its own Node and NodeBlocks") {
		t.Errorf("the agent of node vap-a wrote vap-b's NodeBlocks report (err %v)", err)
	}
	if err := report("vap-a"); err != nil {
		t.Errorf("the agent of node vap-a cannot write its own NodeBlocks report: %v", err)
	}
	nb, err := agentNB.Get(ctx, "vap-a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nb.Status.Blocks = []aliasipv1alpha1.GrantedBlock{{CIDR: "10.0.0.0/28", State: aliasipv1alpha1.BlockActive, GrantedAt: metav1.Now()}}
	if _, err := agentNB.UpdateStatus(ctx, nb, metav1.UpdateOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("the agent granted itself a block in its NodeBlocks status: %v", err)
	}
	// A token not bound to a pod (no node-name claim) is refused too.
	unbound, err := client.CoreV1().ServiceAccounts("kube-system").CreateToken(ctx, "aliasip-agent", &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptrTo(int64(600))},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	agentCfg.BearerToken = unbound.Status.Token
	if _, err := kubernetes.NewForConfigOrDie(agentCfg).CoreV1().Nodes().Patch(ctx, "vap-a", types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status"); err == nil {
		t.Error("a token bound to no pod patched a Node's status")
	}
}

func ptrTo[T any](v T) *T { return &v }
