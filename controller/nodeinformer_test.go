package controller

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
)

// fullNode is a Node with every part TrimNode drops set, and every part
// it keeps.
func fullNode(i int) corev1.Node {
	now := metav1.NewTime(time.Unix(1700000000+int64(i), 0).UTC())
	del := metav1.NewTime(now.Add(time.Hour))
	grace := int64(30)
	return corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: fmt.Sprintf("node-%04d", i), UID: types.UID(fmt.Sprintf("uid-%d", i)), ResourceVersion: strconv.Itoa(100 + i),
			Generation: 7, CreationTimestamp: now, DeletionTimestamp: &del, DeletionGracePeriodSeconds: &grace,
			Labels:          map[string]string{"kubernetes.io/hostname": "h", "aliasip.io/pod-range": "default", "i": strconv.Itoa(i)},
			Annotations:     map[string]string{"node.alpha.kubernetes.io/ttl": "0"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "X", Name: "o", UID: "u"}},
			Finalizers:      []string{"f"},
			ManagedFields:   []metav1.ManagedFieldsEntry{{Manager: "kubelet", Operation: metav1.ManagedFieldsOperationUpdate, FieldsType: "FieldsV1", FieldsV1: &metav1.FieldsV1{Raw: []byte(`{"f:status":{}}`)}}},
		},
		Spec: corev1.NodeSpec{
			PodCIDR: fmt.Sprintf("10.0.%d.0/24", i%256), PodCIDRs: []string{fmt.Sprintf("10.0.%d.0/24", i%256), "fd00::/112"},
			ProviderID: "gce://p/z/node", Unschedulable: true, Taints: []corev1.Taint{{Key: "k", Effect: corev1.TaintEffectNoSchedule}},
		},
		Status: corev1.NodeStatus{
			Capacity:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("8")},
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: now}},
			Addresses:  []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.1.2.3"}},
			Images:     []corev1.ContainerImage{{Names: []string{"a@sha256:00", "a:v1"}, SizeBytes: 1}},
			NodeInfo:   corev1.NodeSystemInfo{KubeletVersion: "v1.36.3"},
		},
	}
}

func encodeProtobuf(t *testing.T, l *corev1.NodeList) []byte {
	t.Helper()
	l = l.DeepCopy()
	l.APIVersion, l.Kind = "v1", "NodeList"
	var buf bytes.Buffer
	if err := protobuf.NewSerializer(scheme.Scheme, scheme.Scheme).Encode(l, &buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// The field-by-field decode gives exactly what decoding the whole list and
// trimming it (TrimNode) gives.
func TestDecodeNodeListTrimmed(t *testing.T) {
	in := &corev1.NodeList{ListMeta: metav1.ListMeta{ResourceVersion: "12345", Continue: "tok"}}
	for i := range 5 {
		in.Items = append(in.Items, fullNode(i))
	}
	in.Items[3].DeletionTimestamp, in.Items[3].Labels, in.Items[3].Spec = nil, nil, corev1.NodeSpec{}
	got, err := decodeNodeListTrimmed(encodeProtobuf(t, in))
	if err != nil {
		t.Fatal(err)
	}
	want := trimList(in)
	if !reflect.DeepEqual(got.ListMeta, want.ListMeta) || len(got.Items) != len(want.Items) {
		t.Fatalf("list meta %+v, %d items; want %+v, %d", got.ListMeta, len(got.Items), want.ListMeta, len(want.Items))
	}
	for i := range want.Items {
		g, w := got.Items[i], want.Items[i]
		// Time survives protobuf at second precision, in local time.
		if !g.CreationTimestamp.Equal(&w.CreationTimestamp) || !g.DeletionTimestamp.Equal(w.DeletionTimestamp) {
			t.Errorf("item %d: times %v %v, want %v %v", i, g.CreationTimestamp, g.DeletionTimestamp, w.CreationTimestamp, w.DeletionTimestamp)
		}
		g.CreationTimestamp, w.CreationTimestamp, g.DeletionTimestamp, w.DeletionTimestamp = metav1.Time{}, metav1.Time{}, nil, nil
		if !reflect.DeepEqual(g, w) {
			t.Errorf("item %d:\n got %+v\nwant %+v", i, g, w)
		}
	}
	if _, err := decodeNodeListTrimmed([]byte("{}")); err == nil {
		t.Error("JSON decoded as protobuf")
	}
}

// Through a real REST client: pages in protobuf follow the continue token;
// an API server answering JSON is decoded whole, then trimmed.
func TestListNodesTrimmedREST(t *testing.T) {
	all := &corev1.NodeList{}
	for i := range 1203 {
		all.Items = append(all.Items, fullNode(i))
	}
	for _, asJSON := range []bool{false, true} {
		var pages int
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			q := r.URL.Query()
			if r.URL.Path != "/api/v1/nodes" || q.Get("limit") != strconv.Itoa(listPageSize) || q.Get("resourceVersion") != "" {
				http.Error(w, "unexpected "+r.URL.String(), http.StatusBadRequest)
				return
			}
			pages++
			from, _ := strconv.Atoi(q.Get("continue"))
			to := min(from+listPageSize, len(all.Items))
			page := &corev1.NodeList{ListMeta: metav1.ListMeta{ResourceVersion: "99"}, Items: all.Items[from:to]}
			if to < len(all.Items) {
				page.Continue = strconv.Itoa(to)
			}
			if asJSON {
				page.APIVersion, page.Kind = "v1", "NodeList"
				w.Header().Set("Content-Type", "application/json")
				b, _ := runtimeEncodeJSON(page)
				w.Write(b)
				return
			}
			w.Header().Set("Content-Type", protobufContentType)
			w.Write(encodeProtobuf(t, page))
		}))
		client := kubernetes.NewForConfigOrDie(&rest.Config{Host: srv.URL})
		got, err := listNodesTrimmed(context.Background(), client, metav1.ListOptions{ResourceVersion: "0"})
		srv.Close()
		if err != nil {
			t.Fatalf("json %v: %v", asJSON, err)
		}
		if pages != 3 || len(got.Items) != len(all.Items) || got.ResourceVersion != "99" {
			t.Fatalf("json %v: %d pages, %d nodes, rv %q; want 3, %d, 99", asJSON, pages, len(got.Items), got.ResourceVersion, len(all.Items))
		}
		for i, n := range got.Items {
			if n.Name != all.Items[i].Name || n.Spec.PodCIDR != all.Items[i].Spec.PodCIDR || n.Annotations != nil ||
				n.ManagedFields != nil || len(n.Status.Images) != 0 || n.Labels["i"] != strconv.Itoa(i) {
				t.Fatalf("json %v: node %d not trimmed as it should be: %+v", asJSON, i, n)
			}
		}
	}
}

func runtimeEncodeJSON(l *corev1.NodeList) ([]byte, error) {
	var buf bytes.Buffer
	err := scheme.Codecs.LegacyCodec(corev1.SchemeGroupVersion).Encode(l, &buf)
	return buf.Bytes(), err
}

// A page that fails fails the list (the reflector retries it whole): no
// partial list of Nodes is ever handed over.
func TestListNodesTrimmedPageError(t *testing.T) {
	all := &corev1.NodeList{}
	for i := range 1203 {
		all.Items = append(all.Items, fullNode(i))
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("continue") == "1000" {
			http.Error(w, "etcd leader changed", http.StatusInternalServerError)
			return
		}
		from, _ := strconv.Atoi(r.URL.Query().Get("continue"))
		page := &corev1.NodeList{ListMeta: metav1.ListMeta{ResourceVersion: "99", Continue: strconv.Itoa(from + listPageSize)},
			Items: all.Items[from : from+listPageSize]}
		w.Header().Set("Content-Type", protobufContentType)
		w.Write(encodeProtobuf(t, page))
	}))
	defer srv.Close()
	client := kubernetes.NewForConfigOrDie(&rest.Config{Host: srv.URL})
	if l, err := listNodesTrimmed(context.Background(), client, metav1.ListOptions{}); err == nil {
		t.Fatalf("listed %d nodes, want the third page's error", len(l.Items))
	}
}
