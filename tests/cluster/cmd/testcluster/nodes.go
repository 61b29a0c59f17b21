package main

// nodes.go: fake nodes from --nodes-file (YAML or JSON) and --node flags, created as Node objects
// that kwok manages (annotation kwok.x-k8s.io/node=fake).

import (
	"context"
	"fmt"
	"os"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"
)

const kwokAnnotation = "kwok.x-k8s.io/node"

// NodeSpec is one fake node as written in a nodes file.
type NodeSpec struct {
	Name        string            `json:"name"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
	// Capacity: cpu, memory, pods, nvidia.com/gpu, ... (Kubernetes quantities).
	Capacity map[string]string `json:"capacity,omitempty"`
	// Allocatable defaults to Capacity.
	Allocatable map[string]string `json:"allocatable,omitempty"`
	Taints      []corev1.Taint    `json:"taints,omitempty"`
}

// NodesFile is the top level of a nodes file.
type NodesFile struct {
	Nodes []NodeSpec `json:"nodes"`
}

var defaultCapacity = map[string]string{"cpu": "8", "memory": "32Gi", "pods": "110"}

func loadNodesFile(path string) ([]NodeSpec, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var f NodesFile
	if err := yaml.UnmarshalStrict(raw, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for i, n := range f.Nodes {
		if n.Name == "" {
			return nil, fmt.Errorf("%s: nodes[%d]: name is required", path, i)
		}
	}
	return f.Nodes, nil
}

// parseNodeFlag reads `NAME[:label=value,label=value]`; capacity is the default 8 cpu / 32Gi / 110 pods.
func parseNodeFlag(s string) (NodeSpec, error) {
	name, rest, _ := strings.Cut(s, ":")
	if name == "" {
		return NodeSpec{}, fmt.Errorf("--node %q: empty name", s)
	}
	n := NodeSpec{Name: name, Labels: map[string]string{}}
	if rest != "" {
		for _, kv := range strings.Split(rest, ",") {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				return NodeSpec{}, fmt.Errorf("--node %q: label %q is not key=value", s, kv)
			}
			n.Labels[k] = v
		}
	}
	return n, nil
}

func resourceList(m map[string]string, where string) (corev1.ResourceList, error) {
	out := corev1.ResourceList{}
	for k, v := range m {
		q, err := resource.ParseQuantity(v)
		if err != nil {
			return nil, fmt.Errorf("%s: %s=%q: %w", where, k, v, err)
		}
		out[corev1.ResourceName(k)] = q
	}
	return out, nil
}

func (n NodeSpec) toNode() (*corev1.Node, error) {
	capMap := n.Capacity
	if len(capMap) == 0 {
		capMap = defaultCapacity
	}
	capacity, err := resourceList(capMap, "node "+n.Name+" capacity")
	if err != nil {
		return nil, err
	}
	if _, ok := capacity[corev1.ResourcePods]; !ok {
		capacity[corev1.ResourcePods] = resource.MustParse("110")
	}
	allocatable := capacity.DeepCopy()
	if len(n.Allocatable) > 0 {
		a, err := resourceList(n.Allocatable, "node "+n.Name+" allocatable")
		if err != nil {
			return nil, err
		}
		for k, v := range a {
			allocatable[k] = v
		}
	}
	labels := map[string]string{
		"kubernetes.io/hostname": n.Name,
		"kubernetes.io/os":       "linux",
		"kubernetes.io/arch":     "amd64",
		"type":                   "kwok",
	}
	for k, v := range n.Labels {
		labels[k] = v
	}
	annotations := map[string]string{kwokAnnotation: "fake", "node.alpha.kubernetes.io/ttl": "0"}
	for k, v := range n.Annotations {
		annotations[k] = v
	}
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: labels, Annotations: annotations},
		Spec:       corev1.NodeSpec{Taints: n.Taints},
		Status: corev1.NodeStatus{
			Capacity:    capacity,
			Allocatable: allocatable,
			Phase:       corev1.NodeRunning,
		},
	}, nil
}

// applyNodes creates the fake nodes, or updates labels, taints and resources of ones that survived a restart.
func applyNodes(ctx context.Context, client kubernetes.Interface, specs []NodeSpec) error {
	for _, s := range specs {
		want, err := s.toNode()
		if err != nil {
			return err
		}
		_, err = client.CoreV1().Nodes().Create(ctx, want, metav1.CreateOptions{})
		if err == nil {
			continue
		}
		if !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create node %s: %w", s.Name, err)
		}
		cur, err := client.CoreV1().Nodes().Get(ctx, s.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if cur.Labels == nil {
			cur.Labels = map[string]string{}
		}
		for k, v := range want.Labels {
			cur.Labels[k] = v
		}
		if cur.Annotations == nil {
			cur.Annotations = map[string]string{}
		}
		for k, v := range want.Annotations {
			cur.Annotations[k] = v
		}
		cur.Spec.Taints = want.Spec.Taints
		cur, err = client.CoreV1().Nodes().Update(ctx, cur, metav1.UpdateOptions{})
		if err != nil {
			return fmt.Errorf("update node %s: %w", s.Name, err)
		}
		cur.Status.Capacity = want.Status.Capacity
		cur.Status.Allocatable = want.Status.Allocatable
		if _, err := client.CoreV1().Nodes().UpdateStatus(ctx, cur, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("update node %s status: %w", s.Name, err)
		}
	}
	return nil
}
