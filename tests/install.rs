//! The install manifests against the code: every manifest parses with the right kind and
//! apiVersion; the names, paths and ports in webhooks/, apiservice/ and deploy/ are the ones the
//! binary uses and serves; RBAC grants exactly the table in `src/rbac.rs`, and that table covers
//! every Kubernetes API call the code makes (replayed from the code, and scanned from the
//! source); `kubectl kustomize` builds both variants.

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use clap::Parser;
use serde_json::{Value, json};
use tailscale_gateway::install;
use tailscale_gateway::rbac::{self, PERMISSIONS, Scope};
use tailscale_gateway::runtime::{self, ServeArgs};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every YAML document under `dir` (kustomization.yaml excepted), with its file name.
fn docs(dir: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml") && !p.ends_with("kustomization.yaml"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        for doc in serde_saphyr::from_multiple::<Value>(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display())) {
            if !doc.is_null() {
                out.push((format!("{dir}/{name}"), doc));
            }
        }
    }
    out
}

fn all_docs() -> Vec<(String, Value)> {
    ["crds", "deploy", "webhooks", "apiservice", "certs"].iter().flat_map(|d| docs(d)).collect()
}

fn find<'a>(docs: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the manifests"))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// The `serve` defaults, as the binary parses them.
fn serve_defaults() -> ServeArgs {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }
    Cli::try_parse_from(["tailscale-gateway"]).expect("parsing the default serve arguments").serve
}

#[test]
fn every_manifest_parses_with_the_right_kind_and_api_version() {
    let expected: BTreeMap<&str, &str> = BTreeMap::from([
        ("APIService", "apiregistration.k8s.io/v1"),
        ("Certificate", "cert-manager.io/v1"),
        ("ClusterRole", "rbac.authorization.k8s.io/v1"),
        ("ClusterRoleBinding", "rbac.authorization.k8s.io/v1"),
        ("CustomResourceDefinition", "apiextensions.k8s.io/v1"),
        ("Deployment", "apps/v1"),
        ("Issuer", "cert-manager.io/v1"),
        ("MutatingWebhookConfiguration", "admissionregistration.k8s.io/v1"),
        ("Namespace", "v1"),
        ("NetworkPolicy", "networking.k8s.io/v1"),
        ("PodDisruptionBudget", "policy/v1"),
        ("Role", "rbac.authorization.k8s.io/v1"),
        ("RoleBinding", "rbac.authorization.k8s.io/v1"),
        ("Service", "v1"),
        ("ServiceAccount", "v1"),
        ("ValidatingWebhookConfiguration", "admissionregistration.k8s.io/v1"),
    ]);
    let docs = all_docs();
    assert!(docs.len() >= 24, "only {} documents", docs.len());
    let mut seen = BTreeSet::new();
    for (file, d) in &docs {
        let kind = s(&d["kind"]);
        let want = expected.get(kind).unwrap_or_else(|| panic!("{file}: unexpected kind {kind:?}"));
        assert_eq!(s(&d["apiVersion"]), *want, "{file}: {kind}");
        assert!(!s(&d["metadata"]["name"]).is_empty(), "{file}: {kind} without a name");
        seen.insert(kind);
    }
    assert_eq!(seen, expected.keys().copied().collect(), "every expected kind is present");
    // Namespaced objects live in our namespace, except the binding of the kube-system reader role.
    for (file, d) in &docs {
        if let Some(ns) = d["metadata"]["namespace"].as_str() {
            let ok =
                ns == install::NAMESPACE || (d["kind"] == "RoleBinding" && ns == install::AUTH_CONFIGMAP_NAMESPACE);
            assert!(ok, "{file}: {} in namespace {ns}", s(&d["kind"]));
        }
    }
    // Typed parse of what k8s-openapi knows, to catch misspelt fields.
    for (file, d) in &docs {
        let r = match s(&d["kind"]) {
            "Deployment" => serde_json::from_value::<k8s_openapi::api::apps::v1::Deployment>(d.clone()).err(),
            "Service" => serde_json::from_value::<k8s_openapi::api::core::v1::Service>(d.clone()).err(),
            "ValidatingWebhookConfiguration" => serde_json::from_value::<
                k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration,
            >(d.clone())
            .err(),
            "MutatingWebhookConfiguration" => serde_json::from_value::<
                k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration,
            >(d.clone())
            .err(),
            "NetworkPolicy" => {
                serde_json::from_value::<k8s_openapi::api::networking::v1::NetworkPolicy>(d.clone()).err()
            }
            "APIService" => serde_json::from_value::<
                k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService,
            >(d.clone())
            .err(),
            _ => None,
        };
        assert!(r.is_none(), "{file}: {r:?}");
    }
}

fn crd_plurals() -> Vec<String> {
    tailscale_gateway::core::Kind::ALL.into_iter().map(tailscale_gateway::api::plural).collect()
}

#[test]
fn webhooks_and_apiservice_name_what_the_binary_uses() {
    let docs = all_docs();
    let defaults = serve_defaults();
    assert_eq!(defaults.webhook_config_name, install::WEBHOOK_CONFIG_NAME);
    assert_eq!(defaults.apiservice_name, install::APISERVICE_NAME);
    assert_eq!(defaults.service_name, install::SERVICE_NAME);
    assert_eq!(defaults.cert_secret, install::CERT_SECRET_NAME);
    assert_eq!(defaults.lease_name, install::LEASE_NAME);
    assert_eq!(defaults.namespace, install::NAMESPACE);
    assert!(defaults.self_managed_certs, "self-managed certificates are the default");

    let svc = find(&docs, "Service", install::SERVICE_NAME);
    let svc_port = svc["spec"]["ports"][0]["port"].as_u64().unwrap_or_default();
    for (kind, path) in [
        ("ValidatingWebhookConfiguration", install::VALIDATE_PATH),
        ("MutatingWebhookConfiguration", install::MUTATE_PATH),
    ] {
        let cfg = find(&docs, kind, install::WEBHOOK_CONFIG_NAME);
        let hooks = cfg["webhooks"].as_array().unwrap_or_else(|| panic!("{kind} without webhooks"));
        // Validating: our kinds, then the routes Envoy Gateway keeps from us; mutating: ours.
        let validating = kind.starts_with("Validating");
        assert_eq!(hooks.len(), if validating { 2 } else { 1 }, "{kind}");
        for h in hooks {
            assert_eq!(h["clientConfig"]["service"]["name"], install::SERVICE_NAME, "{kind}");
            assert_eq!(h["clientConfig"]["service"]["namespace"], install::NAMESPACE, "{kind}");
            assert_eq!(s(&h["clientConfig"]["service"]["path"]), path, "{kind}");
            assert_eq!(h["clientConfig"]["service"]["port"].as_u64(), Some(svc_port), "{kind}");
            assert!(h["clientConfig"].get("caBundle").is_none(), "{kind}: caBundle is managed, not written");
            assert_eq!(h["sideEffects"], "None");
            assert_eq!(h["admissionReviewVersions"], json!(["v1"]));
            assert!(h["timeoutSeconds"].as_u64().is_some_and(|t| t <= 10), "{kind}: short timeout");
            assert_eq!(h["rules"][0]["operations"], json!(["CREATE", "UPDATE"]));
            let excluded = &h["namespaceSelector"]["matchExpressions"][0];
            assert_eq!(
                (s(&excluded["key"]), s(&excluded["operator"]), &excluded["values"]),
                ("kubernetes.io/metadata.name", "NotIn", &json!(["kube-system"]))
            );
        }
        let ours = &hooks[0];
        assert_eq!(ours["failurePolicy"], if validating { "Fail" } else { "Ignore" }, "{kind}");
        let rule = &ours["rules"][0];
        assert_eq!(rule["apiGroups"], json!([tailscale_gateway::api::GROUP]));
        assert_eq!(rule["apiVersions"], json!([tailscale_gateway::api::VERSION]));
        assert_eq!(rule["resources"], json!(crd_plurals()), "{kind}: our kinds");
        if validating {
            let routes = &hooks[1];
            assert_eq!(routes["failurePolicy"], "Ignore", "Gateway API objects are not ours to block");
            let rule = &routes["rules"][0];
            assert_eq!(rule["apiGroups"], json!(["gateway.networking.k8s.io"]));
            let plurals: Vec<String> = tailscale_gateway::core::routes::UNHANDED_ROUTE_KINDS
                .iter()
                .map(|k| format!("{}s", k.to_ascii_lowercase()))
                .collect();
            assert_eq!(rule["resources"], json!(plurals), "the route kinds the core refuses");
        }
    }
    let apis = find(&docs, "APIService", install::APISERVICE_NAME);
    assert_eq!(apis["spec"]["group"], install::AGGREGATED_GROUP);
    assert_eq!(apis["spec"]["version"], install::AGGREGATED_VERSION);
    assert_eq!(apis["spec"]["service"]["name"], install::SERVICE_NAME);
    assert_eq!(apis["spec"]["service"]["namespace"], install::NAMESPACE);
    assert_eq!(apis["spec"]["service"]["port"].as_u64(), Some(svc_port));
    assert!(
        apis["spec"]["groupPriorityMinimum"].as_u64().is_some() && apis["spec"]["versionPriority"].as_u64().is_some()
    );

    // Services reach the container ports the binary listens on by default.
    let dep = find(&docs, "Deployment", install::APP_NAME);
    let pod = &dep["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let port_of = |name: &str| {
        container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no container port {name}"))
    };
    assert_eq!(port_of(s(&svc["spec"]["ports"][0]["targetPort"])), u64::from(install::HTTPS_PORT));
    let xds = find(&docs, "Service", install::XDS_SERVICE_NAME);
    assert_eq!(xds["spec"]["ports"][0]["port"].as_u64(), Some(u64::from(install::XDS_PORT)));
    assert_eq!(port_of(s(&xds["spec"]["ports"][0]["targetPort"])), u64::from(install::XDS_PORT));
    assert_eq!(tailscale_gateway::xds::XdsOptions::default().addr.port(), install::XDS_PORT);
    for svc in [svc, xds] {
        assert_eq!(svc["spec"]["selector"], dep["spec"]["selector"]["matchLabels"], "Service selects the pods");
    }
    assert_eq!(dep["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"], install::APP_NAME);
    assert_eq!(pod["serviceAccountName"], install::APP_NAME);
}

#[test]
fn the_deployment_is_highly_available_and_locked_down() {
    let docs = all_docs();
    let dep = find(&docs, "Deployment", install::APP_NAME);
    assert_eq!(dep["spec"]["replicas"], 2);
    let pod = &dep["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["args"], json!(["serve"]));
    // Probes go to the health listener, outside the HTTPS port's connection limit.
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let get = &c[probe]["httpGet"];
        assert_eq!((s(&get["scheme"]), s(&get["port"])), ("HTTP", "health"), "{probe}");
    }
    let health_port = c["ports"].as_array().into_iter().flatten().find(|p| p["name"] == "health");
    let health_port = health_port.and_then(|p| p["containerPort"].as_u64()).unwrap_or_else(|| panic!("no health port"));
    let health_env = c["env"].as_array().into_iter().flatten().find(|e| e["name"] == "TSGW_HEALTH_ADDR");
    assert_eq!(health_env.map(|e| s(&e["value"])), Some(format!(":{health_port}").as_str()));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let env: Vec<(&str, &str)> = c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["name"].as_str()?, e["valueFrom"]["fieldRef"]["fieldPath"].as_str()?)))
        .collect();
    assert!(env.contains(&("POD_NAME", "metadata.name")) && env.contains(&("POD_NAMESPACE", "metadata.namespace")));
    assert!(c["resources"]["requests"]["cpu"].is_string() && c["resources"]["requests"]["memory"].is_string());
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let sc = &c["securityContext"];
    assert_eq!((&sc["readOnlyRootFilesystem"], &sc["allowPrivilegeEscalation"]), (&json!(true), &json!(false)));
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    let pdb = find(&docs, "PodDisruptionBudget", install::APP_NAME);
    assert_eq!(pdb["spec"]["selector"], dep["spec"]["selector"]);
    assert_eq!(pdb["spec"]["minAvailable"], 1);
}

/// The paths in the webhook configurations and probes answer on a running server.
#[tokio::test]
async fn the_binary_serves_the_manifest_paths() {
    let dir = tempfile::tempdir().expect("creating a temporary directory");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).expect("creating the manifests directory");
    let state = dir.path().join("state");
    let mut args = ServeArgs::local(&manifests, &state, "127.0.0.1:0".parse().expect("parsing the listen address"));
    args.health_addr = Some("127.0.0.1:0".parse().expect("parsing the health address"));
    let running = runtime::start(args).await.expect("starting the server");
    let ca = std::fs::read_to_string(state.join("ca.crt")).expect("reading the generated ca.crt");
    let mut conn = util::Conn::open(running.https_addr, util::client_config(&[&ca], None)).await;
    let docs = all_docs();
    for kind in ["ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"] {
        let cfg = find(&docs, kind, install::WEBHOOK_CONFIG_NAME);
        let path = s(&cfg["webhooks"][0]["clientConfig"]["service"]["path"]);
        let object = json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleTailnet",
                            "metadata": {"name": "corp"}, "spec": {"oauthSecretRef": {"name": "oauth"}}});
        let resp = conn.post_json(path, &util::review("CREATE", object, None)).await;
        assert_eq!(resp.status, 200, "{kind} {path}");
        assert_eq!(resp.json()["kind"], "AdmissionReview", "{kind} {path}");
    }
    let dep = find(&docs, "Deployment", install::APP_NAME);
    let health = running.health_addr.unwrap_or_else(|| panic!("no health listener"));
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let path = s(&dep["spec"]["template"]["spec"]["containers"][0][probe]["httpGet"]["path"]);
        let resp = util::plain_get(health, path).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{probe} {path}: {resp}");
        // The HTTPS port answers them too.
        assert_eq!(conn.get(path).await.status, 200, "{probe} {path} on HTTPS");
    }
    running.shutdown().await;
}

fn expand_table(scope: Scope) -> BTreeSet<(String, String, String, Vec<String>)> {
    let mut out = BTreeSet::new();
    for p in PERMISSIONS.iter().filter(|p| p.scope == scope) {
        let mut names: Vec<String> = p.resource_names.iter().map(|n| n.to_string()).collect();
        names.sort();
        for v in p.verbs {
            out.insert((p.group.to_string(), p.resource.to_string(), v.to_string(), names.clone()));
        }
    }
    out
}

fn binds_our_account(binding: &Value) -> bool {
    binding["subjects"].as_array().into_iter().flatten().any(|s| {
        s["kind"] == "ServiceAccount" && s["name"] == install::APP_NAME && s["namespace"] == install::NAMESPACE
    })
}

#[test]
fn rbac_manifests_grant_exactly_the_table() {
    let docs = docs("deploy");
    let cluster_role = find(&docs, "ClusterRole", install::APP_NAME);
    assert_eq!(util::expand_rules(&cluster_role["rules"]), expand_table(Scope::Cluster), "ClusterRole vs src/rbac.rs");
    let role = find(&docs, "Role", install::APP_NAME);
    assert_eq!(role["metadata"]["namespace"], install::NAMESPACE);
    assert_eq!(util::expand_rules(&role["rules"]), expand_table(Scope::InstallNamespace), "Role vs src/rbac.rs");
    // Every role bound to our ServiceAccount is ours or a built-in one from the table.
    let mut bound = BTreeSet::new();
    for (_, b) in docs.iter().filter(|(_, d)| s(&d["kind"]).ends_with("Binding") && binds_our_account(d)) {
        let ns = b["metadata"]["namespace"].as_str().map(str::to_string);
        bound.insert((s(&b["roleRef"]["kind"]).to_string(), s(&b["roleRef"]["name"]).to_string(), ns));
    }
    let mut wanted = BTreeSet::from([
        ("ClusterRole".to_string(), install::APP_NAME.to_string(), None),
        ("Role".to_string(), install::APP_NAME.to_string(), Some(install::NAMESPACE.to_string())),
    ]);
    for p in PERMISSIONS {
        if let Scope::BuiltIn { role_kind, role, namespace, .. } = p.scope {
            wanted.insert((role_kind.to_string(), role.to_string(), namespace.map(str::to_string)));
        }
    }
    assert_eq!(bound, wanted, "bindings of the ServiceAccount");
    // The view aggregation covers the read API.
    let view = find(&docs, "ClusterRole", "tailscale-gateway:view");
    assert_eq!(view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"], "true");
    let granted = util::expand_rules(&view["rules"]);
    for res in install::AGGREGATED_RESOURCES.iter().map(|r| r.to_string()).chain(crd_plurals()) {
        for verb in ["get", "list", "watch"] {
            let group = if install::AGGREGATED_RESOURCES.contains(&res.as_str()) {
                install::AGGREGATED_GROUP
            } else {
                tailscale_gateway::api::GROUP
            };
            assert!(granted.contains(&(group.into(), res.clone(), verb.into(), vec![])), "view lacks {verb} {res}");
        }
    }
}

// ---- The table covers what the code does --------------------------------------------------

use tailscale_gateway::reconciler::owned;
use tailscale_gateway::reconciler::testing::{FakeKube, MemoryFactory, Recorded, fake_client, sync_owned};

fn assert_allowed(reqs: &[Recorded], install_namespace: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for r in reqs {
        let attrs = rbac::request_attributes(&r.method, &r.path, &r.query, &r.content_type);
        assert!(!attrs.is_empty(), "{} {} is not a resource request", r.method, r.path);
        for a in attrs {
            assert!(
                rbac::allowed_by(&a, install_namespace).is_some(),
                "the code sends {} {} ({a}) but src/rbac.rs does not allow it",
                r.method,
                r.path
            );
            seen.insert(format!("{} {}", a.verb, a.resource));
        }
    }
    seen
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Runs the reconcilers through create, auto-provisioning, orphan clean-up and deletion against
/// the recording fake API server, plus leader election and self-managed certificates, and checks
/// every request against the table.
#[tokio::test]
async fn every_request_the_code_sends_is_allowed_by_the_table() {
    use tailscale_gateway::api::{TailscaleEndpoints, TailscaleServices, TailscaleTailnet};
    use tailscale_gateway::cache::Cache;
    use tailscale_gateway::core::{Kind, Resource};
    use tailscale_gateway::reconciler::{Config, Context, ReconcilerMetrics, endpoints, services, tailnet};

    let ns = install::NAMESPACE;
    let gw = "/apis/gateway.tailscale.com/v1alpha1";
    let fake = FakeKube::new();
    let factory = Arc::new(MemoryFactory::default());
    let cache = Cache::new(1000);
    let tn: TailscaleTailnet = serde_json::from_value(json!({
        "apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleTailnet",
        "metadata": {"name": "corp", "uid": "uid-corp", "generation": 1},
        "spec": {"tailnet": "-", "oauthSecretRef": {"name": "oauth"}, "tags": ["tag:k8s"]}}))
    .expect("parsing the TailscaleTailnet");
    fake.insert(&format!("{gw}/tailscaletailnets"), serde_json::to_value(&tn).unwrap_or_default());
    fake.insert(
        &format!("/api/v1/namespaces/{ns}/secrets"),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "oauth", "namespace": ns},
               "data": {"client_id": b64("id"), "client_secret": b64("secret")}}),
    );
    cache.apply(Resource::Tailnet(tn.clone()));
    for k in Kind::ALL {
        cache.mark_synced(k);
    }
    let config = Config { namespace: ns.into(), ..Config::default() };
    let ctx = Arc::new(Context::new(
        fake_client(fake.clone()),
        cache.clone(),
        factory,
        Arc::new(ReconcilerMetrics::default()),
        config,
        Some("pod-0".into()),
    ));
    // The owned-object stores, brought up to date before each endpoints reconcile (the
    // reflectors' job when the controllers run).
    let (stores, writers) = owned::stores();
    ctx.set_owned(stores);
    let writers = std::sync::Mutex::new(writers);
    let _ = tailnet::reconcile(Arc::new(tn), ctx.clone()).await;

    // Endpoints: create everything, scale down, then delete (finalizer removal).
    let ep_coll = format!("{gw}/namespaces/prod/{}", <TailscaleEndpoints as kube::Resource>::plural(&()));
    fake.insert(
        &ep_coll,
        json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleEndpoints",
               "metadata": {"name": "web", "namespace": "prod", "uid": "uid-web", "generation": 1, "labels": {"app": "web"},
                            "finalizers": [endpoints::FINALIZER]},
               "spec": {"tailnet": "corp", "tags": ["tag:web"], "proxy": {"replicas": 2}, "ports": [{"port": 443}]}}),
    );
    let load_ep = || -> Arc<TailscaleEndpoints> {
        sync_owned(&fake, &mut writers.lock().unwrap_or_else(|p| p.into_inner()));
        let v = fake.get(&format!("{ep_coll}/web")).unwrap_or_else(|| panic!("endpoints gone"));
        let ep: TailscaleEndpoints = serde_json::from_value(v).expect("parsing the stored TailscaleEndpoints");
        cache.apply(Resource::Endpoints(ep.clone()));
        Arc::new(ep)
    };
    for _ in 0..2 {
        endpoints::reconcile(load_ep(), ctx.clone()).await.expect("reconciling the TailscaleEndpoints");
    }
    // Scale down: surplus Secrets are deleted.
    let mut smaller = fake.get(&format!("{ep_coll}/web")).unwrap_or_default();
    smaller["spec"]["proxy"]["replicas"] = json!(1);
    fake.insert(&ep_coll, smaller);
    endpoints::reconcile(load_ep(), ctx.clone())
        .await
        .expect("reconciling the TailscaleEndpoints scaled down to one replica");
    let mut deleting = fake.get(&format!("{ep_coll}/web")).unwrap_or_default();
    deleting["metadata"]["deletionTimestamp"] = json!("2025-06-25T11:00:00Z");
    fake.insert(&ep_coll, deleting);
    let _ = endpoints::reconcile(load_ep(), ctx.clone()).await;

    // Services: auto-provision endpoints, then orphan and delete them.
    let svc_coll = format!("{gw}/namespaces/prod/{}", <TailscaleServices as kube::Resource>::plural(&()));
    let svc = json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleServices",
        "metadata": {"name": "api", "namespace": "prod", "uid": "uid-api", "generation": 1,
                     "finalizers": [services::FINALIZER]},
        "spec": {"selector": {"matchLabels": {"app": "api"}},
                 "vipService": {"name": "svc:api", "ports": ["tcp:443"], "tags": ["tag:api"]},
                 "endpointTemplate": {"tailnet": "corp", "tags": ["tag:api"], "proxy": {"replicas": 1}, "ports": [{"port": 443}]}}});
    fake.insert(&svc_coll, svc);
    let load_svc = || -> Arc<TailscaleServices> {
        let v = fake.get(&format!("{svc_coll}/api")).unwrap_or_else(|| panic!("services gone"));
        let s: TailscaleServices = serde_json::from_value(v).expect("parsing the stored TailscaleServices");
        cache.apply(Resource::Services(s.clone()));
        Arc::new(s)
    };
    for _ in 0..2 {
        let _ = services::reconcile(load_svc(), ctx.clone()).await;
        // The reflector's job: deliver the auto-provisioned endpoints to the cache.
        if let Some(ep) = fake.get(&format!("{ep_coll}/api-endpoints")) {
            let ep: TailscaleEndpoints =
                serde_json::from_value(ep).expect("parsing the auto-provisioned TailscaleEndpoints");
            cache.apply(Resource::Endpoints(ep));
        }
    }
    let mut moved = fake.get(&format!("{svc_coll}/api")).unwrap_or_default();
    moved["spec"]["selector"] = json!({"matchLabels": {"app": "other"}});
    moved["spec"].as_object_mut().map(|s| s.remove("endpointTemplate"));
    fake.insert(&svc_coll, moved);
    let _ = services::reconcile(load_svc(), ctx.clone()).await;

    // Leader election.
    let mut elector = tailscale_gateway::lease::LeaderElector::new(
        fake_client(fake.clone()),
        tailscale_gateway::lease::LeaseConfig::new(ns, install::LEASE_NAME, "pod-0"),
    );
    let _ = elector.try_acquire_or_renew().await;
    let _ = elector.try_acquire_or_renew().await;

    // Self-managed certificates: create, rotate, publish the bundle.
    for (coll, name) in [
        ("/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations", install::WEBHOOK_CONFIG_NAME),
        ("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", install::WEBHOOK_CONFIG_NAME),
    ] {
        fake.insert(coll, json!({"metadata": {"name": name}, "webhooks": [{"name": "w", "clientConfig": {}}]}));
    }
    fake.insert(
        "/apis/apiregistration.k8s.io/v1/apiservices",
        json!({"metadata": {"name": install::APISERVICE_NAME}, "spec": {"groupPriorityMinimum": 1, "versionPriority": 1}}),
    );
    let defaults = serve_defaults();
    let certs = tailscale_gateway::selfcert::SelfCert::new(
        fake_client(fake.clone()),
        tailscale_gateway::selfcert::Config {
            namespace: ns.into(),
            secret_name: defaults.cert_secret.clone(),
            names: install::service_dns_names(&defaults.service_name, ns, "cluster.local"),
            webhook_config_name: defaults.webhook_config_name.clone(),
            apiservice_name: defaults.apiservice_name.clone(),
            interval: Duration::from_secs(60),
            policy: tailscale_gateway::selfcert::Policy::default(),
        },
    );
    let now = tailscale_gateway::selfcert::unix_now();
    let m = certs.ensure(now).await.expect("ensuring the serving certificate");
    let _ = certs.ensure(now + 80 * 86_400).await; // renewal: a replace
    certs.publish_ca_bundle(&m.bundle).await.expect("publishing the CA bundle");

    // Controllers and their watches (list/watch cluster-wide) while leading.
    let (leader_tx, leader_rx) = tokio::sync::watch::channel(true);
    let stop = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(tailscale_gateway::reconciler::run(ctx.clone(), leader_rx, stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), run).await;
    drop(leader_tx);

    let seen = assert_allowed(&fake.requests(), ns);
    // The replay exercised the interesting paths (else it would prove little).
    for needle in [
        "create events",
        "patch secrets",
        "delete secrets",
        "patch statefulsets",
        "patch roles",
        "patch tailscaleendpoints",
        "patch tailscaleendpoints/status",
        "delete tailscaleendpoints",
        "patch tailscaleservices/status",
        "create leases",
        "update leases",
        "create secrets",
        "update secrets",
        "patch validatingwebhookconfigurations",
        "patch apiservices",
        "list tailscaletailnets",
        "list statefulsets",
        "list serviceaccounts",
        "list roles",
        "list rolebindings",
        "list services",
    ] {
        assert!(seen.contains(needle), "the replay never sent {needle:?}; saw {seen:?}");
    }
}

/// Kubernetes types the code names in `Api<T>`, with their (group, plural).
fn resource_of(type_name: &str) -> Option<(String, String)> {
    use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::authentication::v1::TokenReview;
    use k8s_openapi::api::authorization::v1::SubjectAccessReview;
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
    use tailscale_gateway::api::{TailscaleEndpoints, TailscaleGateway, TailscaleServices, TailscaleTailnet};
    fn r<K: kube::Resource<DynamicType = ()>>() -> Option<(String, String)> {
        Some((K::group(&()).into_owned(), K::plural(&()).into_owned()))
    }
    match type_name {
        "TailscaleTailnet" => r::<TailscaleTailnet>(),
        "TailscaleEndpoints" => r::<TailscaleEndpoints>(),
        "TailscaleServices" => r::<TailscaleServices>(),
        "TailscaleGateway" => r::<TailscaleGateway>(),
        "TailscaleRoutePolicy" => r::<tailscale_gateway::api::TailscaleRoutePolicy>(),
        "Secret" => r::<Secret>(),
        "Pod" => r::<k8s_openapi::api::core::v1::Pod>(),
        "Service" => r::<Service>(),
        "ServiceAccount" => r::<ServiceAccount>(),
        "ConfigMap" => r::<ConfigMap>(),
        "Role" => r::<Role>(),
        "RoleBinding" => r::<RoleBinding>(),
        "StatefulSet" => r::<StatefulSet>(),
        "Lease" => r::<Lease>(),
        "TokenReview" => r::<TokenReview>(),
        "SubjectAccessReview" => r::<SubjectAccessReview>(),
        "ValidatingWebhookConfiguration" => r::<ValidatingWebhookConfiguration>(),
        "MutatingWebhookConfiguration" => r::<MutatingWebhookConfiguration>(),
        "APIService" => r::<APIService>(),
        // The one dynamic watch: Gateway API routes (runtime::reflect_routes; grpcroutes alike).
        "DynamicObject" => Some(("gateway.networking.k8s.io".into(), "httproutes".into())),
        _ => None,
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).flatten() {
        let p = entry.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The code outside tests: each file cut at its `#[cfg(test)]` module, test-only files skipped.
fn production_sources() -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    files.sort();
    files
        .into_iter()
        .filter(|p| !p.ends_with("controller_tests.rs") && !p.ends_with("testing.rs"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("reading a source file");
            let cut = text.find("#[cfg(test)]\nmod tests").unwrap_or(text.len());
            (p, text[..cut].to_string())
        })
        .collect()
}

/// `Api::<T>`, `Api<T>` uses in `text`: (type name, whether it feeds a watch).
fn api_types(text: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for pat in ["Api::<", "Api<"] {
        let mut from = 0;
        while let Some(i) = text[from..].find(pat) {
            let start = from + i + pat.len();
            from = start;
            let Some(end) = text[start..].find('>') else { break };
            let ty = text[start..start + end].rsplit("::").next().unwrap_or_default().trim().to_string();
            let before = &text[start.saturating_sub(80)..start];
            let watched = ["Controller::new(", ".owns(", "reflect(", "watcher("].iter().any(|w| before.contains(w));
            out.push((ty, watched));
        }
    }
    out
}

#[test]
fn every_resource_the_source_names_is_in_the_table() {
    let mut found = BTreeSet::new();
    for (path, text) in production_sources() {
        for (ty, watched) in api_types(&text) {
            // Generic helpers (`Api<K>`) are covered by their callers.
            if ty.len() <= 1 || ty == "Self" {
                continue;
            }
            let (group, plural) = resource_of(&ty).unwrap_or_else(|| {
                panic!("{}: Api<{ty}> is not known to this test: add it to resource_of and src/rbac.rs", path.display())
            });
            let granted = |verb: &str| {
                PERMISSIONS.iter().any(|p| {
                    p.group == group && p.resource == plural && p.verbs.contains(&verb) && p.resource_names.is_empty()
                })
            };
            assert!(
                PERMISSIONS.iter().any(|p| p.group == group && p.resource == plural),
                "{}: Api<{ty}> ({group}/{plural}) has no permission in src/rbac.rs",
                path.display()
            );
            if watched {
                assert!(granted("list") && granted("watch"), "{}: {plural} is watched", path.display());
            }
            found.insert(plural);
        }
    }
    for must in ["tailscaletailnets", "tailscalegateways", "secrets", "statefulsets", "leases", "apiservices"] {
        assert!(found.contains(must), "the scan missed Api<{must}>: {found:?}");
    }
}

#[test]
fn proxies_are_granted_only_what_we_hold() {
    // RBAC refuses to create a Role granting more than its creator holds.
    let ep: tailscale_gateway::api::TailscaleEndpoints = serde_json::from_value(json!({
        "apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleEndpoints",
        "metadata": {"name": "web", "namespace": "prod", "uid": "u"},
        "spec": {"tailnet": "corp", "proxy": {"replicas": 2}}}))
    .expect("parsing the TailscaleEndpoints");
    let role = tailscale_gateway::reconciler::builders::role(&ep, &Default::default());
    let rules = serde_json::to_value(&role.rules).unwrap_or_default();
    let held = expand_table(Scope::Cluster);
    for (group, resource, verb, _) in util::expand_rules(&rules) {
        assert!(
            held.contains(&(group.clone(), resource.clone(), verb.clone(), vec![])),
            "proxies get {verb} {group}/{resource}, which the server does not hold"
        );
    }
}

// ---- kustomize ----------------------------------------------------------------------------

fn kustomize(dir: &str) -> Vec<Value> {
    let kubectl = Path::new("/usr/bin/kubectl");
    assert!(kubectl.exists(), "/usr/bin/kubectl not found: it is needed to run `kubectl kustomize {dir}`");
    let out = std::process::Command::new(kubectl)
        .args(["kustomize", &root().join(dir).to_string_lossy()])
        .output()
        .expect("running /usr/bin/kubectl kustomize");
    assert!(out.status.success(), "kubectl kustomize {dir}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    serde_saphyr::from_multiple::<Value>(&text).unwrap_or_else(|e| panic!("{dir} output: {e}"))
}

fn kinds(docs: &[Value]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for d in docs {
        *m.entry(s(&d["kind"]).to_string()).or_default() += 1;
    }
    m
}

#[test]
fn kustomize_builds_the_default_install() {
    let docs = kustomize("deploy");
    let k = kinds(&docs);
    for (kind, n) in [
        ("CustomResourceDefinition", 5),
        ("ValidatingWebhookConfiguration", 1),
        ("MutatingWebhookConfiguration", 1),
        ("APIService", 1),
        ("Deployment", 1),
        ("Service", 2),
        ("Namespace", 1),
        ("NetworkPolicy", 1),
    ] {
        assert_eq!(k.get(kind).copied(), Some(n), "{kind} in kubectl kustomize deploy/: {k:?}");
    }
    assert!(!k.contains_key("Certificate"), "no cert-manager objects by default");
    let images: Vec<&str> = docs
        .iter()
        .flat_map(|d| d["spec"]["template"]["spec"]["containers"].as_array().into_iter().flatten())
        .filter_map(|c| c["image"].as_str())
        .collect();
    assert_eq!(images, [install::IMAGE], "the install runs the release image");
    assert!(!serde_json::to_string(&docs).unwrap_or_default().contains("inject-ca-from"));
}

#[test]
fn kustomize_builds_the_cert_manager_variant() {
    let docs = kustomize("certs");
    let k = kinds(&docs);
    assert_eq!(k.get("Certificate"), Some(&2), "{k:?}");
    assert_eq!(k.get("Issuer"), Some(&2), "{k:?}");
    let cert = docs
        .iter()
        .find(|d| d["kind"] == "Certificate" && d["spec"]["isCA"] != true)
        .unwrap_or_else(|| panic!("no serving Certificate"));
    let dns: Vec<String> = serde_json::from_value(cert["spec"]["dnsNames"].clone()).unwrap_or_default();
    assert_eq!(dns, install::service_dns_names(install::SERVICE_NAME, install::NAMESPACE, "cluster.local"));
    let inject = format!("{}/{}", install::NAMESPACE, s(&cert["metadata"]["name"]));
    let mut injected = BTreeSet::new();
    for d in &docs {
        if d["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == inject.as_str() {
            injected.insert(format!("{}/{}", s(&d["kind"]), s(&d["metadata"]["name"])));
        }
    }
    let crds = tailscale_gateway::api::crds().len();
    assert_eq!(injected.len(), 3 + crds, "2 webhook configurations, the APIService and {crds} CRDs: {injected:?}");
    assert!(injected.contains(&format!("APIService/{}", install::APISERVICE_NAME)));
    let dep = docs.iter().find(|d| d["kind"] == "Deployment").unwrap_or_else(|| panic!("no Deployment"));
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = c["args"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let secret = s(&cert["spec"]["secretName"]);
    let mount = dep["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["secret"]["secretName"] == secret)
        .unwrap_or_else(|| panic!("the serving Secret is not mounted"));
    let mount_path = c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == mount["name"])
        .and_then(|m| m["mountPath"].as_str())
        .unwrap_or_else(|| panic!("no volumeMount"));
    assert!(args.contains(&format!("--tls-cert-file={mount_path}/tls.crt").as_str()), "{args:?}");
    assert!(args.contains(&format!("--tls-key-file={mount_path}/tls.key").as_str()), "{args:?}");
    // The server accepts those arguments.
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }
    let parsed = Cli::try_parse_from(std::iter::once("tailscale-gateway").chain(args.iter().copied().skip(1)))
        .expect("parsing the serve arguments");
    assert!(parsed.serve.tls_cert_file.is_some());
}

#[test]
fn the_dockerfile_builds_the_image_the_install_references() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).expect("reading the Dockerfile");
    assert!(
        dockerfile.contains(&format!("docker build -t {} .", install::IMAGE)),
        "build command tags {}",
        install::IMAGE
    );
    let version = format!("org.opencontainers.image.version=\"{}\"", env!("CARGO_PKG_VERSION"));
    assert!(dockerfile.contains(&version), "the image's version label is Cargo.toml's: {version}");
    let mut referenced = BTreeSet::new();
    for dir in ["deploy", "certs", "examples", "examples/envoy-gateway"] {
        for (file, doc) in docs(dir) {
            let pod = &doc["spec"]["template"]["spec"];
            for c in pod["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(pod["initContainers"].as_array().into_iter().flatten())
            {
                if let Some(image) = c["image"].as_str().filter(|i| i.contains("tailscale-gateway")) {
                    referenced.insert(format!("{file}: {image}"));
                }
            }
        }
    }
    assert!(!referenced.is_empty());
    for r in &referenced {
        assert!(r.ends_with(&format!(": {}", install::IMAGE)), "{r} is not {}", install::IMAGE);
    }
}
