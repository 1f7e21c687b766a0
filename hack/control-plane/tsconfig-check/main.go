// Command tsconfig-check loads the files tailscale-gateway generates for its Tailscale proxies
// with tailscale.com's own code and types, as the proxies will, and checks what the proxies
// need of them beyond what the types say. It prints one line per file and exits 1 on any problem.
//
//	tsconfig-check tailscaled FILE...  tailscaled config files (cap-N.hujson), loaded by
//	                                   ipn/conffile.Load (the loader tailscaled runs; unknown
//	                                   fields are errors)
//	tsconfig-check env FILE...         a container's env as JSON: [{"name": ..., "value": ...}],
//	                                   against the combinations containerboot refuses
//	                                   (cmd/containerboot/settings.go) or cannot work with
//	tsconfig-check serve FILE...       TS_SERVE_CONFIG: an ipn.ServeConfig serving VIP services only
//	tsconfig-check egress FILE...      the egress-services file in TS_EGRESS_PROXIES_CONFIG_PATH:
//	                                   kube/egressservices.Configs
//	tsconfig-check ingress FILE...     TS_INGRESS_PROXIES_CONFIG_PATH: kube/ingressservices.Configs
//
// serve, egress and ingress decode strictly: a field the type does not have is an error
// (containerboot itself would silently drop it).
package main

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"

	"tailscale.com/ipn"
	"tailscale.com/ipn/conffile"
	"tailscale.com/kube/egressservices"
	"tailscale.com/kube/ingressservices"
	"tailscale.com/net/tsaddr"
	"tailscale.com/tailcfg"
	"tailscale.com/util/dnsname"
)

var kinds = map[string]func(string) error{
	"tailscaled": checkTailscaled,
	"env":        checkEnv,
	"serve":      checkServe,
	"egress":     checkEgress,
	"ingress":    checkIngress,
}

func main() {
	names := strings.Join(slices.Sorted(maps.Keys(kinds)), "|")
	if len(os.Args) < 3 {
		fmt.Fprintf(os.Stderr, "usage: tsconfig-check %s FILE...\n", names)
		os.Exit(2)
	}
	check := kinds[os.Args[1]]
	if check == nil {
		fmt.Fprintf(os.Stderr, "tsconfig-check: unknown kind %q: want one of %s\n", os.Args[1], names)
		os.Exit(2)
	}
	failed := false
	for _, path := range os.Args[2:] {
		if err := check(path); err != nil {
			fmt.Printf("%s: error: %v\n", path, err)
			failed = true
			continue
		}
		fmt.Printf("%s: ok\n", path)
	}
	if failed {
		os.Exit(1)
	}
}

// readStrict decodes the JSON file at path into v, refusing fields v's type does not have.
func readStrict(path string, v any) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return decodeStrict(raw, v)
}

// decodeStrict decodes one JSON value into v, refusing unknown fields and trailing data.
func decodeStrict(raw []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return errors.New("empty: want a JSON value")
		}
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("trailing data after the JSON value")
	}
	return nil
}

// sortedKeys gives a map's keys in order, so that the first problem reported is always the same.
func sortedKeys[K cmp.Ordered, V any](m map[K]V) []K {
	return slices.Sorted(maps.Keys(m))
}

// countTrue counts how many of bs are true ("exactly one of" rules).
func countTrue(bs ...bool) int {
	n := 0
	for _, b := range bs {
		if b {
			n++
		}
	}
	return n
}

// checkTailscaled loads path as tailscaled does and checks what a proxy needs of it.
func checkTailscaled(path string) error {
	c, err := conffile.Load(path)
	if err != nil {
		return err
	}
	p := c.Parsed
	if p.Hostname == nil || *p.Hostname == "" {
		return fmt.Errorf("no Hostname: the device would be named after the pod's host")
	}
	if !c.WantRunning() {
		return fmt.Errorf("Enabled is false: tailscaled would not connect")
	}
	return nil
}

// --- serve: ipn.ServeConfig (containerboot's TS_SERVE_CONFIG, applied with SetServeConfig) ---

// checkServe checks a serve config that serves only VIP services (ServeConfig.Services).
func checkServe(path string) error {
	var sc ipn.ServeConfig
	if err := readStrict(path, &sc); err != nil {
		return err
	}
	if len(sc.TCP) > 0 || len(sc.Web) > 0 {
		return errors.New("top-level TCP or Web serves the proxy's own device name: the proxies serve only VIP services (Services)")
	}
	if len(sc.AllowFunnel) > 0 {
		return errors.New("AllowFunnel is set: the proxies do not expose VIP services to the internet")
	}
	if len(sc.Foreground) > 0 {
		return errors.New("Foreground is set: it holds the CLI's foreground sessions, not a file's config")
	}
	for _, name := range sortedKeys(sc.Services) {
		if err := checkService(name, sc.Services[name]); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	return nil
}

// checkService checks one VIP service's L4 (TCP) and L7 (Web) handlers.
func checkService(name tailcfg.ServiceName, svc *ipn.ServiceConfig) error {
	if err := name.Validate(); err != nil {
		return err
	}
	if svc == nil {
		return errors.New("null: the service serves nothing")
	}
	// ipnlocal's validateServeConfigUpdate: TUN mode excludes TCP and Web handlers.
	if svc.Tun && (len(svc.TCP) > 0 || len(svc.Web) > 0) {
		return errors.New("Tun is set together with TCP or Web handlers: tailscaled refuses the combination")
	}
	if !svc.Tun && len(svc.TCP) == 0 {
		return errors.New("no TCP ports: the service serves nothing")
	}
	for _, port := range sortedKeys(svc.TCP) {
		if err := checkPortHandler(name, port, svc.TCP[port]); err != nil {
			return fmt.Errorf("TCP port %d: %w", port, err)
		}
	}
	return checkWeb(name, svc.TCP, svc.Web)
}

// checkPortHandler checks that a TCP port is served one way (ipn.TCPPortHandler's exclusivity).
func checkPortHandler(name tailcfg.ServiceName, port uint16, h *ipn.TCPPortHandler) error {
	if port == 0 {
		return errors.New("port 0 is not a port")
	}
	if h == nil {
		return errors.New("null handler")
	}
	if countTrue(h.HTTP, h.HTTPS, h.TCPForward != "") != 1 {
		return errors.New("want exactly one of HTTP, HTTPS, TCPForward")
	}
	if h.TCPForward == "" {
		if h.TerminateTLS != "" || h.ProxyProtocol != 0 {
			return errors.New("TerminateTLS and ProxyProtocol apply only to TCPForward")
		}
		return nil
	}
	if h.ProxyProtocol != 0 && h.ProxyProtocol != 1 && h.ProxyProtocol != 2 {
		return fmt.Errorf("ProxyProtocol %d: want 1 or 2 (or unset)", h.ProxyProtocol)
	}
	if h.TerminateTLS != "" {
		if err := checkVIPHost(name, h.TerminateTLS); err != nil {
			return fmt.Errorf("TerminateTLS: %w", err)
		}
	}
	if err := checkForward(h.TCPForward); err != nil {
		return fmt.Errorf("TCPForward %q: %w", h.TCPForward, err)
	}
	return nil
}

// checkForward checks a TCPForward target: host:port, which tailscaled dials as is.
func checkForward(target string) error {
	if strings.HasPrefix(target, "unix:") {
		return errors.New("a unix socket in the proxy container: want host:port")
	}
	host, port, err := net.SplitHostPort(target)
	if err != nil {
		return fmt.Errorf("want host:port: %w", err)
	}
	if err := checkHost(host); err != nil {
		return err
	}
	return checkPort(port)
}

// checkHost accepts an IP address or a valid DNS host name.
func checkHost(host string) error {
	if _, err := netip.ParseAddr(host); err == nil {
		return nil
	}
	if err := dnsname.ValidHostname(host); err != nil || host == "" {
		return fmt.Errorf("host %q is neither an IP address nor a DNS name", host)
	}
	return nil
}

// checkPort accepts a decimal port in 1..65535.
func checkPort(port string) error {
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return fmt.Errorf("port %q: want 1-65535", port)
	}
	return nil
}

// checkVIPHost checks that host is the service's MagicDNS name, <label>.<tailnet suffix>: the
// only name ipnlocal's webServerConfig looks a VIP service's Web entries up by.
func checkVIPHost(name tailcfg.ServiceName, host string) error {
	label := name.WithoutPrefix()
	suffix, ok := strings.CutPrefix(host, label+".")
	if !ok || dnsname.ValidHostname(suffix) != nil || suffix == "" {
		return fmt.Errorf("%q is not the service's MagicDNS name %s.<tailnet suffix>", host, label)
	}
	return nil
}

// checkWeb checks that every HTTP(S) port has one Web entry under the service's MagicDNS name (one
// name for all), and every Web entry is on such a port (tailscaled never serves the others).
func checkWeb(name tailcfg.ServiceName, tcp map[uint16]*ipn.TCPPortHandler, web map[ipn.HostPort]*ipn.WebServerConfig) error {
	seen := map[uint16]ipn.HostPort{}
	var first ipn.HostPort
	for _, hp := range sortedKeys(web) {
		port, err := checkWebEntry(name, tcp, hp, web[hp])
		if err != nil {
			return fmt.Errorf("Web %q: %w", hp, err)
		}
		if other, dup := seen[port]; dup {
			return fmt.Errorf("Web %q and %q are both on port %d: tailscaled serves only one", other, hp, port)
		}
		if first != "" && webHost(first) != webHost(hp) {
			return fmt.Errorf("Web %q and %q name different hosts: a VIP service has one MagicDNS name", first, hp)
		}
		seen[port], first = hp, cmp.Or(first, hp)
	}
	for _, port := range sortedKeys(tcp) {
		if h := tcp[port]; (h.HTTP || h.HTTPS) && seen[port] == "" {
			return fmt.Errorf("TCP port %d serves HTTP(S) but no Web entry is %s.<tailnet suffix>:%d", port, name.WithoutPrefix(), port)
		}
	}
	return nil
}

// webHost is a Web key's host ("" when the key is no host:port).
func webHost(hp ipn.HostPort) string {
	host, _, _ := net.SplitHostPort(string(hp))
	return host
}

// checkWebEntry checks one Web entry; it returns the entry's port.
func checkWebEntry(name tailcfg.ServiceName, tcp map[uint16]*ipn.TCPPortHandler, hp ipn.HostPort, w *ipn.WebServerConfig) (uint16, error) {
	host, portText, err := net.SplitHostPort(string(hp))
	if err != nil {
		return 0, fmt.Errorf("want host:port: %w", err)
	}
	// tailscaled looks the entry up by net.JoinHostPort(name, port): "0443" would never match.
	port, err := hp.Port()
	if err != nil || port == 0 || portText != strconv.Itoa(int(port)) {
		return 0, errors.New("want a port in 1-65535, in plain decimal")
	}
	if err := checkVIPHost(name, host); err != nil {
		return 0, err
	}
	if h := tcp[port]; h == nil || !(h.HTTP || h.HTTPS) {
		return 0, fmt.Errorf("TCP port %d is not HTTP or HTTPS: the entry would never be served", port)
	}
	return port, checkHandlers(w)
}

// checkHandlers checks a Web entry's handlers, keyed by mount point.
func checkHandlers(w *ipn.WebServerConfig) error {
	if w == nil || len(w.Handlers) == 0 {
		return errors.New("no Handlers")
	}
	for _, mount := range sortedKeys(w.Handlers) {
		if !strings.HasPrefix(mount, "/") {
			return fmt.Errorf("mount point %q: want a path starting with /", mount)
		}
		if err := checkHandler(w.Handlers[mount]); err != nil {
			return fmt.Errorf("handler %q: %w", mount, err)
		}
	}
	return nil
}

// Proxy schemes `tailscale serve` accepts for a web target (cmd/tailscale/cli/serve_v2.go), less
// unix: a socket in the proxy container is no backend of a gateway.
var proxySchemes = []string{"http", "https", "https+insecure"}

// checkHandler checks that a handler does one thing, and that a Proxy target expands as
// `tailscale serve` expands it (ipn.ExpandProxyTargetValue).
func checkHandler(h *ipn.HTTPHandler) error {
	if h == nil {
		return errors.New("null handler")
	}
	if countTrue(h.Path != "", h.Proxy != "", h.Text != "", h.Redirect != "") != 1 {
		return errors.New("want exactly one of Proxy, Redirect, Text")
	}
	if h.Path != "" {
		return errors.New("Path serves the proxy container's own files")
	}
	if h.Proxy == "" {
		return nil
	}
	if _, err := ipn.ExpandProxyTargetValue(h.Proxy, proxySchemes, "http"); err != nil {
		return fmt.Errorf("Proxy %q: %w", h.Proxy, err)
	}
	return nil
}

// --- egress: kube/egressservices.Configs (containerboot's egress proxy firewall rules) ---

// checkEgress checks egress services: each forwards ports on the pod's IP to one tailnet target.
func checkEgress(path string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var cfgs egressservices.Configs
	if err := decodeStrict(raw, &cfgs); err != nil {
		return err
	}
	ports, err := egressPortLists(raw)
	if err != nil {
		return err
	}
	used := map[string]string{} // "tcp/3417" → the service that DNATs it
	for _, name := range sortedKeys(cfgs) {
		if err := checkEgressService(name, cfgs[name], ports[name], used); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	return nil
}

// egressPortLists decodes every service's "ports" list again, strictly: PortMaps' own
// UnmarshalJSON decodes it with plain json.Unmarshal (unknown fields pass) into a set
// (a repeated entry disappears).
func egressPortLists(raw []byte) (map[string][]egressservices.PortMap, error) {
	var cfgs map[string]struct {
		Ports json.RawMessage `json:"ports"`
	}
	if err := json.Unmarshal(raw, &cfgs); err != nil {
		return nil, err
	}
	lists := map[string][]egressservices.PortMap{}
	for name, c := range cfgs {
		var list []egressservices.PortMap
		if len(c.Ports) > 0 {
			if err := decodeStrict(c.Ports, &list); err != nil {
				return nil, fmt.Errorf("%s: ports: %w", name, err)
			}
		}
		lists[name] = list
	}
	return lists, nil
}

// checkEgressService checks one egress service; used collects the match ports of the file.
func checkEgressService(name string, cfg egressservices.Config, ports []egressservices.PortMap, used map[string]string) error {
	if name == "" {
		return errors.New("empty service name: containerboot names its firewall rules after it")
	}
	if err := checkTailnetTarget(cfg.TailnetTarget); err != nil {
		return fmt.Errorf("tailnetTarget: %w", err)
	}
	if err := checkHealthCheckEndpoint(cfg.HealthCheckEndpoint); err != nil {
		return fmt.Errorf("healthCheckEndpoint %q: %w", cfg.HealthCheckEndpoint, err)
	}
	if len(ports) == 0 {
		return errors.New("no ports: the service forwards nothing")
	}
	for _, pm := range ports {
		if err := checkPortMap(pm, used, name); err != nil {
			return fmt.Errorf("ports: %w", err)
		}
	}
	return nil
}

// checkTailnetTarget: exactly one of ip and fqdn (containerboot's tailnetTargetIPsForSvc uses ip
// when set, else resolves fqdn against the netmap's full node names).
func checkTailnetTarget(t egressservices.TailnetTarget) error {
	if countTrue(t.IP != "", t.FQDN != "") != 1 {
		return errors.New("want exactly one of ip and fqdn")
	}
	if t.IP != "" {
		if _, err := netip.ParseAddr(t.IP); err != nil {
			return fmt.Errorf("ip: %w", err)
		}
		return nil
	}
	fqdn := strings.TrimSuffix(t.FQDN, ".")
	if err := dnsname.ValidHostname(fqdn); err != nil {
		return fmt.Errorf("fqdn %q: %w", t.FQDN, err)
	}
	if !strings.Contains(fqdn, ".") {
		return fmt.Errorf("fqdn %q is a bare host name: want the full MagicDNS name", t.FQDN)
	}
	return nil
}

// checkHealthCheckEndpoint: empty, or the http(s) URL containerboot's pre-stop hook GETs.
func checkHealthCheckEndpoint(hep string) error {
	if hep == "" {
		return nil
	}
	u, err := url.Parse(hep)
	if err != nil {
		return err
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return errors.New("want an http:// or https:// URL")
	}
	return nil
}

// checkPortMap checks one port mapping. linuxfw's nftables runner knows only tcp and udp (any
// case), the iptables one hands the protocol to -p: lower case is the spelling both read alike,
// and the one containerboot's status comparison (exact PortMap equality) expects to see again.
func checkPortMap(pm egressservices.PortMap, used map[string]string, name string) error {
	if pm.Protocol != "tcp" && pm.Protocol != "udp" {
		return fmt.Errorf("protocol %q: want tcp or udp", pm.Protocol)
	}
	if pm.MatchPort == 0 || pm.TargetPort == 0 {
		return fmt.Errorf("%s matchPort %d targetPort %d: want both in 1-65535", pm.Protocol, pm.MatchPort, pm.TargetPort)
	}
	key := fmt.Sprintf("%s/%d", pm.Protocol, pm.MatchPort)
	if other, dup := used[key]; dup {
		return fmt.Errorf("%s matchPort %d is used twice (also by %s): the proxy DNATs each match port to one target", pm.Protocol, pm.MatchPort, other)
	}
	used[key] = name
	return nil
}

// --- ingress: kube/ingressservices.Configs (containerboot's ingress proxy DNAT rules) ---

// checkIngress checks ingress services: each DNATs a VIP service's addresses to a cluster IP.
func checkIngress(path string) error {
	var cfgs ingressservices.Configs
	if err := readStrict(path, &cfgs); err != nil {
		return err
	}
	for _, name := range sortedKeys(cfgs) {
		if err := checkIngressService(tailcfg.ServiceName(name), cfgs[name]); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	return nil
}

// checkIngressService checks one VIP service's mappings: at least one, each of its own family.
func checkIngressService(name tailcfg.ServiceName, cfg ingressservices.Config) error {
	if err := name.Validate(); err != nil {
		return err
	}
	if cfg.IPv4Mapping == nil && cfg.IPv6Mapping == nil {
		return errors.New("neither IPv4Mapping nor IPv6Mapping: nothing to forward")
	}
	if err := checkMapping("IPv4Mapping", cfg.IPv4Mapping, netip.Addr.Is4); err != nil {
		return err
	}
	return checkMapping("IPv6Mapping", cfg.IPv6Mapping, func(a netip.Addr) bool { return a.Is6() && !a.Is4In6() })
}

// checkMapping checks that both addresses of a mapping (if any) are set and of the family; the
// service's address is one Tailscale assigns.
func checkMapping(field string, m *ingressservices.Mapping, family func(netip.Addr) bool) error {
	if m == nil {
		return nil
	}
	for _, a := range []struct {
		name string
		addr netip.Addr
	}{{"TailscaleServiceIP", m.TailscaleServiceIP}, {"ClusterIP", m.ClusterIP}} {
		if !a.addr.IsValid() {
			return fmt.Errorf("%s.%s is not set", field, a.name)
		}
		if !family(a.addr) {
			return fmt.Errorf("%s.%s %s is of the wrong address family", field, a.name, a.addr)
		}
	}
	if !tsaddr.IsTailscaleIP(m.TailscaleServiceIP) {
		return fmt.Errorf("%s.TailscaleServiceIP %s is not in a range Tailscale assigns from", field, m.TailscaleServiceIP)
	}
	return nil
}

// --- env: the proxy container's environment against containerboot's contract ---

type envVar struct {
	Name      string          `json:"name"`
	Value     string          `json:"value"`
	ValueFrom json.RawMessage `json:"valueFrom"`
}

// fromPod: the value comes from the pod (a fieldRef, a Secret...) and is unknown here.
func (v envVar) fromPod() bool {
	return len(v.ValueFrom) > 0 && string(v.ValueFrom) != "null"
}

// env is a container's environment by name.
type env map[string]envVar

// has: the variable is in the list, even empty.
func (e env) has(name string) bool {
	_, ok := e[name]
	return ok
}

// set: containerboot's os.Getenv(name) is not empty (a value from the pod counts as set).
func (e env) set(name string) bool {
	v, ok := e[name]
	return ok && (v.Value != "" || v.fromPod())
}

// literal: the value when it is known before the pod runs (not from the pod, no $(VAR) in it).
func (e env) literal(name string) (string, bool) {
	v, ok := e[name]
	if !ok || v.fromPod() || strings.Contains(v.Value, "$(") {
		return "", false
	}
	return v.Value, true
}

// Environment variables containerboot's documentation says must not be set together with
// TS_EXPERIMENTAL_VERSIONED_CONFIG_DIR: the config file says what they would.
var excludedByConfigDir = []string{
	"TS_HOSTNAME", "TS_EXTRA_ARGS", "TS_AUTHKEY", "TS_AUTH_KEY", "TS_CLIENT_ID", "TS_CLIENT_SECRET",
	"TS_ID_TOKEN", "TS_ROUTES", "TS_ACCEPT_DNS", "TS_AUDIENCE",
}

// checkEnv reads a container's env (JSON list) and checks the combinations containerboot refuses.
func checkEnv(path string) error {
	e, err := readEnv(path)
	if err != nil {
		return err
	}
	for _, check := range []func(env) error{
		checkConfigDirEnv, checkBoolEnv, checkUserspaceEnv, checkLocalAddrPortEnv, checkServeEnv, checkProxiesEnv,
	} {
		if err := check(e); err != nil {
			return err
		}
	}
	return nil
}

// readEnv reads a JSON list of env vars; a name twice is an error.
func readEnv(path string) (env, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var vars []envVar
	if err := json.Unmarshal(raw, &vars); err != nil {
		return nil, fmt.Errorf("want a JSON list of env vars: %w", err)
	}
	e := env{}
	for _, v := range vars {
		if e.has(v.Name) {
			return nil, fmt.Errorf("%s is set twice", v.Name)
		}
		e[v.Name] = v
	}
	return e, nil
}

// checkConfigDirEnv: the proxies read their tailscaled config from the versioned config dir and
// keep their state in a Secret.
func checkConfigDirEnv(e env) error {
	if !e.has("TS_EXPERIMENTAL_VERSIONED_CONFIG_DIR") {
		return fmt.Errorf("TS_EXPERIMENTAL_VERSIONED_CONFIG_DIR is not set: the proxies read their config from it")
	}
	for _, name := range excludedByConfigDir {
		if e.has(name) {
			return fmt.Errorf("%s must not be set with TS_EXPERIMENTAL_VERSIONED_CONFIG_DIR", name)
		}
	}
	if !e.set("TS_KUBE_SECRET") {
		return fmt.Errorf("TS_KUBE_SECRET is not set: the proxy would not write its state Secret")
	}
	return nil
}

// Booleans containerboot reads with util/def.Bool, which silently takes the default for anything
// strconv.ParseBool refuses: only the two spellings are let through.
var boolEnv = []string{
	"TS_USERSPACE", "TS_ENABLE_HEALTH_CHECK", "TS_ENABLE_METRICS", "TS_EXPERIMENTAL_SERVICE_AUTO_ADVERTISEMENT",
	"TS_EXPERIMENTAL_CERT_SHARE", "TS_AUTH_ONCE", "TS_EXPERIMENTAL_ENABLE_FORWARDING_OPTIMIZATIONS",
	"EXPERIMENTAL_ALLOW_PROXYING_CLUSTER_TRAFFIC_VIA_INGRESS",
}

func checkBoolEnv(e env) error {
	for _, name := range boolEnv {
		if v, ok := e[name]; ok && v.Value != "true" && v.Value != "false" {
			return fmt.Errorf("%s=%q: want true or false", name, v.Value)
		}
	}
	if e["TS_ENABLE_HEALTH_CHECK"].Value == "true" && e.set("TS_HEALTHCHECK_ADDR_PORT") {
		return fmt.Errorf("TS_HEALTHCHECK_ADDR_PORT is deprecated and refused with TS_ENABLE_HEALTH_CHECK")
	}
	return nil
}

// Variables that need kernel networking (TS_USERSPACE=false; it is true when unset). settings.go
// refuses the targets and the flags (when true) in userspace mode. It does not refuse the egress
// and ingress proxy configs, but their netfilter rules forward between the pod's interface and
// tailscale0, which exists only then (main.go creates /dev/net/tun only without userspace mode).
var (
	kernelOnlyEnv = []string{
		"TS_DEST_IP", "TS_EXPERIMENTAL_DEST_DNS_NAME", "TS_TAILNET_TARGET_IP", "TS_TAILNET_TARGET_FQDN",
		"TS_EGRESS_PROXIES_CONFIG_PATH", "TS_INGRESS_PROXIES_CONFIG_PATH",
	}
	kernelOnlyFlags = []string{
		"EXPERIMENTAL_ALLOW_PROXYING_CLUSTER_TRAFFIC_VIA_INGRESS", "TS_EXPERIMENTAL_ENABLE_FORWARDING_OPTIMIZATIONS",
	}
)

func checkUserspaceEnv(e env) error {
	if e["TS_USERSPACE"].Value == "false" {
		return nil
	}
	for _, name := range kernelOnlyEnv {
		if e.set(name) {
			return fmt.Errorf("%s needs TS_USERSPACE=false (userspace networking is the default)", name)
		}
	}
	for _, name := range kernelOnlyFlags {
		if e[name].Value == "true" {
			return fmt.Errorf("%s=true needs TS_USERSPACE=false (userspace networking is the default)", name)
		}
	}
	return nil
}

// checkLocalAddrPortEnv: settings.go parses TS_LOCAL_ADDR_PORT (default [::]:9002) when metrics,
// health checks or egress proxying serve on it. A value with $(VAR) is expanded by the kubelet.
func checkLocalAddrPortEnv(e env) error {
	if e["TS_ENABLE_METRICS"].Value != "true" && e["TS_ENABLE_HEALTH_CHECK"].Value != "true" &&
		!e.set("TS_EGRESS_PROXIES_CONFIG_PATH") {
		return nil
	}
	v, ok := e.literal("TS_LOCAL_ADDR_PORT")
	if !ok && e.has("TS_LOCAL_ADDR_PORT") {
		return nil
	}
	if _, err := netip.ParseAddrPort(cmp.Or(v, "[::]:9002")); err != nil {
		return fmt.Errorf("TS_LOCAL_ADDR_PORT=%q: %v", v, err)
	}
	return nil
}

// checkServeEnv: TS_SERVE_CONFIG is a file path (containerboot watches its directory), not with
// TS_DEST_IP (main.go's documentation); settings.go's rules for proxying cluster traffic via an
// ingress.
func checkServeEnv(e env) error {
	if v, ok := e.literal("TS_SERVE_CONFIG"); ok && v != "" && !path.IsAbs(v) {
		return fmt.Errorf("TS_SERVE_CONFIG=%q: want an absolute path", v)
	}
	if e.set("TS_SERVE_CONFIG") && e.set("TS_DEST_IP") {
		return errors.New("TS_SERVE_CONFIG cannot be used with TS_DEST_IP")
	}
	if e["EXPERIMENTAL_ALLOW_PROXYING_CLUSTER_TRAFFIC_VIA_INGRESS"].Value == "true" {
		if !e.set("TS_SERVE_CONFIG") {
			return errors.New("EXPERIMENTAL_ALLOW_PROXYING_CLUSTER_TRAFFIC_VIA_INGRESS needs TS_SERVE_CONFIG")
		}
		if !e.set("POD_IP") {
			return errors.New("EXPERIMENTAL_ALLOW_PROXYING_CLUSTER_TRAFFIC_VIA_INGRESS needs POD_IP")
		}
	}
	return nil
}

// checkProxiesEnv checks the egress and ingress proxy configs' paths and what they need: the
// state Secret (required above) and the pod's IPs, which containerboot reads only from POD_IPS
// (not POD_IP). It stamps the firewall status it writes to the Secret with them (egressservices /
// ingressservices Status.PodIPv4/PodIPv6: how a reader tells the status is this pod's), and its
// health check sends them in the Pod-IP header the egress pre-stop drain waits on.
func checkProxiesEnv(e env) error {
	for _, name := range []string{"TS_EGRESS_PROXIES_CONFIG_PATH", "TS_INGRESS_PROXIES_CONFIG_PATH"} {
		if v, ok := e.literal(name); ok && v != "" && !path.IsAbs(v) {
			return fmt.Errorf("%s=%q: want an absolute path", name, v)
		}
		if e.set(name) && !e.set("POD_IPS") {
			return fmt.Errorf("%s needs POD_IPS (from status.podIPs): containerboot stamps its firewall status with the pod's IPs", name)
		}
	}
	// The egress path names a directory: containerboot reads <dir>/egress-services.
	if v, _ := e.literal("TS_EGRESS_PROXIES_CONFIG_PATH"); path.Base(v) == egressservices.KeyEgressServices {
		return fmt.Errorf("TS_EGRESS_PROXIES_CONFIG_PATH=%q: want the directory; containerboot reads %s in it", v, egressservices.KeyEgressServices)
	}
	return checkPodIPs(e)
}

// checkPodIPs: settings.go parses POD_IPS as at most two comma-separated IP addresses.
func checkPodIPs(e env) error {
	v, ok := e.literal("POD_IPS")
	if !ok {
		return nil
	}
	ips := strings.Split(v, ",")
	if len(ips) > 2 {
		return fmt.Errorf("POD_IPS=%q: at most 2 IPs", v)
	}
	for _, ip := range ips {
		if _, err := netip.ParseAddr(ip); err != nil {
			return fmt.Errorf("POD_IPS=%q: %v", v, err)
		}
	}
	return nil
}
