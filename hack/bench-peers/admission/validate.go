package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

// The rules below are those tailscale-gateway's webhook (src/core/validate.rs) applies to the parts
// of a TailscaleServices that the bench's object has: metadata (name, namespace, labels), the
// label selector, the VIP service (name, ports, tags), load balancing (strategy, health check),
// the VIP claim against the other TailscaleServices, the immutable VIP name on UPDATE and the
// empty-selector warning. Name and label syntax use apimachinery's own checks, as a Go author
// would; they accept the same strings as ours.

var strategies = []string{"round-robin", "least-request", "random", "ring-hash", "maglev"}

const maxList = 64

// Claims maps a VIP service name to the TailscaleServices ("namespace/name") claiming it: the
// stand-in for the informer-fed index a Go operator would keep (empty in the bench, as no other
// object claims the bench's VIP name; the lookup is what costs).
type Claims struct {
	mu     sync.RWMutex
	byName map[string][]string
}

// NewClaims returns an empty index.
func NewClaims() *Claims { return &Claims{byName: map[string][]string{}} }

func (c *Claims) claimants(vip string) []string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return append([]string(nil), c.byName[vip]...)
}

// ServicesValidator validates TailscaleServices.
type ServicesValidator struct{ claims *Claims }

var _ admission.Validator[*TailscaleServices] = &ServicesValidator{}

// ValidateCreate validates a new object.
func (v *ServicesValidator) ValidateCreate(_ context.Context, s *TailscaleServices) (admission.Warnings, error) {
	return v.review(s, nil)
}

// ValidateUpdate validates a change, the VIP name being immutable.
func (v *ServicesValidator) ValidateUpdate(_ context.Context, old, s *TailscaleServices) (admission.Warnings, error) {
	return v.review(s, old)
}

// ValidateDelete accepts every deletion.
func (v *ServicesValidator) ValidateDelete(context.Context, *TailscaleServices) (admission.Warnings, error) {
	return nil, nil
}

func (v *ServicesValidator) review(s *TailscaleServices, old *TailscaleServices) (admission.Warnings, error) {
	var errs field.ErrorList
	var warnings admission.Warnings
	errs = append(errs, validateMeta(&s.ObjectMeta)...)
	spec := field.NewPath("spec")
	errs = append(errs, validateSpec(&s.Spec, spec)...)

	namePath := spec.Child("vipService", "name")
	vip, ok := vipServiceName(s)
	if !ok {
		errs = append(errs, field.Required(namePath, fmt.Sprintf(
			"metadata.name %q is not a DNS label, so it cannot name the VIP service: set spec.vipService.name to \"svc:NAME\"", s.Name)))
	} else {
		me := s.Namespace + "/" + s.Name
		var others []string
		for _, k := range v.claims.claimants(vip) {
			if k != me {
				others = append(others, k)
			}
		}
		if len(others) > 0 {
			errs = append(errs, field.Duplicate(namePath, vip))
		}
	}
	if old != nil {
		if before, ok := vipServiceName(old); ok && before != vip {
			errs = append(errs, field.Invalid(namePath, vip, fmt.Sprintf(
				"field is immutable: this TailscaleServices owns VIP service %q", before)))
		}
	}
	if sel := s.Spec.Selector; sel != nil && len(sel.MatchLabels) == 0 && len(sel.MatchExpressions) == 0 {
		warnings = append(warnings, "spec.selector is empty and selects every TailscaleEndpoints in the namespace")
	}
	if len(errs) > 0 {
		return warnings, apierrors.NewInvalid(GroupVersion.WithKind("TailscaleServices").GroupKind(), s.Name, errs)
	}
	return warnings, nil
}

// vipServiceName is spec.vipService.name, else "svc:" + metadata.name when that is a DNS label.
func vipServiceName(s *TailscaleServices) (string, bool) {
	if s.Spec.VIPService != nil && s.Spec.VIPService.Name != nil {
		return *s.Spec.VIPService.Name, true
	}
	if len(validation.IsDNS1123Label(s.Name)) > 0 {
		return "", false
	}
	return "svc:" + s.Name, true
}

func validateMeta(m *metav1.ObjectMeta) field.ErrorList {
	var errs field.ErrorList
	p := field.NewPath("metadata")
	switch {
	case m.Name != "":
		for _, e := range validation.IsDNS1123Subdomain(m.Name) {
			errs = append(errs, field.Invalid(p.Child("name"), m.Name, e))
		}
	case m.GenerateName != "":
	default:
		errs = append(errs, field.Required(p.Child("name"), "name or generateName is required"))
	}
	if m.Namespace != "" {
		for _, e := range validation.IsDNS1123Label(m.Namespace) {
			errs = append(errs, field.Invalid(p.Child("namespace"), m.Namespace, e))
		}
	}
	return append(errs, validateLabels(m.Labels, p.Child("labels"))...)
}

func validateLabels(labels map[string]string, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	for k, v := range labels {
		for _, e := range validation.IsQualifiedName(k) {
			errs = append(errs, field.Invalid(p, k, e))
		}
		for _, e := range validation.IsValidLabelValue(v) {
			errs = append(errs, field.Invalid(p.Key(k), v, e))
		}
	}
	return errs
}

func validateSelector(sel *metav1.LabelSelector, p *field.Path) field.ErrorList {
	errs := validateLabels(sel.MatchLabels, p.Child("matchLabels"))
	for i, expr := range sel.MatchExpressions {
		ep := p.Child("matchExpressions").Index(i)
		for _, e := range validation.IsQualifiedName(expr.Key) {
			errs = append(errs, field.Invalid(ep.Child("key"), expr.Key, e))
		}
		for j, v := range expr.Values {
			for _, e := range validation.IsValidLabelValue(v) {
				errs = append(errs, field.Invalid(ep.Child("values").Index(j), v, e))
			}
		}
		switch expr.Operator {
		case metav1.LabelSelectorOpIn, metav1.LabelSelectorOpNotIn:
			if len(expr.Values) == 0 {
				errs = append(errs, field.Required(ep.Child("values"), "must be non-empty when operator is "+string(expr.Operator)))
			}
		case metav1.LabelSelectorOpExists, metav1.LabelSelectorOpDoesNotExist:
			if len(expr.Values) > 0 {
				errs = append(errs, field.Forbidden(ep.Child("values"), "may not be specified when operator is "+string(expr.Operator)))
			}
		default:
			errs = append(errs, field.NotSupported(ep.Child("operator"), expr.Operator,
				[]metav1.LabelSelectorOperator{"In", "NotIn", "Exists", "DoesNotExist"}))
		}
	}
	return errs
}

func validateSpec(s *TailscaleServicesSpec, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	if s.Selector != nil {
		errs = append(errs, validateSelector(s.Selector, p.Child("selector"))...)
	} else {
		errs = append(errs, field.Required(p.Child("selector"), "a label selector for TailscaleEndpoints is required"))
	}
	if s.VIPService != nil {
		errs = append(errs, validateVIPService(s.VIPService, p.Child("vipService"))...)
	} else {
		errs = append(errs, field.Required(p.Child("vipService", "ports"), "list the ports the VIP service accepts"))
	}
	if lb := s.LoadBalancing; lb != nil {
		lp := p.Child("loadBalancing")
		if lb.Strategy != nil && !slices.Contains(strategies, *lb.Strategy) {
			errs = append(errs, field.NotSupported(lp.Child("strategy"), *lb.Strategy, strategies))
		}
		if lb.HealthCheck != nil {
			errs = append(errs, validateHealthCheck(lb.HealthCheck, lp.Child("healthCheck"))...)
		}
	}
	return errs
}

func validateVIPService(v *VIPServiceSpec, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	if v.Name != nil {
		label, ok := strings.CutPrefix(*v.Name, "svc:")
		if !ok || len(validation.IsDNS1123Label(label)) > 0 {
			errs = append(errs, field.Invalid(p.Child("name"), *v.Name, "want \"svc:NAME\" where NAME is a DNS label"))
		}
	}
	pp := p.Child("ports")
	if len(v.Ports) == 0 {
		errs = append(errs, field.Required(pp, "list the ports the VIP service accepts, e.g. [\"tcp:443\"]"))
	}
	if len(v.Ports) > maxList {
		errs = append(errs, field.TooMany(pp, len(v.Ports), maxList))
	}
	var parsed []vipPort
	for i, s := range v.Ports {
		port, err := parseVIPPort(s)
		if err != nil {
			errs = append(errs, field.Invalid(pp.Index(i), s, err.Error()))
			continue
		}
		for j, q := range parsed {
			if q.overlaps(port) {
				errs = append(errs, field.Duplicate(pp.Index(i), fmt.Sprintf("%s overlaps %q at index %d", s, v.Ports[j], j)))
				break
			}
		}
		parsed = append(parsed, port)
	}
	return append(errs, validateTags(v.Tags, p.Child("tags"))...)
}

func validateTags(tags []string, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	if len(tags) > maxList {
		errs = append(errs, field.TooMany(p, len(tags), maxList))
	}
	seen := make(map[string]struct{}, len(tags))
	for i, t := range tags {
		if !isTag(t) {
			errs = append(errs, field.Invalid(p.Index(i), t, "want \"tag:NAME\" where NAME starts with a letter and holds only letters, digits and '-'"))
		} else if _, dup := seen[t]; dup {
			errs = append(errs, field.Duplicate(p.Index(i), t))
		} else {
			seen[t] = struct{}{}
		}
	}
	return errs
}

func isTag(s string) bool {
	name, ok := strings.CutPrefix(s, "tag:")
	if !ok || name == "" || len(name) > 63 || !isLetter(name[0]) {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; !isLetter(c) && !(c >= '0' && c <= '9') && c != '-' {
			return false
		}
	}
	return true
}

func isLetter(c byte) bool { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') }

type vipPort struct {
	udp      bool
	from, to int
}

func (a vipPort) overlaps(b vipPort) bool { return a.udp == b.udp && a.from <= b.to && b.from <= a.to }

const vipPortWant = "want \"tcp:PORT\", \"udp:PORT\" or \"tcp:FROM-TO\" with 1 <= PORT <= 65535 and FROM <= TO"

func parseVIPPort(s string) (vipPort, error) {
	var p vipPort
	rest, ok := strings.CutPrefix(s, "tcp:")
	if !ok {
		if rest, ok = strings.CutPrefix(s, "udp:"); !ok {
			return p, fmt.Errorf(vipPortWant)
		}
		p.udp = true
	}
	num := func(s string) (int, error) {
		for i := 0; i < len(s); i++ {
			if s[i] < '0' || s[i] > '9' {
				return 0, fmt.Errorf(vipPortWant)
			}
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 65535 {
			return 0, fmt.Errorf(vipPortWant)
		}
		return n, nil
	}
	var err error
	if a, b, isRange := strings.Cut(rest, "-"); isRange {
		if p.udp {
			return p, fmt.Errorf("port ranges are only supported for tcp: want \"udp:PORT\"")
		}
		if p.from, err = num(a); err != nil {
			return p, err
		}
		if p.to, err = num(b); err != nil {
			return p, err
		}
	} else {
		if p.from, err = num(rest); err != nil {
			return p, err
		}
		p.to = p.from
	}
	if p.from > p.to {
		return p, fmt.Errorf(vipPortWant)
	}
	return p, nil
}

func validateHealthCheck(hc *HealthCheck, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	if hc.Path != nil && (!strings.HasPrefix(*hc.Path, "/") || strings.IndexFunc(*hc.Path, unicode.IsSpace) >= 0) {
		errs = append(errs, field.Invalid(p.Child("path"), *hc.Path, "want an HTTP path starting with \"/\", e.g. \"/health\""))
	}
	for _, f := range [...]struct {
		name string
		d    *string
	}{{"interval", hc.Interval}, {"timeout", hc.Timeout}} {
		name, d := f.name, f.d
		if d == nil {
			continue
		}
		if v, err := time.ParseDuration(*d); err != nil {
			errs = append(errs, field.Invalid(p.Child(name), *d, "want a duration such as \"10s\" or \"1m30s\": "+err.Error()))
		} else if v < time.Second {
			errs = append(errs, field.Invalid(p.Child(name), *d, "want a duration of at least 1s, e.g. \"10s\""))
		}
	}
	for _, f := range [...]struct {
		name string
		n    *int32
	}{{"healthyThreshold", hc.HealthyThreshold}, {"unhealthyThreshold", hc.UnhealthyThreshold}} {
		name, n := f.name, f.n
		if n != nil && (*n < 1 || *n > 100) {
			errs = append(errs, field.Invalid(p.Child(name), *n, "want 1 to 100"))
		}
	}
	return errs
}
