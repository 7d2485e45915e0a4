package framework

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"
)

// CRDDir is the chart's CustomResourceDefinitions directory.
func CRDDir() string { return filepath.Join(RepoRoot(), "charts", "aliasip", "crds") }

var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// InstallCRDs creates (or updates) every CRD in dir's *.yaml files, as
// `helm install` does with a chart's crds/ directory (installed before the
// templates, never upgraded or deleted by helm:
// https://helm.sh/docs/chart_best_practices/custom_resource_definitions/),
// and waits until the API server serves them (condition Established:
// https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#create-a-customresourcedefinition).
func InstallCRDs(ctx context.Context, cfg *rest.Config, dir string) error {
	return eachCRD(cfg, dir, func(crds dynamic.ResourceInterface, f string, obj *unstructured.Unstructured) error {
		_, err := crds.Create(ctx, obj, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			cur, gerr := crds.Get(ctx, obj.GetName(), metav1.GetOptions{})
			if gerr != nil {
				return gerr
			}
			obj.SetResourceVersion(cur.GetResourceVersion())
			_, err = crds.Update(ctx, obj, metav1.UpdateOptions{})
		}
		if err != nil {
			return fmt.Errorf("install CRD %s: %w", f, err)
		}
		name := obj.GetName()
		if err := Eventually(ctx, 30*time.Second, func() (bool, error) {
			cur, err := crds.Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			conds, _, _ := unstructured.NestedSlice(cur.Object, "status", "conditions")
			for _, c := range conds {
				m, _ := c.(map[string]any)
				if m["type"] == "Established" && m["status"] == "True" {
					return true, nil
				}
			}
			return false, nil
		}); err != nil {
			return fmt.Errorf("CRD %s not established: %w", name, err)
		}
		return nil
	})
}

// UninstallCRDs deletes the CRDs in dir's *.yaml files (and with them
// every object of theirs) and waits until they are gone.
func UninstallCRDs(ctx context.Context, cfg *rest.Config, dir string) error {
	return eachCRD(cfg, dir, func(crds dynamic.ResourceInterface, _ string, obj *unstructured.Unstructured) error {
		name := obj.GetName()
		if err := crds.Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete CRD %s: %w", name, err)
		}
		if err := Eventually(ctx, 60*time.Second, func() (bool, error) {
			_, err := crds.Get(ctx, name, metav1.GetOptions{})
			return apierrors.IsNotFound(err), nil
		}); err != nil {
			return fmt.Errorf("CRD %s not gone: %w", name, err)
		}
		return nil
	})
}

// eachCRD calls fn with the CRD client of cfg's API server and each CRD
// manifest of dir's *.yaml files (its path and object), in name order,
// until fn or a read fails.
func eachCRD(cfg *rest.Config, dir string, fn func(crds dynamic.ResourceInterface, f string, obj *unstructured.Unstructured) error) error {
	client, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return err
	}
	sort.Strings(files)
	crds := client.Resource(crdResource)
	for _, f := range files {
		obj, err := readCRD(f)
		if err != nil {
			return err
		}
		if err := fn(crds, f, obj); err != nil {
			return err
		}
	}
	return nil
}

// readCRD reads one CRD manifest.
func readCRD(f string) (*unstructured.Unstructured, error) {
	b, err := os.ReadFile(f)
	if err != nil {
		return nil, err
	}
	obj := &unstructured.Unstructured{}
	if err := yaml.Unmarshal(b, &obj.Object); err != nil {
		return nil, fmt.Errorf("%s: %w", f, err)
	}
	return obj, nil
}
