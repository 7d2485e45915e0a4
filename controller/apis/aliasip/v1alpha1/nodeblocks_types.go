package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// NodeBlocks records the extra blocks of one node of a growable PodRange
// (spec.growth), beyond its podCIDR: spec.podCIDRs is immutable and holds
// one prefix per family, so the node's first block stays there and the
// others live here. It is named after its Node and owned by it.
//
// Two writers, each with its own half:
//   - status (the status subresource) is the controller's alone: the
//     blocks granted to the node and whether each is in use or draining;
//   - spec is the node's agent's report of its usage, which only that
//     node's agent may write (the chart's admission policy checks the
//     node-name claim of the agent's token against the object's name).
//
// +genclient
// +genclient:nonNamespaced
// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=nb,categories=aliasip
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="Range",type=string,JSONPath=`.status.podRange`
// +kubebuilder:printcolumn:name="Blocks",type=integer,JSONPath=`.status.activeBlocks`
// +kubebuilder:printcolumn:name="Draining",type=integer,JSONPath=`.status.drainingBlocks`
// +kubebuilder:printcolumn:name="Allocated",type=integer,JSONPath=`.spec.allocated`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type NodeBlocks struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +optional
	Spec NodeBlocksSpec `json:"spec,omitempty"`
	// +optional
	Status NodeBlocksStatus `json:"status,omitempty"`
}

// NodeBlocksSpec is the node agent's report.
type NodeBlocksSpec struct {
	// Blocks is the usage of each of the node's blocks the agent serves
	// from (its podCIDR and the granted ones).
	// +optional
	// +listType=map
	// +listMapKey=cidr
	// +kubebuilder:validation:MaxItems=101
	Blocks []BlockUsage `json:"blocks,omitempty"`

	// Allocated is the number of addresses the node holds in all its
	// blocks (pods, and addresses cooling down after a pod left).
	// +optional
	// +kubebuilder:validation:Minimum=0
	Allocated int32 `json:"allocated,omitempty"`

	// Waiting is the number of CNI ADDs waiting for an address: the node
	// needs a block now, whatever its low-water mark.
	// +optional
	// +kubebuilder:validation:Minimum=0
	Waiting int32 `json:"waiting,omitempty"`

	// Drained lists the draining blocks the agent holds no address of and
	// will never use again, each with the drain it answers (the status
	// entry's drainingSince): only then does the controller remove the
	// block from the NIC and give it back.
	// +optional
	// +listType=map
	// +listMapKey=cidr
	// +kubebuilder:validation:MaxItems=101
	Drained []DrainedBlock `json:"drained,omitempty"`
}

// BlockUsage is one block's usage as the agent sees it.
type BlockUsage struct {
	// CIDR is the block.
	// +kubebuilder:validation:MaxLength=43
	CIDR string `json:"cidr"`
	// Capacity is the number of pod addresses the block holds.
	// +kubebuilder:validation:Minimum=0
	Capacity int32 `json:"capacity"`
	// Allocated is the number of them in use or cooling down.
	// +kubebuilder:validation:Minimum=0
	Allocated int32 `json:"allocated"`
}

// DrainedBlock is a draining block the agent no longer uses.
type DrainedBlock struct {
	// CIDR is the block.
	// +kubebuilder:validation:MaxLength=43
	CIDR string `json:"cidr"`
	// DrainingSince is the status entry's drainingSince this answers.
	DrainingSince metav1.Time `json:"drainingSince"`
}

// NodeBlocksStatus is the controller's record of the blocks it granted.
type NodeBlocksStatus struct {
	// PodRange names the growable range the blocks come from.
	// +optional
	PodRange string `json:"podRange,omitempty"`
	// Blocks are the node's extra blocks, each an alias range on its NIC.
	// +optional
	// +listType=map
	// +listMapKey=cidr
	// +kubebuilder:validation:MaxItems=100
	Blocks []GrantedBlock `json:"blocks,omitempty"`
	// ActiveBlocks counts the node's blocks it may allocate from, its
	// podCIDR included.
	// +optional
	ActiveBlocks int32 `json:"activeBlocks,omitempty"`
	// DrainingBlocks counts the blocks being given back.
	// +optional
	DrainingBlocks int32 `json:"drainingBlocks,omitempty"`
	// Conditions: CapReached (True when the node holds maxBlocksPerNode
	// blocks and still runs low).
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// GrantedBlock is one extra block of a node.
type GrantedBlock struct {
	// CIDR is the block.
	// +kubebuilder:validation:MaxLength=43
	CIDR string `json:"cidr"`
	// State is Active (the agent allocates from it) or Draining (being
	// given back: no new address from it).
	// +kubebuilder:validation:Enum=Active;Draining
	State string `json:"state"`
	// GrantedAt is when the block was attached to the node's NIC.
	GrantedAt metav1.Time `json:"grantedAt"`
	// DrainingSince is when the block started draining.
	// +optional
	DrainingSince *metav1.Time `json:"drainingSince,omitempty"`
}

// States of a granted block.
const (
	BlockActive   = "Active"
	BlockDraining = "Draining"
)

// ConditionCapReached is the NodeBlocks condition set when the node holds
// its range's maxBlocksPerNode blocks and runs low on addresses.
const ConditionCapReached = "CapReached"

// NodeBlocksList is a list of NodeBlocks.
//
// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object
// +kubebuilder:object:root=true
type NodeBlocksList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []NodeBlocks `json:"items"`
}
