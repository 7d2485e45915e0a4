package controller

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
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
// resourceVersion), trimming each page as it arrives.
func listNodesTrimmed(ctx context.Context, client kubernetes.Interface, opts metav1.ListOptions) (*corev1.NodeList, error) {
	opts.Limit = listPageSize
	// Always a consistent read of the latest state: "0" (any cached
	// version) makes the API server ignore the limit, and a specific old
	// version with a limit means Exact, which fails once compacted. The
	// latest snapshot is never older than what the reflector asked for.
	// (https://kubernetes.io/docs/reference/using-api/api-concepts/#semantics-for-get-and-list)
	opts.ResourceVersion = ""
	opts.ResourceVersionMatch = ""
	out := &corev1.NodeList{}
	for {
		page, err := client.CoreV1().Nodes().List(ctx, opts)
		if err != nil {
			return nil, err
		}
		for i := range page.Items {
			t, _ := TrimNode(&page.Items[i])
			out.Items = append(out.Items, *t.(*corev1.Node))
		}
		out.ResourceVersion = page.ResourceVersion
		if page.Continue == "" {
			return out, nil
		}
		opts.Continue = page.Continue
		opts.ResourceVersion = ""
	}
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
