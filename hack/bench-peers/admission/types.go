package main

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupVersion of our CRDs.
var GroupVersion = schema.GroupVersion{Group: "gateway.tailscale.com", Version: "v1alpha1"}

// AddToScheme registers TailscaleServices (the one kind this peer validates).
func AddToScheme(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion, &TailscaleServices{}, &TailscaleServicesList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}

// TailscaleServices: the part of our CRD that the bench's object fills in.
type TailscaleServices struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              TailscaleServicesSpec `json:"spec"`
}

// TailscaleServicesSpec is the spec of a TailscaleServices.
type TailscaleServicesSpec struct {
	Selector      *metav1.LabelSelector `json:"selector,omitempty"`
	VIPService    *VIPServiceSpec       `json:"vipService,omitempty"`
	LoadBalancing *LoadBalancing        `json:"loadBalancing,omitempty"`
}

// VIPServiceSpec names the Tailscale VIP service and its ports and tags.
type VIPServiceSpec struct {
	Name  *string  `json:"name,omitempty"`
	Ports []string `json:"ports,omitempty"`
	Tags  []string `json:"tags,omitempty"`
}

// LoadBalancing is the strategy and health check Envoy uses across endpoints.
type LoadBalancing struct {
	Strategy    *string      `json:"strategy,omitempty"`
	HealthCheck *HealthCheck `json:"healthCheck,omitempty"`
}

// HealthCheck of the endpoints.
type HealthCheck struct {
	Path               *string `json:"path,omitempty"`
	Interval           *string `json:"interval,omitempty"`
	Timeout            *string `json:"timeout,omitempty"`
	HealthyThreshold   *int32  `json:"healthyThreshold,omitempty"`
	UnhealthyThreshold *int32  `json:"unhealthyThreshold,omitempty"`
}

// TailscaleServicesList is a list of TailscaleServices.
type TailscaleServicesList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []TailscaleServices `json:"items"`
}

// Deep copies, written out (no code generator for a bench peer).

func clonePtr[T any](p *T) *T {
	if p == nil {
		return nil
	}
	v := *p
	return &v
}

func cloneSlice[T any](s []T) []T {
	if s == nil {
		return nil
	}
	return append([]T(nil), s...)
}

// DeepCopy returns a deep copy.
func (in *TailscaleServices) DeepCopy() *TailscaleServices {
	if in == nil {
		return nil
	}
	out := &TailscaleServices{TypeMeta: in.TypeMeta}
	in.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	out.Spec.Selector = in.Spec.Selector.DeepCopy()
	if v := in.Spec.VIPService; v != nil {
		out.Spec.VIPService = &VIPServiceSpec{Name: clonePtr(v.Name), Ports: cloneSlice(v.Ports), Tags: cloneSlice(v.Tags)}
	}
	if lb := in.Spec.LoadBalancing; lb != nil {
		out.Spec.LoadBalancing = &LoadBalancing{Strategy: clonePtr(lb.Strategy)}
		if hc := lb.HealthCheck; hc != nil {
			out.Spec.LoadBalancing.HealthCheck = &HealthCheck{
				Path: clonePtr(hc.Path), Interval: clonePtr(hc.Interval), Timeout: clonePtr(hc.Timeout),
				HealthyThreshold: clonePtr(hc.HealthyThreshold), UnhealthyThreshold: clonePtr(hc.UnhealthyThreshold),
			}
		}
	}
	return out
}

// DeepCopyObject implements runtime.Object.
func (in *TailscaleServices) DeepCopyObject() runtime.Object { return in.DeepCopy() }

// DeepCopyObject implements runtime.Object.
func (in *TailscaleServicesList) DeepCopyObject() runtime.Object {
	if in == nil {
		return nil
	}
	out := &TailscaleServicesList{TypeMeta: in.TypeMeta}
	in.ListMeta.DeepCopyInto(&out.ListMeta)
	for i := range in.Items {
		out.Items = append(out.Items, *in.Items[i].DeepCopy())
	}
	return out
}
