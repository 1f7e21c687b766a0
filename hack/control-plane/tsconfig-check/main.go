// Command tsconfig-check loads the files tailscale-gateway generates for its Tailscale proxies
// with tailscale.com's own code, as the proxies will: a tailscaled config file through
// ipn/conffile.Load (the loader tailscaled runs; unknown fields are errors), and the proxy
// container's environment against the contract containerboot documents for
// TS_EXPERIMENTAL_VERSIONED_CONFIG_DIR. It prints one line per file and exits 1 on any problem.
//
//	tsconfig-check tailscaled FILE...    tailscaled config files (cap-N.hujson)
//	tsconfig-check env FILE...           a container's env as JSON: [{"name": ..., "value": ...}]
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"tailscale.com/ipn/conffile"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: tsconfig-check tailscaled|env FILE...")
		os.Exit(2)
	}
	check := map[string]func(string) error{"tailscaled": checkTailscaled, "env": checkEnv}[os.Args[1]]
	if check == nil {
		fmt.Fprintf(os.Stderr, "tsconfig-check: unknown kind %q: want tailscaled or env\n", os.Args[1])
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

type envVar struct {
	Name      string          `json:"name"`
	Value     string          `json:"value"`
	ValueFrom json.RawMessage `json:"valueFrom"`
}

// Environment variables containerboot's documentation says must not be set together with
// TS_EXPERIMENTAL_VERSIONED_CONFIG_DIR: the config file says what they would.
var excludedByConfigDir = []string{
	"TS_HOSTNAME", "TS_EXTRA_ARGS", "TS_AUTHKEY", "TS_AUTH_KEY", "TS_CLIENT_ID", "TS_CLIENT_SECRET",
	"TS_ID_TOKEN", "TS_ROUTES", "TS_ACCEPT_DNS", "TS_AUDIENCE",
}

// checkEnv reads a container's env (JSON list) and checks the combinations containerboot refuses.
func checkEnv(path string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var vars []envVar
	if err := json.Unmarshal(raw, &vars); err != nil {
		return fmt.Errorf("want a JSON list of env vars: %w", err)
	}
	set := map[string]string{}
	for _, v := range vars {
		if _, dup := set[v.Name]; dup {
			return fmt.Errorf("%s is set twice", v.Name)
		}
		set[v.Name] = v.Value
	}
	if _, ok := set["TS_EXPERIMENTAL_VERSIONED_CONFIG_DIR"]; !ok {
		return fmt.Errorf("TS_EXPERIMENTAL_VERSIONED_CONFIG_DIR is not set: the proxies read their config from it")
	}
	for _, name := range excludedByConfigDir {
		if _, ok := set[name]; ok {
			return fmt.Errorf("%s must not be set with TS_EXPERIMENTAL_VERSIONED_CONFIG_DIR", name)
		}
	}
	if set["TS_KUBE_SECRET"] == "" {
		return fmt.Errorf("TS_KUBE_SECRET is not set: the proxy would not write its state Secret")
	}
	for _, name := range []string{"TS_USERSPACE", "TS_ENABLE_HEALTH_CHECK", "TS_ENABLE_METRICS"} {
		if v, ok := set[name]; ok && v != "true" && v != "false" {
			return fmt.Errorf("%s=%q: want true or false", name, v)
		}
	}
	if set["TS_ENABLE_HEALTH_CHECK"] == "true" && set["TS_HEALTHCHECK_ADDR_PORT"] != "" {
		return fmt.Errorf("TS_HEALTHCHECK_ADDR_PORT is deprecated and refused with TS_ENABLE_HEALTH_CHECK")
	}
	return nil
}
