package controller

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
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

// listPageServer serves total fullNodes in protobuf pages, counting the
// requests that asked for protobuf; hook may answer a request itself.
func listPageServer(t *testing.T, total int, protobufAsked *atomic.Int32, hook func(w http.ResponseWriter, r *http.Request) bool) *httptest.Server {
	all := make([]corev1.Node, total)
	for i := range all {
		all[i] = fullNode(i)
	}
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if protobufAsked != nil && strings.HasPrefix(r.Header.Get("Accept"), protobufContentType) {
			protobufAsked.Add(1)
		}
		if hook != nil && hook(w, r) {
			return
		}
		from, _ := strconv.Atoi(r.URL.Query().Get("continue"))
		to := min(from+listPageSize, len(all))
		page := &corev1.NodeList{ListMeta: metav1.ListMeta{ResourceVersion: "99"}, Items: all[from:to]}
		if to < len(all) {
			page.Continue = strconv.Itoa(to)
		}
		w.Header().Set("Content-Type", protobufContentType)
		w.Write(encodeProtobuf(t, page))
	}))
}

// The worst defect a hand decoder could have is a short list that looks
// complete: every block of a Node left out would be handed out again. A
// page cut at any byte is an error or every Node (the envelope's last
// fields, after the list, may be cut away harmlessly); a corrupt Node, or
// an envelope without its list, is an error, never fewer Nodes.
func TestDecodeNodeListNeverShort(t *testing.T) {
	in := &corev1.NodeList{ListMeta: metav1.ListMeta{ResourceVersion: "7"}}
	for i := range 4 {
		in.Items = append(in.Items, fullNode(i))
	}
	b := encodeProtobuf(t, in)
	for n := range len(b) {
		if got, err := decodeNodeListTrimmed(b[:n]); err == nil && len(got.Items) != len(in.Items) {
			t.Fatalf("cut at %d of %d bytes: no error, %d of %d Nodes", n, len(b), len(got.Items), len(in.Items))
		}
	}
	if got, err := decodeNodeListTrimmed(b); err != nil || len(got.Items) != len(in.Items) {
		t.Fatalf("whole page: %v, %v", got, err)
	}

	// A Node whose metadata says 5 bytes and holds 1, in a well-formed
	// envelope and list.
	lm, err := (&metav1.ListMeta{ResourceVersion: "1"}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var list []byte
	list = protowire.AppendTag(list, listFieldMetadata, protowire.BytesType)
	list = protowire.AppendBytes(list, lm)
	list = protowire.AppendTag(list, listFieldItems, protowire.BytesType)
	list = protowire.AppendBytes(list, []byte{0x0a, 0x05, 0x01})
	if _, err := decodeNodeListTrimmed(envelope("NodeList", list)); err == nil {
		t.Error("a corrupt Node was decoded without error")
	}
	// The envelope alone, no list message: not an empty list.
	if _, err := decodeNodeListTrimmed(envelope("NodeList", nil)); err == nil {
		t.Error("an envelope without its NodeList decoded as an empty list")
	}
	// A list without a resourceVersion is not one the API server sent.
	if _, err := decodeNodeListTrimmed(envelope("NodeList", []byte{})); err == nil {
		t.Error("a list without metadata decoded")
	}
	if _, err := decodeNodeListTrimmed(envelope("Status", list)); err == nil {
		t.Error("a Status decoded as a NodeList")
	}
}

// envelope wraps a message in the Kubernetes protobuf envelope (magic
// number, runtime.Unknown with typeMeta.kind and raw); a nil msg leaves
// raw out.
func envelope(kind string, msg []byte) []byte {
	var tm []byte
	tm = protowire.AppendTag(tm, 2, protowire.BytesType)
	tm = protowire.AppendBytes(tm, []byte(kind))
	env := append([]byte{}, protobufPrefix...)
	env = protowire.AppendTag(env, 1, protowire.BytesType)
	env = protowire.AppendBytes(env, tm)
	if msg != nil {
		env = protowire.AppendTag(env, 2, protowire.BytesType)
		env = protowire.AppendBytes(env, msg)
	}
	return env
}

// Through a real REST client: the protobuf path is the one taken; an
// expired continue token comes back as the API server's 410 Expired
// Status (the reflector relists on it, client-go tools/cache reflector.go
// isExpiredError); a Node that cannot be decoded fails the whole list, and
// the page asked for ahead of it is cancelled, not left in flight.
func TestListNodesTrimmedErrorsThroughREST(t *testing.T) {
	var asked atomic.Int32
	srv := listPageServer(t, 1203, &asked, nil)
	got, err := listNodesTrimmed(context.Background(), kubernetes.NewForConfigOrDie(&rest.Config{Host: srv.URL}), metav1.ListOptions{})
	srv.Close()
	if err != nil || len(got.Items) != 1203 {
		t.Fatalf("list: %v", err)
	}
	if asked.Load() != 3 {
		t.Fatalf("%d of 3 pages asked for in protobuf", asked.Load())
	}

	srv = listPageServer(t, 1203, nil, func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Query().Get("continue") != "1000" {
			return false
		}
		st := &metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}, Status: metav1.StatusFailure,
			Code: http.StatusGone, Reason: metav1.StatusReasonExpired, Message: "The provided continue parameter is too old"}
		info, _ := runtime.SerializerInfoForMediaType(scheme.Codecs.SupportedMediaTypes(), protobufContentType)
		b, err := runtime.Encode(info.Serializer, st)
		if err != nil {
			t.Error(err)
		}
		w.Header().Set("Content-Type", protobufContentType)
		w.WriteHeader(http.StatusGone)
		w.Write(b)
		return true
	})
	_, err = listNodesTrimmed(context.Background(), kubernetes.NewForConfigOrDie(&rest.Config{Host: srv.URL}), metav1.ListOptions{})
	srv.Close()
	if !apierrors.IsResourceExpired(err) || !strings.Contains(fmt.Sprint(err), "too old") {
		t.Fatalf("expired continue token: %v (IsResourceExpired %v), want the API server's Status", err, apierrors.IsResourceExpired(err))
	}

	var started, finished atomic.Int32
	srv = listPageServer(t, 1203, nil, func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Query().Get("continue") == "" {
			lm, _ := (&metav1.ListMeta{ResourceVersion: "1", Continue: "500"}).Marshal()
			var list []byte
			list = protowire.AppendTag(list, listFieldMetadata, protowire.BytesType)
			list = protowire.AppendBytes(list, lm)
			list = protowire.AppendTag(list, listFieldItems, protowire.BytesType)
			list = protowire.AppendBytes(list, []byte{0x0a, 0x05, 0x01})
			w.Header().Set("Content-Type", protobufContentType)
			w.Write(envelope("NodeList", list))
			return true
		}
		started.Add(1)
		defer finished.Add(1)
		<-r.Context().Done() // the page asked for ahead, held until cancelled
		return true
	})
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // a list that hangs fails, not the suite
	defer cancel()
	if l, err := listNodesTrimmed(ctx, kubernetes.NewForConfigOrDie(&rest.Config{Host: srv.URL}), metav1.ListOptions{}); err == nil {
		t.Fatalf("a corrupt Node on page 1: listed %d Nodes", len(l.Items))
	}
	// The request asked for ahead either never reached the server or was
	// cancelled there: no handler stays blocked on it.
	deadline := time.Now().Add(10 * time.Second)
	for started.Load() != finished.Load() {
		if time.Now().After(deadline) {
			t.Fatalf("the page asked for ahead is still in flight after the list failed (%d started, %d done)", started.Load(), finished.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
