package main

import (
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestExampleNodeFilesParse(t *testing.T) {
	for file, want := range map[string]int{"single-node.yaml": 1, "three-node.yaml": 3} {
		specs, err := loadNodesFile(filepath.Join("..", "..", "nodes", file))
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if len(specs) != want {
			t.Fatalf("%s: %d nodes, want %d", file, len(specs), want)
		}
		for _, s := range specs {
			if _, err := s.toNode(); err != nil {
				t.Fatalf("%s: %v", file, err)
			}
		}
	}
	specs, _ := loadNodesFile(filepath.Join("..", "..", "nodes", "single-node.yaml"))
	n, _ := specs[0].toNode()
	if n.Name != "pai-node-1" || n.Labels["pai-master"] != "true" || n.Labels["pai-worker"] != "true" {
		t.Fatalf("single node: %+v", n.ObjectMeta)
	}
	mem := n.Status.Allocatable[corev1.ResourceMemory]
	if mem.String() != "32Gi" {
		t.Fatalf("single node memory %s", mem.String())
	}
}

func TestAllocatableMergesOverCapacity(t *testing.T) {
	n, err := NodeSpec{
		Name:        "gpu-1",
		Labels:      map[string]string{"kubernetes.io/hostname": "custom"},
		Capacity:    map[string]string{"cpu": "16", "memory": "64Gi", "nvidia.com/gpu": "4"},
		Allocatable: map[string]string{"cpu": "15"},
	}.toNode()
	if err != nil {
		t.Fatal(err)
	}
	cpu := n.Status.Allocatable[corev1.ResourceCPU]
	gpu := n.Status.Allocatable["nvidia.com/gpu"]
	pods := n.Status.Capacity[corev1.ResourcePods]
	if cpu.String() != "15" || gpu.String() != "4" || pods.String() != "110" {
		t.Fatalf("allocatable %v capacity %v", n.Status.Allocatable, n.Status.Capacity)
	}
	if n.Labels["kubernetes.io/hostname"] != "custom" || n.Annotations[kwokAnnotation] != "fake" {
		t.Fatalf("labels %v annotations %v", n.Labels, n.Annotations)
	}
}

func TestBadInputIsRejected(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"unknown-field.yaml": "nodes:\n  - name: a\n    capcity: {cpu: \"1\"}\n",
		"no-name.yaml":       "nodes:\n  - labels: {a: b}\n",
	} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := loadNodesFile(p); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := (NodeSpec{Name: "a", Capacity: map[string]string{"cpu": "lots"}}).toNode(); err == nil {
		t.Error("bad quantity accepted")
	}
	if _, err := parseNodeFlag("n:bad"); err == nil {
		t.Error("label without = accepted")
	}
	s, err := parseNodeFlag("n1:pai-worker=true,zone=a")
	if err != nil || s.Name != "n1" || s.Labels["pai-worker"] != "true" || s.Labels["zone"] != "a" {
		t.Fatalf("parseNodeFlag: %+v %v", s, err)
	}
}
