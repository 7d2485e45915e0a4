package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The CEL rules below use the Kubernetes CIDR library (isCIDR, cidr(),
// prefixLength(), masked(), ip().family()), served by kube-apiserver since
// 1.31: https://kubernetes.io/docs/reference/using-api/cel/#kubernetes-cidr-library
// (k8s.io/apiserver pkg/cel/library/cidr.go). Transition rules (oldSelf)
// make fields immutable:
// https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#transition-rules

// PodRange is a range of pod addresses the controller carves node blocks
// from, for the nodes its selector picks. The range given to the
// controller by flags (--cluster-cidr, or the subnetwork's secondary range
// on GCE) is the implicit default, for nodes no PodRange selects.
//
// +genclient
// +genclient:nonNamespaced
// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=pr,categories=aliasip
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="CIDR",type=string,JSONPath=`.status.cidr`
// +kubebuilder:printcolumn:name="Mask",type=integer,JSONPath=`.status.maskSize`
// +kubebuilder:printcolumn:name="Priority",type=integer,JSONPath=`.spec.priority`
// +kubebuilder:printcolumn:name="Total",type=integer,JSONPath=`.status.blocksTotal`
// +kubebuilder:printcolumn:name="Used",type=integer,JSONPath=`.status.blocksUsed`
// +kubebuilder:printcolumn:name="Free",type=integer,JSONPath=`.status.blocksFree`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`,priority=1
// +kubebuilder:printcolumn:name="Exhausted",type=string,JSONPath=`.status.conditions[?(@.type=="Exhausted")].status`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="self.metadata.name != 'default'",message="the name \"default\" is reserved for the range given to the controller by flags"
type PodRange struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec PodRangeSpec `json:"spec"`
	// +optional
	Status PodRangeStatus `json:"status,omitempty"`
}

// PodRangeSpec is what an operator asks for.
//
// +kubebuilder:validation:XValidation:rule="has(self.cidr) != has(self.secondaryRangeName)",message="exactly one of cidr (fake cloud) and secondaryRangeName (GCE) must be set"
// +kubebuilder:validation:XValidation:rule="has(self.maskSize) != has(self.maxPodsPerNode)",message="exactly one of maskSize and maxPodsPerNode must be set"
// +kubebuilder:validation:XValidation:rule="has(self.cidr) == has(oldSelf.cidr) && has(self.secondaryRangeName) == has(oldSelf.secondaryRangeName)",message="the range (cidr or secondaryRangeName) is immutable: create another PodRange"
// +kubebuilder:validation:XValidation:rule="has(self.maskSize) == has(oldSelf.maskSize) && has(self.maxPodsPerNode) == has(oldSelf.maxPodsPerNode)",message="the block size (maskSize or maxPodsPerNode) is immutable: create another PodRange"
// +kubebuilder:validation:XValidation:rule="has(self.growth) == has(oldSelf.growth)",message="whether the range grows (growth) is fixed at creation: create another PodRange"
// +kubebuilder:validation:XValidation:rule="!has(self.cidr) || !isCIDR(self.cidr) || !has(self.maskSize) || self.maskSize >= cidr(self.cidr).prefixLength()",message="maskSize must be at least the prefix length of cidr: a block cannot be larger than its range"
// +kubebuilder:validation:XValidation:rule="!has(self.cidr) || !isCIDR(self.cidr) || !has(self.maskSize) || self.maskSize <= (cidr(self.cidr).ip().family() == 4 ? 30 : 126)",message="maskSize must be at most 30 for an IPv4 cidr (126 for IPv6): a node block needs room for its network, gateway and broadcast addresses and a pod (the node agent's rule, internal/blocksize)"
// +kubebuilder:validation:XValidation:rule="!has(self.cidr) || !isCIDR(self.cidr) || !has(self.maskSize) || self.maskSize - cidr(self.cidr).prefixLength() <= 24",message="the range holds more than 2^24 blocks of maskSize: use a larger block (smaller maskSize) or a smaller range"
// +kubebuilder:validation:XValidation:rule="!has(self.secondaryRangeName) || !has(self.maskSize) || self.maskSize <= 30",message="maskSize must be at most 30: GCE secondary ranges are IPv4, and a node block needs room for its network, gateway and broadcast addresses and a pod (internal/blocksize)"
// +kubebuilder:validation:XValidation:rule="!has(self.cidr) || !isCIDR(self.cidr) || !has(self.maxPodsPerNode) || (cidr(self.cidr).ip().family() == 4 ? 32 : 128) - (self.maxPodsPerNode <= 8 ? 4 : self.maxPodsPerNode <= 16 ? 5 : self.maxPodsPerNode <= 32 ? 6 : self.maxPodsPerNode <= 64 ? 7 : self.maxPodsPerNode <= 128 ? 8 : 9) >= cidr(self.cidr).prefixLength()",message="the block maxPodsPerNode needs (at least twice as many addresses as pods) is larger than cidr"
type PodRangeSpec struct {
	// CIDR is the range, with the fake cloud (kind, local clusters), e.g.
	// 10.64.0.0/14. Immutable.
	// +optional
	// +kubebuilder:validation:MaxLength=43
	// +kubebuilder:validation:XValidation:rule="isCIDR(self)",message="cidr must be a network in CIDR notation, e.g. 10.64.0.0/14"
	// +kubebuilder:validation:XValidation:rule="!isCIDR(self) || cidr(self) == cidr(self).masked()",message="cidr must be the network address of its prefix (no bits set past the prefix length), e.g. 10.64.0.0/14"
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="cidr is immutable: create another PodRange"
	CIDR string `json:"cidr,omitempty"`

	// SecondaryRangeName names a secondary range of the nodes' subnetwork,
	// with GCE; the controller reads its CIDR from the subnetwork.
	// Immutable.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z]([-a-z0-9]*[a-z0-9])?$`
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="secondaryRangeName is immutable: create another PodRange"
	SecondaryRangeName string `json:"secondaryRangeName,omitempty"`

	// NodeSelector picks the nodes that get their block from this range
	// ({} picks every node). A node keeps its block when its labels change.
	NodeSelector metav1.LabelSelector `json:"nodeSelector"`

	// MaskSize is the mask size of each node's block, e.g. 24. Immutable.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=126
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="maskSize is immutable: create another PodRange"
	MaskSize *int32 `json:"maskSize,omitempty"`

	// MaxPodsPerNode sizes each node's block as GKE does: the smallest
	// block with at least twice as many addresses as pods (110 → /24,
	// 8 → /28). Between 8 and 256, as on GKE. Immutable.
	// +optional
	// +kubebuilder:validation:Minimum=8
	// +kubebuilder:validation:Maximum=256
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="maxPodsPerNode is immutable: create another PodRange"
	MaxPodsPerNode *int32 `json:"maxPodsPerNode,omitempty"`

	// Priority orders the ranges that select a node: the highest first,
	// then, among equals, the one with the most free blocks.
	// +optional
	// +kubebuilder:default=0
	Priority int32 `json:"priority,omitempty"`

	// Growth makes the range growable: each node starts with one block
	// (its podCIDR) and is given more blocks of the same size as its free
	// addresses run low, each one more alias range on its NIC, recorded in
	// the node's NodeBlocks; a block left empty is drained and given
	// back. Without it every node has exactly one block. Whether a range
	// grows is fixed at creation; its settings may change.
	// +optional
	Growth *GrowthSpec `json:"growth,omitempty"`
}

// GrowthSpec sets how a growable range's nodes take and return blocks.
type GrowthSpec struct {
	// MaxBlocksPerNode caps the blocks one node holds, its podCIDR
	// included. Each block is an alias range on the node's NIC, and GCE
	// limits the alias ranges of one interface (cloud.MaxAliasRangesPerNIC),
	// so the cap stays well below that limit.
	// +optional
	// +kubebuilder:default=8
	// +kubebuilder:validation:Minimum=2
	// +kubebuilder:validation:Maximum=100
	MaxBlocksPerNode int32 `json:"maxBlocksPerNode,omitempty"`

	// LowWater is the free-address mark: when fewer addresses than this
	// are free in a node's blocks (or an ADD waits for one), the node is
	// given another block. 0: half a block.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=65536
	LowWater int32 `json:"lowWater,omitempty"`

	// ReturnAfterSeconds is how long an extra block stays entirely free
	// before it is drained and given back (when the node keeps at least
	// LowWater free addresses without it).
	// +optional
	// +kubebuilder:default=300
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=86400
	ReturnAfterSeconds int32 `json:"returnAfterSeconds,omitempty"`
}

// PodRangeStatus is what the controller observed.
type PodRangeStatus struct {
	// ObservedGeneration is the spec generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// CIDR is the range in use (cidr, or the secondary range's CIDR).
	// +optional
	CIDR string `json:"cidr,omitempty"`
	// MaskSize is the mask size of the range's blocks.
	// +optional
	MaskSize int32 `json:"maskSize,omitempty"`
	// BlocksTotal is the number of node blocks in the range.
	// +optional
	BlocksTotal int64 `json:"blocksTotal"`
	// BlocksUsed counts blocks held by nodes or cooling down.
	// +optional
	BlocksUsed int64 `json:"blocksUsed"`
	// BlocksFree counts blocks a node can get now.
	// +optional
	BlocksFree int64 `json:"blocksFree"`
	// Nodes is the number of nodes holding a block of this range.
	// +optional
	Nodes int64 `json:"nodes"`
	// Conditions: Ready (the range is in use, or why not) and Exhausted
	// (True with no free block; False with reason NearlyExhausted from 80 %).
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// Condition types of a PodRange.
const (
	// ConditionReady is True when the controller allocates from the range;
	// False with a reason (ReasonOverlaps, ReasonBlockSizeDoesNotFit, …)
	// when it cannot.
	ConditionReady = "Ready"
	// ConditionExhausted is True when the range has no free block.
	ConditionExhausted = "Exhausted"
)

// Condition reasons of a PodRange.
const (
	// ReasonValid: the range is in use.
	ReasonValid = "Valid"
	// ReasonOverlaps: the range overlaps another range (the default or
	// another PodRange); the older range keeps allocating, this one does not.
	ReasonOverlaps = "Overlaps"
	// ReasonBlockSizeDoesNotFit: the block size is larger than the range,
	// or the range holds too many blocks of it.
	ReasonBlockSizeDoesNotFit = "BlockSizeDoesNotFit"
	// ReasonSecondaryRangeNotFound: the subnetwork has no such secondary range.
	ReasonSecondaryRangeNotFound = "SecondaryRangeNotFound"
	// ReasonUnsupported: the range's kind does not fit the cloud in use
	// (a cidr with GCE, a secondaryRangeName with the fake cloud).
	ReasonUnsupported = "Unsupported"
	// ReasonInvalidSelector: the node selector cannot be parsed.
	ReasonInvalidSelector = "InvalidSelector"
	// ReasonInUse: the PodRange is being deleted and waits (finalizer)
	// until no node holds a block of it; it hands out no new block.
	ReasonInUse = "InUse"
	// ReasonBlocksAvailable: less than 80 % of the blocks are used.
	ReasonBlocksAvailable = "BlocksAvailable"
	// ReasonNearlyExhausted: at least 80 % of the blocks are used.
	ReasonNearlyExhausted = "NearlyExhausted"
	// ReasonExhausted: every block is used.
	ReasonExhausted = "Exhausted"
)

// Finalizer keeps a PodRange that nodes still hold blocks of.
const Finalizer = "aliasip.io/pod-range-in-use"

// NodeLabel is the Node label that records which range a node's block
// came from (a PodRange's name, or DefaultRangeName).
const NodeLabel = "aliasip.io/pod-range"

// DefaultRangeName names the range given to the controller by flags.
const DefaultRangeName = "default"

// PodRangeList is a list of PodRanges.
//
// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object
// +kubebuilder:object:root=true
type PodRangeList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []PodRange `json:"items"`
}
