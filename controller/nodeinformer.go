package controller

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"mime"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

// listPageSize is the page size of the Node informer's lists.
const listPageSize = 500

// NodeInformer is a Node informer whose list reads the Nodes page by page
// and keeps only what the controller reads of each (TrimNode) before the
// next page: memory follows the trimmed cache, not the full NodeList. The
// standard reflector's first list asks for resourceVersion "0", which the
// API server answers from its watch cache in one unpaged response, decoded
// whole before any transform; at 15,000 Nodes with their status that is
// about a gigabyte (measured, test/bench/restart_test.go). Where the API
// server supports streaming lists (WatchList), the reflector streams
// through the watch instead, and TrimNode applies per object.
type NodeInformer struct {
	informer cache.SharedIndexInformer
}

// NewNodeInformer builds the informer; resync is the resync period.
func NewNodeInformer(client kubernetes.Interface, resync time.Duration) *NodeInformer {
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
			return listNodesTrimmed(ctx, client, opts)
		},
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			return client.CoreV1().Nodes().Watch(ctx, opts)
		},
	}
	inf := cache.NewSharedIndexInformer(lw, &corev1.Node{}, resync, cache.Indexers{})
	_ = inf.SetTransform(TrimNode) // only fails once started
	return &NodeInformer{informer: inf}
}

// Informer implements coreinformers.NodeInformer.
func (n *NodeInformer) Informer() cache.SharedIndexInformer { return n.informer }

// Lister implements coreinformers.NodeInformer.
func (n *NodeInformer) Lister() corelisters.NodeLister {
	return corelisters.NewNodeLister(n.informer.GetIndexer())
}

// listNodesTrimmed lists every Node in pages of listPageSize from one
// consistent snapshot (the continue token keeps the first page's
// resourceVersion), trimming each page as it arrives. Each page is read in
// protobuf and decoded field by field (splitNodeList,
// decodeNodeItemsTrimmed): only what
// TrimNode keeps is decoded, and the Nodes' status — at 50 images of two
// names each, most of a Node's bytes and most of its decoding cost
// (measured: 367 allocations and 90 kB per Node decoded whole, test/bench
// restart_test.go) — is skipped unread. And the next page is asked for as
// soon as this one's continue token is read, before its Nodes are decoded:
// the API server reads and encodes page n+1 while the controller decodes
// page n, rather than each waiting for the other. At most two pages are
// held at once. A response that is not protobuf is decoded whole, and a
// client without a REST client (a fake clientset) lists page by page.
func listNodesTrimmed(ctx context.Context, client kubernetes.Interface, opts metav1.ListOptions) (*corev1.NodeList, error) {
	opts.Limit = listPageSize
	// Always a consistent read of the latest state: "0" (any cached
	// version) makes the API server ignore the limit, and a specific old
	// version with a limit means Exact, which fails once compacted. The
	// latest snapshot is never older than what the reflector asked for.
	// (https://kubernetes.io/docs/reference/using-api/api-concepts/#semantics-for-get-and-list)
	opts.ResourceVersion = ""
	opts.ResourceVersionMatch = ""
	// A fake clientset has no REST client (a nil *rest.RESTClient); any
	// other rest.Interface is listed through the typed client too.
	rc, ok := client.CoreV1().RESTClient().(*rest.RESTClient)
	typed := !ok || rc == nil
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // a page still in flight when this returns early
	fetch := func(opts metav1.ListOptions) <-chan rawPage {
		ch := make(chan rawPage, 1)
		go func() {
			var p rawPage
			// Protobuf, or JSON from a server that cannot serve it (as
			// client-go's own AcceptContentTypes list asks).
			res := rc.Get().Resource("nodes").
				VersionedParams(&opts, scheme.ParameterCodec).
				SetHeader("Accept", protobufContentType+", application/json").
				Do(ctx).ContentType(&p.contentType)
			if p.raw, p.err = res.Raw(); p.err != nil {
				// Error() decodes the API server's Status (410 Expired on
				// a compacted continue token, …); Raw() alone does not.
				p.err = res.Error()
			}
			ch <- p
		}()
		return ch
	}
	out := &corev1.NodeList{}
	var next <-chan rawPage
	if !typed {
		next = fetch(opts)
	}
	for {
		var page *corev1.NodeList
		var err error
		if typed {
			page, err = listNodesPageTyped(ctx, client, opts)
		} else {
			p := <-next
			if p.err != nil {
				return nil, p.err
			}
			if mt, _, _ := mime.ParseMediaType(p.contentType); mt == protobufContentType {
				var meta metav1.ListMeta
				var items []byte
				if meta, items, err = splitNodeList(p.raw); err != nil {
					return nil, err
				}
				if meta.Continue != "" {
					o := opts
					o.Continue = meta.Continue
					next = fetch(o)
				}
				page, err = decodeNodeItemsTrimmed(items)
				if page != nil {
					page.ListMeta = meta
				}
			} else {
				// Not protobuf (an API server that answers JSON):
				// decoded whole; the next page waits for it.
				page, err = decodeNodeListWhole(p.raw, p.contentType)
				if err == nil && page.Continue != "" {
					o := opts
					o.Continue = page.Continue
					next = fetch(o)
				}
			}
		}
		if err != nil {
			return nil, err
		}
		out.Items = append(out.Items, page.Items...)
		out.ResourceVersion = page.ResourceVersion
		if page.Continue == "" {
			return out, nil
		}
		opts.Continue = page.Continue
	}
}

// rawPage is one page of the Node list as the API server sent it.
type rawPage struct {
	raw         []byte
	contentType string
	err         error
}

func decodeNodeListWhole(raw []byte, contentType string) (*corev1.NodeList, error) {
	obj, err := runtime.Decode(scheme.Codecs.UniversalDeserializer(), raw)
	if err != nil {
		return nil, fmt.Errorf("decode node list (%s): %w", contentType, err)
	}
	l, ok := obj.(*corev1.NodeList)
	if !ok {
		return nil, fmt.Errorf("list nodes: got %T", obj)
	}
	return trimList(l), nil
}

func listNodesPageTyped(ctx context.Context, client kubernetes.Interface, opts metav1.ListOptions) (*corev1.NodeList, error) {
	l, err := client.CoreV1().Nodes().List(ctx, opts)
	if err != nil {
		return nil, err
	}
	return trimList(l), nil
}

func trimList(l *corev1.NodeList) *corev1.NodeList {
	out := &corev1.NodeList{ListMeta: l.ListMeta, Items: make([]corev1.Node, 0, len(l.Items))}
	for i := range l.Items {
		t, _ := TrimNode(&l.Items[i])
		out.Items = append(out.Items, *t.(*corev1.Node))
	}
	return out
}

const protobufContentType = "application/vnd.kubernetes.protobuf"

// protobufPrefix is the magic number that starts every protobuf-encoded
// object of the Kubernetes API (k8s.io/apimachinery serializer/protobuf,
// protoEncodingPrefix), followed by a runtime.Unknown whose raw bytes are
// the object (https://kubernetes.io/docs/reference/using-api/api-concepts/#protobuf-encoding).
var protobufPrefix = []byte{0x6b, 0x38, 0x73, 0x00}

// Field numbers, from k8s.io/api/core/v1/generated.proto and
// k8s.io/apimachinery/pkg/apis/meta/v1/generated.proto.
const (
	listFieldMetadata = 1 // NodeList.metadata (ListMeta)
	listFieldItems    = 2 // NodeList.items (Node)
	nodeFieldMetadata = 1 // Node.metadata (ObjectMeta)
	nodeFieldSpec     = 2 // Node.spec (NodeSpec); 3, status, is skipped
)

// objectMetaKept are the ObjectMeta fields TrimNode keeps: name (1), uid
// (5), resourceVersion (6), creationTimestamp (8), deletionTimestamp (9),
// labels (11). The rest (annotations, owner references, finalizers,
// managed fields, …) are skipped unread.
var objectMetaKept = map[protowire.Number]bool{1: true, 5: true, 6: true, 8: true, 9: true, 11: true}

// decodeNodeListTrimmed decodes a protobuf NodeList into trimmed Nodes
// (what TrimNode keeps), decoding only the list's metadata, each Node's
// kept ObjectMeta fields and its spec.
func decodeNodeListTrimmed(data []byte) (*corev1.NodeList, error) {
	meta, items, err := splitNodeList(data)
	if err != nil {
		return nil, err
	}
	out, err := decodeNodeItemsTrimmed(items)
	if err != nil {
		return nil, err
	}
	out.ListMeta = meta
	return out, nil
}

// splitNodeList reads a protobuf NodeList's envelope and its ListMeta, and
// returns the message (items still encoded) for decodeNodeItemsTrimmed.
func splitNodeList(data []byte) (metav1.ListMeta, []byte, error) {
	var meta metav1.ListMeta
	if !bytes.HasPrefix(data, protobufPrefix) {
		return meta, nil, errors.New("node list: not a Kubernetes protobuf message")
	}
	// runtime.Unknown: typeMeta (1: apiVersion 1, kind 2) and raw (2).
	var kind string
	var list []byte
	err := eachField(data[len(protobufPrefix):], func(num protowire.Number, v []byte) error {
		switch num {
		case 1:
			return eachField(v, func(f protowire.Number, fv []byte) error {
				if f == 2 {
					kind = string(fv)
				}
				return nil
			})
		case 2:
			list = v
		}
		return nil
	})
	if err != nil {
		return meta, nil, fmt.Errorf("node list envelope: %w", err)
	}
	if kind != "NodeList" {
		return meta, nil, fmt.Errorf("list nodes: got kind %q", kind)
	}
	if list == nil {
		// An envelope without its message would read as an empty,
		// complete list: every block free to hand out again.
		return meta, nil, errors.New("node list envelope: no NodeList message")
	}
	err = eachField(list, func(num protowire.Number, v []byte) error {
		if num == listFieldMetadata {
			return meta.Unmarshal(v)
		}
		return nil
	})
	if err != nil {
		return meta, nil, fmt.Errorf("node list metadata: %w", err)
	}
	if meta.ResourceVersion == "" {
		// The API server sets it on every list it answers.
		return meta, nil, errors.New("node list: no resourceVersion in its metadata")
	}
	return meta, list, nil
}

// decodeNodeItemsTrimmed decodes the items of a protobuf NodeList message,
// trimmed.
func decodeNodeItemsTrimmed(list []byte) (*corev1.NodeList, error) {
	out := &corev1.NodeList{}
	err := eachField(list, func(num protowire.Number, v []byte) error {
		if num != listFieldItems {
			return nil
		}
		n, err := decodeNodeTrimmed(v)
		if err != nil {
			return err
		}
		out.Items = append(out.Items, *n)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("node list: %w", err)
	}
	return out, nil
}

func decodeNodeTrimmed(data []byte) (*corev1.Node, error) {
	n := &corev1.Node{}
	var meta []byte
	err := eachField(data, func(num protowire.Number, v []byte) error {
		switch num {
		case nodeFieldMetadata:
			// The kept fields, re-framed, then decoded by the generated
			// code: the fields skipped are never decoded.
			meta = meta[:0]
			return eachField(v, func(f protowire.Number, fv []byte) error {
				if objectMetaKept[f] {
					meta = protowire.AppendTag(meta, f, protowire.BytesType)
					meta = protowire.AppendBytes(meta, fv)
				}
				return nil
			})
		case nodeFieldSpec:
			return n.Spec.Unmarshal(v)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := n.ObjectMeta.Unmarshal(meta); err != nil {
		return nil, err
	}
	t, _ := TrimNode(n)
	return t.(*corev1.Node), nil
}

// eachField calls fn with the number and contents of every length-delimited
// field of a protobuf message; fields of other wire types are skipped
// (none of the fields read here is one).
func eachField(data []byte, fn func(protowire.Number, []byte) error) error {
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		if n < 0 {
			return protowire.ParseError(n)
		}
		data = data[n:]
		if typ != protowire.BytesType {
			n = protowire.ConsumeFieldValue(num, typ, data)
			if n < 0 {
				return protowire.ParseError(n)
			}
			data = data[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(data)
		if n < 0 {
			return protowire.ParseError(n)
		}
		data = data[n:]
		if err := fn(num, v); err != nil {
			return err
		}
	}
	return nil
}

// TrimNode is the Node informer's transform: it keeps what the controller
// reads (name, UID, resourceVersion, creation time, labels, providerID,
// podCIDR(s)) and drops the rest — status with its images and conditions,
// annotations, managed fields — which at 15,000 Nodes is most of the cache.
// Tombstones and other objects pass through.
func TrimNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	return &corev1.Node{
		TypeMeta: n.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Name:              n.Name,
			UID:               n.UID,
			ResourceVersion:   n.ResourceVersion,
			CreationTimestamp: n.CreationTimestamp,
			DeletionTimestamp: n.DeletionTimestamp,
			Labels:            n.Labels,
		},
		Spec: corev1.NodeSpec{
			ProviderID: n.Spec.ProviderID,
			PodCIDR:    n.Spec.PodCIDR,
			PodCIDRs:   n.Spec.PodCIDRs,
		},
	}, nil
}
