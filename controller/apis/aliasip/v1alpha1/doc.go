// Package v1alpha1 is the aliasip.io/v1alpha1 API: PodRange, a pod range
// (a CIDR, or a subnetwork secondary range on GCE) that the controller
// carves node blocks from for the nodes its selector picks.
//
// The deepcopy functions (zz_generated.deepcopy.go), the typed clientset,
// listers and informers (controller/generated) and the CRD
// (charts/aliasip/crds) are generated from this package by
// hack/update-codegen.sh; never edit them by hand.
//
// +k8s:deepcopy-gen=package
// +groupName=aliasip.io
package v1alpha1
