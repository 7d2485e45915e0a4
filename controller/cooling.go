package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// ErrCoolingCorrupt: the stored cooling set cannot be read. The controller
// does not guess: it stays not ready, with a Warning event, until the
// object is fixed or removed.
var ErrCoolingCorrupt = errors.New("stored cooling blocks are malformed")

// CoolingStore keeps the blocks that are cooling down, and until when, so
// the cooldown survives a controller restart or a change of leader.
type CoolingStore interface {
	Load(ctx context.Context) (map[netip.Prefix]time.Time, error)
	Save(ctx context.Context, cooling map[netip.Prefix]time.Time) error
}

// ConfigMapCooling stores the cooling set in one ConfigMap. It is written
// only when a block starts or ends cooling (node deletions, not
// allocations), through the client given (not the Node write budget).
type ConfigMapCooling struct {
	Client    kubernetes.Interface
	Namespace string
	Name      string
}

const coolingKey = "cooling.json"

// Load implements CoolingStore; a missing ConfigMap is an empty set.
func (s *ConfigMapCooling) Load(ctx context.Context) (map[netip.Prefix]time.Time, error) {
	cm, err := s.Client.CoreV1().ConfigMaps(s.Namespace).Get(ctx, s.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return map[netip.Prefix]time.Time{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read cooling blocks %s/%s: %w", s.Namespace, s.Name, err)
	}
	out := map[netip.Prefix]time.Time{}
	if data := cm.Data[coolingKey]; data != "" {
		if err := json.Unmarshal([]byte(data), &out); err != nil {
			return nil, fmt.Errorf("%w: ConfigMap %s/%s key %s: %v (fix or delete it; deleting it loses the cooldown of recently freed blocks)",
				ErrCoolingCorrupt, s.Namespace, s.Name, coolingKey, err)
		}
	}
	return out, nil
}

// Ref names the ConfigMap, for events about it.
func (s *ConfigMapCooling) Ref() *corev1.ObjectReference {
	return &corev1.ObjectReference{Kind: "ConfigMap", APIVersion: "v1", Namespace: s.Namespace, Name: s.Name}
}

// Save implements CoolingStore.
func (s *ConfigMapCooling) Save(ctx context.Context, cooling map[netip.Prefix]time.Time) error {
	data, err := json.Marshal(cooling)
	if err != nil {
		return err
	}
	cms := s.Client.CoreV1().ConfigMaps(s.Namespace)
	cm, err := cms.Get(ctx, s.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = cms.Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Namespace: s.Namespace, Name: s.Name},
			Data:       map[string]string{coolingKey: string(data)},
		}, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	if cm.Data[coolingKey] == string(data) {
		return nil
	}
	cm = cm.DeepCopy()
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	cm.Data[coolingKey] = string(data)
	_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
	return err
}
