package main

// kubeletconfig.go: `testcluster check-kubelet-config FILE` reads a KubeletConfiguration the way the
// kubelet does, but strictly: unknown or duplicate fields are errors (the kubelet itself falls back to
// lenient decoding with a warning). Then it applies the kubelet's defaults and runs its validation.

import (
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	kubeletconfigv1beta1 "k8s.io/kubelet/config/v1beta1"
	kubeletconfig "k8s.io/kubernetes/pkg/kubelet/apis/config"
	kubeletscheme "k8s.io/kubernetes/pkg/kubelet/apis/config/scheme"
	kubeletvalidation "k8s.io/kubernetes/pkg/kubelet/apis/config/validation"
	"sigs.k8s.io/yaml"
)

func checkKubeletConfig(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var typed kubeletconfigv1beta1.KubeletConfiguration
	if err := yaml.UnmarshalStrict(data, &typed); err != nil {
		return fmt.Errorf("strict decoding into k8s.io/kubelet/config/v1beta1.KubeletConfiguration: %w", err)
	}
	if typed.APIVersion != kubeletconfigv1beta1.SchemeGroupVersion.String() || typed.Kind != "KubeletConfiguration" {
		return fmt.Errorf("apiVersion/kind are %q/%q, want %s/KubeletConfiguration", typed.APIVersion, typed.Kind, kubeletconfigv1beta1.SchemeGroupVersion)
	}
	_, codecs, err := kubeletscheme.NewSchemeAndCodecs(serializer.EnableStrict)
	if err != nil {
		return err
	}
	obj, gvk, err := codecs.UniversalDecoder().Decode(data, nil, nil)
	if err != nil {
		return fmt.Errorf("the kubelet's strict codec: %w", err)
	}
	internal, ok := obj.(*kubeletconfig.KubeletConfiguration)
	if !ok {
		return fmt.Errorf("decoded %T, not a KubeletConfiguration", obj)
	}
	// The one host-dependent rule: the machine running this check is not the host the file is for, and
	// may still be on cgroup v1 (pailot's preflight checks the real host for cgroup v2).
	internal.FailCgroupV1 = false
	if err := kubeletvalidation.ValidateKubeletConfiguration(internal, utilfeature.DefaultFeatureGate); err != nil {
		return fmt.Errorf("the kubelet's validation: %w", err)
	}
	fmt.Printf("ok %s: %s strictly decoded, defaulted and validated (staticPodPath=%s cgroupDriver=%s clusterDomain=%s systemReserved=%v)\n",
		path, gvk, internal.StaticPodPath, internal.CgroupDriver, internal.ClusterDomain, internal.SystemReserved)
	return nil
}
