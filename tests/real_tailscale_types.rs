//! What the reconciler generates for the Tailscale proxies, loaded by tailscale.com's own code:
//! every example's tailscaled config files through `ipn/conffile.Load` (the loader tailscaled runs,
//! unknown fields refused), and the proxy container's environment against containerboot's contract
//! (hack/control-plane/tsconfig-check). The checker's other kinds (serve config, egress and ingress
//! proxy configs, and the env rules for them) are pinned here on hand-written samples: the shapes
//! the builders emit pass, and each rule refuses its mistake. Ignored in plain `cargo test`:
//! `hack/test.sh` builds the checker with the pinned tailscale.com and runs these.

mod util;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

/// What `render examples/` prints.
fn rendered() -> Vec<Value> {
    let examples = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/examples"));
    let loaded = tailscale_gateway::manifest::load(&[examples], "default");
    assert!(!loaded.has_errors(), "{:?}", loaded.problems);
    let resources: Vec<_> = loaded.resources.into_iter().map(|(_, r)| r).collect();
    tailscale_gateway::render::render(&resources, &Default::default())
}

/// Runs the checker on files of `kind`; its exit status and output.
fn check(kind: &str, files: &[PathBuf]) -> (bool, String) {
    let checker = util::cluster::binary("tsconfig-check", "TAILSCALE_VERSION");
    let out = Command::new(checker).arg(kind).args(files).output().expect("running tsconfig-check");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("writing a file for the checker");
    path
}

#[test]
#[ignore = "needs hack/control-plane.sh's tsconfig-check: run hack/test.sh"]
fn every_generated_tailscaled_config_loads_with_tailscaleds_own_loader() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut files = Vec::new();
    for secret in rendered().iter().filter(|o| o["kind"] == "Secret") {
        for (key, text) in secret["stringData"].as_object().into_iter().flatten() {
            if key.ends_with(".hujson") {
                let name = format!("{}-{key}", secret["metadata"]["name"].as_str().unwrap_or_default());
                files.push(write(dir.path(), &name, text.as_str().unwrap_or_default()));
            }
        }
    }
    assert!(files.len() >= 5, "one config per replica of every example: {files:?}");
    let (ok, out) = check("tailscaled", &files);
    assert!(ok, "{out}");
    assert_eq!(out.lines().filter(|l| l.ends_with(": ok")).count(), files.len(), "{out}");
    // The loader is strict: a field tailscaled does not know is refused.
    let typo = write(dir.path(), "typo.hujson", r#"{"Version": "alpha0", "Hostname": "a", "AuthKye": "k"}"#);
    let (ok, out) = check("tailscaled", &[typo]);
    assert!(!ok && out.contains("AuthKye"), "{out}");
}

#[test]
#[ignore = "needs hack/control-plane.sh's tsconfig-check: run hack/test.sh"]
fn every_generated_serve_and_egress_config_decodes_with_tailscales_own_types() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut serve, mut egress) = (Vec::new(), Vec::new());
    let mut served_vips = Vec::new();
    let mut egress_targets = 0;
    for cm in rendered().iter().filter(|o| o["kind"] == "ConfigMap") {
        let name = cm["metadata"]["name"].as_str().unwrap_or_default().to_string();
        if let Some(text) = cm["data"]["serve-config.json"].as_str() {
            let config: Value = serde_json::from_str(text).expect("serve config is JSON");
            served_vips.extend(config["Services"].as_object().into_iter().flatten().map(|(k, _)| k.clone()));
            serve.push(write(dir.path(), &format!("{name}-serve.json"), text));
        }
        if let Some(text) = cm["data"]["egress-services"].as_str() {
            let config: Value = serde_json::from_str(text).expect("egress config is JSON");
            egress_targets += config.as_object().map_or(0, |m| m.len());
            egress.push(write(dir.path(), &format!("{name}-egress.json"), text));
        }
    }
    served_vips.sort();
    assert_eq!(
        served_vips,
        ["svc:api-service", "svc:eg", "svc:web-service", "svc:web-staging"],
        "every example VIP is served by its ingress proxies"
    );
    assert!(egress_targets >= 1, "the egress example forwards to the web VIP");
    let caps =
        serve.iter().filter(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains("\"AcceptAppCaps\""))).count();
    assert!(caps >= 1, "the example route policy's capability is passed on by some web handler");
    let (ok, out) = check("serve", &serve);
    assert!(ok, "{out}");
    assert_eq!(out.lines().filter(|l| l.ends_with(": ok")).count(), serve.len(), "{out}");
    let (ok, out) = check("egress", &egress);
    assert!(ok, "{out}");
    assert_eq!(out.lines().filter(|l| l.ends_with(": ok")).count(), egress.len(), "{out}");
}

#[test]
#[ignore = "needs hack/control-plane.sh's tsconfig-check: run hack/test.sh"]
fn every_proxy_container_env_keeps_containerboots_contract() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut files = Vec::new();
    for sts in rendered().iter().filter(|o| o["kind"] == "StatefulSet") {
        for c in sts["spec"]["template"]["spec"]["containers"].as_array().into_iter().flatten() {
            let name = format!(
                "{}-{}.json",
                sts["metadata"]["name"].as_str().unwrap_or_default(),
                c["name"].as_str().unwrap_or_default()
            );
            files.push(write(dir.path(), &name, &c["env"].to_string()));
        }
    }
    assert!(files.len() >= 3, "{files:?}");
    let (ok, out) = check("env", &files);
    assert!(ok, "{out}");
    // And the contract is checked: an auth key in env next to the config dir is refused.
    let both = write(
        dir.path(),
        "both.json",
        r#"[{"name": "TS_EXPERIMENTAL_VERSIONED_CONFIG_DIR", "value": "/etc/tsconfig/p"},
            {"name": "TS_KUBE_SECRET", "value": "p"}, {"name": "TS_AUTHKEY", "value": "k"}]"#,
    );
    let (ok, out) = check("env", &[both]);
    assert!(!ok && out.contains("TS_AUTHKEY must not be set"), "{out}");
}

/// Runs the checker on samples of `kind`, each `(name, JSON, verdict)`: `None` wants `FILE: ok`,
/// `Some(phrase)` wants `FILE: error: ...` containing the phrase. The exit status fails iff one does.
fn assert_verdicts(kind: &str, samples: &[(&str, &str, Option<&str>)]) {
    let dir = tempfile::tempdir().expect("temp dir");
    let files: Vec<_> =
        samples.iter().map(|(name, text, _)| write(dir.path(), &format!("{name}.json"), text)).collect();
    let (ok, out) = check(kind, &files);
    for ((name, _, want), file) in samples.iter().zip(&files) {
        let prefix = format!("{}: ", file.display());
        let line =
            out.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no verdict on {name}: {out}"));
        let verdict = &line[prefix.len()..];
        match want {
            None => assert_eq!(verdict, "ok", "{kind} {name}"),
            Some(phrase) => assert!(
                verdict.starts_with("error: ") && verdict.contains(phrase),
                "{kind} {name}: want an error with {phrase:?}, got {verdict:?}"
            ),
        }
    }
    assert_eq!(ok, samples.iter().all(|(_, _, want)| want.is_none()), "exit status: {out}");
}

/// The serve config the builders emit for a VIP service: HTTPS on 443, a TCP port forwarded.
const SERVE: &str = r#"{"Services":{"svc:web-service":{"TCP":{"443":{"HTTPS":true},"5432":{"TCPForward":"db.default.svc.cluster.local:5432"}},"Web":{"web-service.tail1234.ts.net:443":{"Handlers":{"/":{"Proxy":"http://web.default.svc.cluster.local:8080"}}}}}}}"#;

#[test]
#[ignore = "needs hack/control-plane.sh's tsconfig-check: run hack/test.sh"]
fn serve_configs_serve_vip_services_only_with_handlers_tailscaled_can_use() {
    let https = |web: &str| {
        format!(r#"{{"Services":{{"svc:web-service":{{"TCP":{{"443":{{"HTTPS":true}}}},"Web":{{{web}}}}}}}}}"#)
    };
    let proxy = |target: &str| {
        https(&format!(r#""web-service.tail1234.ts.net:443":{{"Handlers":{{"/":{{"Proxy":"{target}"}}}}}}"#))
    };
    let forward =
        |target: &str| format!(r#"{{"Services":{{"svc:db":{{"TCP":{{"5432":{{"TCPForward":"{target}"}}}}}}}}}}"#);
    assert_verdicts(
        "serve",
        &[
            ("builders", SERVE, None),
            (
                "http-and-insecure-upstreams",
                &https(
                    r#""web-service.tail1234.ts.net:443":{"Handlers":{"/":{"Proxy":"https+insecure://10.0.0.1:8443"},"/api/":{"Proxy":"https://api.default.svc:443"}}}"#,
                ),
                None,
            ),
            ("forward-to-ip", &forward("[fd00::1]:5432"), None),
            ("empty", "{}", None),
            ("unknown-field", &forward(r#"db:5432","TCPForwrd":"x"#), Some(r#"unknown field "TCPForwrd""#)),
            (
                "name-without-svc",
                r#"{"Services":{"web-service":{"TCP":{"443":{"HTTPS":true}}}}}"#,
                Some("must start with 'svc:'"),
            ),
            (
                "name-not-a-label",
                r#"{"Services":{"svc:web_service":{"TCP":{"443":{"HTTPS":true}}}}}"#,
                Some("not a valid DNS label"),
            ),
            (
                "https-and-forward",
                r#"{"Services":{"svc:db":{"TCP":{"443":{"HTTPS":true,"TCPForward":"db:443"}}}}}"#,
                Some("want exactly one of HTTP, HTTPS, TCPForward"),
            ),
            (
                "no-handler-kind",
                r#"{"Services":{"svc:db":{"TCP":{"443":{}}}}}"#,
                Some("want exactly one of HTTP, HTTPS, TCPForward"),
            ),
            ("no-ports", r#"{"Services":{"svc:db":{}}}"#, Some("no TCP ports")),
            (
                "https-without-web",
                r#"{"Services":{"svc:web-service":{"TCP":{"443":{"HTTPS":true}}}}}"#,
                Some("TCP port 443 serves HTTP(S) but no Web entry is web-service.<tailnet suffix>:443"),
            ),
            (
                "web-under-other-name",
                &https(r#""other.tail1234.ts.net:443":{"Handlers":{"/":{"Proxy":"http://web:80"}}}"#),
                Some(r#""other.tail1234.ts.net" is not the service's MagicDNS name web-service.<tailnet suffix>"#),
            ),
            (
                "web-under-bare-label",
                &https(r#""web-service:443":{"Handlers":{"/":{"Proxy":"http://web:80"}}}"#),
                Some("is not the service's MagicDNS name"),
            ),
            (
                "web-on-other-port",
                &https(r#""web-service.tail1234.ts.net:8443":{"Handlers":{"/":{"Proxy":"http://web:80"}}}"#),
                Some("TCP port 8443 is not HTTP or HTTPS"),
            ),
            (
                "web-port-not-plain-decimal",
                &https(r#""web-service.tail1234.ts.net:0443":{"Handlers":{"/":{"Proxy":"http://web:80"}}}"#),
                Some("want a port in 1-65535, in plain decimal"),
            ),
            (
                "web-hosts-differ",
                r#"{"Services":{"svc:web-service":{"TCP":{"80":{"HTTP":true},"443":{"HTTPS":true}},"Web":{"web-service.tail1234.ts.net:443":{"Handlers":{"/":{"Proxy":"http://web:80"}}},"web-service.tail9999.ts.net:80":{"Handlers":{"/":{"Proxy":"http://web:80"}}}}}}}"#,
                Some("name different hosts"),
            ),
            (
                "http-and-https-ports",
                r#"{"Services":{"svc:web-service":{"TCP":{"80":{"HTTP":true},"443":{"HTTPS":true}},"Web":{"web-service.tail1234.ts.net:443":{"Handlers":{"/":{"Proxy":"http://web:80"}}},"web-service.tail1234.ts.net:80":{"Handlers":{"/":{"Redirect":"301:https://${HOST}${REQUEST_URI}"}}}}}}}"#,
                None,
            ),
            (
                "web-without-handlers",
                &https(r#""web-service.tail1234.ts.net:443":{"Handlers":{}}"#),
                Some("no Handlers"),
            ),
            (
                "proxy-bad-scheme",
                &proxy("ftp://web:21"),
                Some("must be a URL starting with one of the supported schemes"),
            ),
            ("proxy-remote-without-scheme", &proxy("web.default.svc:8080"), Some("must include a scheme")),
            ("proxy-unix-socket", &proxy("unix:/tmp/app.sock"), Some("unix sockets are not supported")),
            (
                "path-handler",
                &https(r#""web-service.tail1234.ts.net:443":{"Handlers":{"/":{"Path":"/etc"}}}"#),
                Some("Path serves the proxy container's own files"),
            ),
            ("forward-without-port", &forward("db.default.svc"), Some("want host:port")),
            ("forward-port-zero", &forward("db:0"), Some(r#"port "0": want 1-65535"#)),
            ("forward-unix-socket", &forward("unix:/tmp/db.sock"), Some("a unix socket")),
            ("top-level-tcp", r#"{"TCP":{"443":{"HTTPS":true}}}"#, Some("top-level TCP or Web")),
            ("funnel", r#"{"AllowFunnel":{"web-service.tail1234.ts.net:443":true}}"#, Some("AllowFunnel is set")),
            (
                "tun-with-tcp",
                r#"{"Services":{"svc:db":{"Tun":true,"TCP":{"5432":{"TCPForward":"db:5432"}}}}}"#,
                Some("Tun is set together with TCP or Web"),
            ),
            ("trailing-data", &format!("{SERVE} {{}}"), Some("trailing data")),
        ],
    );
}

/// The egress proxy config the builders emit: one tailnet target by MagicDNS name, one port.
const EGRESS: &str = r#"{"default-web-service":{"healthCheckEndpoint":"","tailnetTarget":{"ip":"","fqdn":"web-service.tail1234.ts.net"},"ports":[{"protocol":"tcp","matchPort":3417,"targetPort":443}]}}"#;

#[test]
#[ignore = "needs hack/control-plane.sh's tsconfig-check: run hack/test.sh"]
fn egress_configs_name_one_tailnet_target_and_distinct_match_ports() {
    let target = |ip: &str, fqdn: &str| {
        format!(
            r#"{{"svc":{{"healthCheckEndpoint":"","tailnetTarget":{{"ip":"{ip}","fqdn":"{fqdn}"}},"ports":[{{"protocol":"tcp","matchPort":3417,"targetPort":443}}]}}}}"#
        )
    };
    let ports = |ports: &str| format!(r#"{{"svc":{{"tailnetTarget":{{"ip":"100.64.0.1"}},"ports":{ports}}}}}"#);
    assert_verdicts(
        "egress",
        &[
            ("builders", EGRESS, None),
            ("by-ip", &target("fd7a:115c:a1e0::1", ""), None),
            (
                "tcp-and-udp-on-one-port",
                &ports(
                    r#"[{"protocol":"tcp","matchPort":53,"targetPort":53},{"protocol":"udp","matchPort":53,"targetPort":53}]"#,
                ),
                None,
            ),
            (
                "health-check-endpoint",
                r#"{"svc":{"healthCheckEndpoint":"http://svc-hep.default.svc:9002/healthz","tailnetTarget":{"ip":"100.64.0.1"},"ports":[{"protocol":"tcp","matchPort":80,"targetPort":80}]}}"#,
                None,
            ),
            ("empty", "{}", None),
            (
                "ip-and-fqdn",
                &target("100.64.0.1", "web-service.tail1234.ts.net"),
                Some("want exactly one of ip and fqdn"),
            ),
            ("no-target", &target("", ""), Some("want exactly one of ip and fqdn")),
            ("bad-ip", &target("100.64.0.300", ""), Some("tailnetTarget: ip: ")),
            ("bad-fqdn", &target("", "web_service.tail1234.ts.net"), Some(r#"fqdn "web_service.tail1234.ts.net""#)),
            ("bare-host-fqdn", &target("", "web-service"), Some("is a bare host name")),
            ("no-ports", &ports("[]"), Some("no ports")),
            ("null-ports", &ports("null"), Some("no ports")),
            (
                "ports-as-object",
                &ports(r#"{"protocol":"tcp","matchPort":1,"targetPort":1}"#),
                Some("cannot unmarshal object"),
            ),
            (
                "sctp",
                &ports(r#"[{"protocol":"sctp","matchPort":1,"targetPort":1}]"#),
                Some(r#"protocol "sctp": want tcp or udp"#),
            ),
            (
                "upper-case-protocol",
                &ports(r#"[{"protocol":"TCP","matchPort":1,"targetPort":1}]"#),
                Some(r#"protocol "TCP": want tcp or udp"#),
            ),
            ("no-protocol", &ports(r#"[{"matchPort":1,"targetPort":1}]"#), Some(r#"protocol "": want tcp or udp"#)),
            (
                "match-port-zero",
                &ports(r#"[{"protocol":"tcp","matchPort":0,"targetPort":443}]"#),
                Some("want both in 1-65535"),
            ),
            ("no-target-port", &ports(r#"[{"protocol":"udp","matchPort":53}]"#), Some("want both in 1-65535")),
            (
                "port-too-big",
                &ports(r#"[{"protocol":"tcp","matchPort":70000,"targetPort":443}]"#),
                Some("cannot unmarshal number 70000"),
            ),
            // PortMaps' own unmarshaler decodes the list leniently: the checker decodes it again, strictly.
            (
                "unknown-port-field",
                &ports(r#"[{"protocol":"tcp","matchPort":1,"targetPort":1,"targetIP":"x"}]"#),
                Some(r#"unknown field "targetIP""#),
            ),
            (
                "unknown-field",
                r#"{"svc":{"tailnetTarget":{"ip":"100.64.0.1","port":1},"ports":[]}}"#,
                Some(r#"unknown field "port""#),
            ),
            (
                "match-port-twice-in-a-service",
                &ports(
                    r#"[{"protocol":"tcp","matchPort":80,"targetPort":80},{"protocol":"tcp","matchPort":80,"targetPort":8080}]"#,
                ),
                Some("tcp matchPort 80 is used twice"),
            ),
            (
                "repeated-entry",
                &ports(
                    r#"[{"protocol":"udp","matchPort":53,"targetPort":53},{"protocol":"udp","matchPort":53,"targetPort":53}]"#,
                ),
                Some("udp matchPort 53 is used twice"),
            ),
            (
                "match-port-in-two-services",
                r#"{"a":{"tailnetTarget":{"ip":"100.64.0.1"},"ports":[{"protocol":"tcp","matchPort":3417,"targetPort":443}]},"b":{"tailnetTarget":{"ip":"100.64.0.2"},"ports":[{"protocol":"tcp","matchPort":3417,"targetPort":80}]}}"#,
                Some("tcp matchPort 3417 is used twice (also by a)"),
            ),
            (
                "health-check-endpoint-not-a-url",
                r#"{"svc":{"healthCheckEndpoint":"svc-hep:9002","tailnetTarget":{"ip":"100.64.0.1"},"ports":[{"protocol":"tcp","matchPort":80,"targetPort":80}]}}"#,
                Some("healthCheckEndpoint"),
            ),
        ],
    );
}

/// The ingress proxy config the builders emit: a VIP service's IPv4 address to a ClusterIP.
const INGRESS: &str =
    r#"{"svc:web-service":{"IPv4Mapping":{"TailscaleServiceIP":"100.100.1.2","ClusterIP":"10.96.0.10"}}}"#;

#[test]
#[ignore = "needs hack/control-plane.sh's tsconfig-check: run hack/test.sh"]
fn ingress_configs_map_vip_service_addresses_to_cluster_ips_of_their_family() {
    assert_verdicts(
        "ingress",
        &[
            ("builders", INGRESS, None),
            (
                "dual-stack",
                r#"{"svc:web-service":{"IPv4Mapping":{"TailscaleServiceIP":"100.100.1.2","ClusterIP":"10.96.0.10"},"IPv6Mapping":{"TailscaleServiceIP":"fd7a:115c:a1e0::1:2","ClusterIP":"fd00:10:96::a"}}}"#,
                None,
            ),
            ("empty", "{}", None),
            (
                "name-without-svc",
                r#"{"web-service":{"IPv4Mapping":{"TailscaleServiceIP":"100.100.1.2","ClusterIP":"10.96.0.10"}}}"#,
                Some("must start with 'svc:'"),
            ),
            ("no-mapping", r#"{"svc:web-service":{}}"#, Some("neither IPv4Mapping nor IPv6Mapping")),
            ("null-service", r#"{"svc:web-service":null}"#, Some("neither IPv4Mapping nor IPv6Mapping")),
            (
                "v6-in-ipv4-mapping",
                r#"{"svc:web-service":{"IPv4Mapping":{"TailscaleServiceIP":"100.100.1.2","ClusterIP":"fd00::a"}}}"#,
                Some("IPv4Mapping.ClusterIP fd00::a is of the wrong address family"),
            ),
            (
                "v4-in-ipv6-mapping",
                r#"{"svc:web-service":{"IPv6Mapping":{"TailscaleServiceIP":"100.100.1.2","ClusterIP":"fd00::a"}}}"#,
                Some("IPv6Mapping.TailscaleServiceIP 100.100.1.2 is of the wrong address family"),
            ),
            (
                "mapped-v4-in-ipv6-mapping",
                r#"{"svc:web-service":{"IPv6Mapping":{"TailscaleServiceIP":"fd7a:115c:a1e0::1:2","ClusterIP":"::ffff:10.96.0.10"}}}"#,
                Some("IPv6Mapping.ClusterIP ::ffff:10.96.0.10 is of the wrong address family"),
            ),
            (
                "no-cluster-ip",
                r#"{"svc:web-service":{"IPv4Mapping":{"TailscaleServiceIP":"100.100.1.2"}}}"#,
                Some("IPv4Mapping.ClusterIP is not set"),
            ),
            (
                "service-ip-not-tailscale",
                r#"{"svc:web-service":{"IPv4Mapping":{"TailscaleServiceIP":"10.0.0.1","ClusterIP":"10.96.0.10"}}}"#,
                Some("not in a range Tailscale assigns from"),
            ),
            (
                "bad-address",
                r#"{"svc:web-service":{"IPv4Mapping":{"TailscaleServiceIP":"100.100.1","ClusterIP":"10.96.0.10"}}}"#,
                Some("ParseAddr"),
            ),
            (
                "unknown-field",
                r#"{"svc:web-service":{"IPv4Mapping":{"TailscaleServiceIP":"100.100.1.2","ClusterIPs":["10.96.0.10"]}}}"#,
                Some(r#"unknown field "ClusterIPs""#),
            ),
        ],
    );
}

/// A proxy container's env: what every proxy has (config dir, state Secret) plus `extra`.
fn proxy_env(extra: &[Value]) -> String {
    let mut env = vec![
        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
        json!({"name": "TS_KUBE_SECRET", "value": "$(POD_NAME)"}),
        json!({"name": "TS_EXPERIMENTAL_VERSIONED_CONFIG_DIR", "value": "/etc/tsconfig/$(POD_NAME)"}),
    ];
    env.extend_from_slice(extra);
    Value::Array(env).to_string()
}

fn var(name: &str, value: &str) -> Value {
    json!({"name": name, "value": value})
}

/// POD_IPS as containerboot's egress and ingress proxies need it: from the pod's status.
fn pod_ips() -> Value {
    json!({"name": "POD_IPS", "valueFrom": {"fieldRef": {"fieldPath": "status.podIPs"}}})
}

#[test]
#[ignore = "needs hack/control-plane.sh's tsconfig-check: run hack/test.sh"]
fn proxy_env_for_serve_egress_and_ingress_keeps_containerboots_rules() {
    let kernel = var("TS_USERSPACE", "false");
    let egress = var("TS_EGRESS_PROXIES_CONFIG_PATH", "/etc/proxies");
    let ingress = var("TS_INGRESS_PROXIES_CONFIG_PATH", "/etc/proxies/ingress-config.json");
    let serve = var("TS_SERVE_CONFIG", "/etc/proxies/serve-config.json");
    let samples = [
        ("serve", proxy_env(&[serve.clone(), var("TS_EXPERIMENTAL_SERVICE_AUTO_ADVERTISEMENT", "false")]), None),
        ("egress", proxy_env(&[kernel.clone(), egress.clone(), pod_ips()]), None),
        ("ingress", proxy_env(&[kernel.clone(), ingress.clone(), serve.clone(), pod_ips()]), None),
        (
            "egress-health-on-pod-ip",
            proxy_env(&[
                kernel.clone(),
                egress.clone(),
                pod_ips(),
                var("TS_ENABLE_HEALTH_CHECK", "true"),
                var("TS_LOCAL_ADDR_PORT", "$(POD_IP):9002"),
            ]),
            None,
        ),
        (
            "egress-literal-pod-ips",
            proxy_env(&[kernel.clone(), egress.clone(), var("POD_IPS", "10.0.0.5,fd00::5")]),
            None,
        ),
        (
            "egress-userspace-default",
            proxy_env(&[egress.clone(), pod_ips()]),
            Some("TS_EGRESS_PROXIES_CONFIG_PATH needs TS_USERSPACE=false"),
        ),
        (
            "egress-userspace",
            proxy_env(&[var("TS_USERSPACE", "true"), egress.clone(), pod_ips()]),
            Some("TS_EGRESS_PROXIES_CONFIG_PATH needs TS_USERSPACE=false"),
        ),
        (
            "ingress-userspace",
            proxy_env(&[ingress.clone(), pod_ips()]),
            Some("TS_INGRESS_PROXIES_CONFIG_PATH needs TS_USERSPACE=false"),
        ),
        (
            "tailnet-target-userspace",
            proxy_env(&[var("TS_TAILNET_TARGET_FQDN", "web-service.tail1234.ts.net")]),
            Some("TS_TAILNET_TARGET_FQDN needs TS_USERSPACE=false"),
        ),
        ("egress-without-pod-ips", proxy_env(&[kernel.clone(), egress.clone()]), Some("needs POD_IPS")),
        ("ingress-without-pod-ips", proxy_env(&[kernel.clone(), ingress.clone()]), Some("needs POD_IPS")),
        (
            "egress-path-names-the-file",
            proxy_env(&[
                kernel.clone(),
                var("TS_EGRESS_PROXIES_CONFIG_PATH", "/etc/proxies/egress-services"),
                pod_ips(),
            ]),
            Some("want the directory"),
        ),
        (
            "egress-relative-path",
            proxy_env(&[kernel.clone(), var("TS_EGRESS_PROXIES_CONFIG_PATH", "proxies"), pod_ips()]),
            Some(r#"TS_EGRESS_PROXIES_CONFIG_PATH="proxies": want an absolute path"#),
        ),
        (
            "egress-local-addr-port-unparseable",
            proxy_env(&[kernel.clone(), egress.clone(), pod_ips(), var("TS_LOCAL_ADDR_PORT", "9002")]),
            Some(r#"TS_LOCAL_ADDR_PORT="9002""#),
        ),
        (
            "three-pod-ips",
            proxy_env(&[kernel.clone(), egress.clone(), var("POD_IPS", "10.0.0.5,fd00::5,10.0.0.6")]),
            Some("at most 2 IPs"),
        ),
        (
            "serve-relative-path",
            proxy_env(&[var("TS_SERVE_CONFIG", "serve-config.json")]),
            Some(r#"TS_SERVE_CONFIG="serve-config.json": want an absolute path"#),
        ),
        (
            "serve-with-dest-ip",
            proxy_env(&[kernel.clone(), serve.clone(), var("TS_DEST_IP", "10.0.0.1")]),
            Some("TS_SERVE_CONFIG cannot be used with TS_DEST_IP"),
        ),
        (
            "auto-advertisement-not-a-bool",
            proxy_env(&[serve.clone(), var("TS_EXPERIMENTAL_SERVICE_AUTO_ADVERTISEMENT", "no")]),
            Some(r#"TS_EXPERIMENTAL_SERVICE_AUTO_ADVERTISEMENT="no": want true or false"#),
        ),
        (
            "cluster-traffic-via-ingress-without-serve",
            proxy_env(&[kernel.clone(), var("EXPERIMENTAL_ALLOW_PROXYING_CLUSTER_TRAFFIC_VIA_INGRESS", "true")]),
            Some("EXPERIMENTAL_ALLOW_PROXYING_CLUSTER_TRAFFIC_VIA_INGRESS needs TS_SERVE_CONFIG"),
        ),
        (
            "cluster-traffic-via-ingress-userspace",
            proxy_env(&[serve.clone(), var("EXPERIMENTAL_ALLOW_PROXYING_CLUSTER_TRAFFIC_VIA_INGRESS", "true")]),
            Some("EXPERIMENTAL_ALLOW_PROXYING_CLUSTER_TRAFFIC_VIA_INGRESS=true needs TS_USERSPACE=false"),
        ),
    ];
    let samples: Vec<_> = samples.iter().map(|(name, env, want)| (*name, env.as_str(), *want)).collect();
    assert_verdicts("env", &samples);
}
