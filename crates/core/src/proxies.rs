//! Pure builders of the Kubernetes objects behind a TailscaleEndpoints, following the Tailscale
//! operator's ProxyGroup patterns (DESIGN.md §2): a ServiceAccount with a Role limited to the
//! replicas' state Secrets, one StatefulSet, a Service, and per replica a config Secret
//! `<name>-<i>-config` holding `cap-<capver>.hujson` and a state Secret `<name>-<i>`.
//!
//! Also the pure half of the status: reading the state Secrets the proxies write and joining
//! them with live device data. No I/O here; the controller and `render` call these.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    Lifecycle, LifecycleHandler, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, Secret, SecretVolumeSource, SecurityContext, Service, ServiceAccount,
    ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube_core::Resource;
use serde::{Deserialize, Serialize};

use crate::api::{
    DeviceStatus, MANAGED_BY_LABEL, MANAGED_BY_VALUE, SelectedEndpointsStatus, StatefulSetStatus, TailscaleEndpoints,
    TailscaleEndpointsStatus, TailscaleServices, TailscaleServicesStatus, VipServiceStatus,
};
use crate::conditions::{self as status, Desired, PUBLISHED, READY, VIP_SERVICE_READY};
use crate::dataplane::{self, EGRESS_CONFIG_KEY, PROXIES_DIR, ProxyPlan, SERVE_CONFIG_KEY};
use crate::tailscale::Device;
use crate::validate::DEFAULT_REPLICAS;

/// Label on every object we create for a TailscaleEndpoints; value is its name.
pub const ENDPOINTS_LABEL: &str = "tailscale-gateway.com/endpoints";
/// Label on per-replica Secrets; value is the replica index.
pub const REPLICA_LABEL: &str = "tailscale-gateway.com/replica";
/// Label on per-replica Secrets: `config` or `state`.
pub const SECRET_TYPE_LABEL: &str = "tailscale-gateway.com/secret-type";
/// Label carrying the proxies' connection type.
pub const CONNECTION_TYPE_LABEL: &str = "tailscale-gateway.com/connection-type";
/// `app.kubernetes.io/name` of the proxy pods.
pub const APP_NAME: &str = "tailscale-proxy";
/// Capability version of the tailscaled config file we write. Proxies read the highest
/// `cap-N.hujson` not above their own capability version.
pub const CAP_VERSION: u32 = 107;
/// Where the config Secrets are mounted; each pod reads `<dir>/<pod name>`.
pub const CONFIG_DIR: &str = "/etc/tsconfig";
/// Where containerboot serves `/healthz` (its default `TS_LOCAL_ADDR_PORT`, set explicitly because
/// the readiness probe depends on it).
pub const HEALTH_PORT: i32 = 9002;
/// The unprivileged user and group the proxies run as: userspace networking needs no root, as in
/// Tailscale's own userspace sidecar example.
pub const PROXY_USER: i64 = 1000;
/// Placeholder auth key printed by `render` instead of a real key.
pub const AUTH_KEY_PLACEHOLDER: &str = "<auth key created by the reconciler>";

pub use crate::names::{proxies_config_map_name, proxy_service_name};

/// Name of replica `i`'s state Secret (also its pod name).
pub fn state_secret_name(endpoints: &str, i: i32) -> String {
    format!("{endpoints}-{i}")
}

/// Name of replica `i`'s config Secret.
pub fn config_secret_name(endpoints: &str, i: i32) -> String {
    format!("{endpoints}-{i}-config")
}

/// File name of the tailscaled config inside the config Secret.
pub fn config_file_name() -> String {
    format!("cap-{CAP_VERSION}.hujson")
}

/// Desired replicas (spec, or the default).
pub fn replicas(ep: &TailscaleEndpoints) -> i32 {
    ep.spec.proxy.as_ref().and_then(|p| p.replicas).unwrap_or(DEFAULT_REPLICAS).max(0)
}

pub use crate::dataplane::ConnectionType;

/// Labels selecting the proxy pods of one TailscaleEndpoints.
pub fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), APP_NAME.to_string()),
        (ENDPOINTS_LABEL.to_string(), name.to_string()),
    ])
}

/// Labels of every object built for a TailscaleEndpoints.
pub fn object_labels(name: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(name);
    labels.insert("app.kubernetes.io/instance".to_string(), name.to_string());
    labels.insert(MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string());
    labels
}

/// A controller owner reference to `owner`, or `None` when it has no UID yet (render mode).
pub fn owner_reference<K: Resource<DynamicType = ()>>(owner: &K) -> Option<OwnerReference> {
    let meta = owner.meta();
    Some(OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: meta.name.clone()?,
        uid: meta.uid.clone()?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

fn meta(ep: &TailscaleEndpoints, name: String) -> ObjectMeta {
    let ep_name = ep.metadata.name.clone().unwrap_or_default();
    ObjectMeta {
        name: Some(name),
        namespace: ep.metadata.namespace.clone(),
        labels: Some(object_labels(&ep_name)),
        owner_references: owner_reference(ep).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

fn ep_name(ep: &TailscaleEndpoints) -> String {
    ep.metadata.name.clone().unwrap_or_default()
}

/// The proxies' ServiceAccount (same name as the TailscaleEndpoints).
pub fn service_account(ep: &TailscaleEndpoints) -> ServiceAccount {
    ServiceAccount { metadata: meta(ep, ep_name(ep)), ..ServiceAccount::default() }
}

/// The proxies' Role: read and write their own state Secrets and the shared certificate Secrets
/// of the VIPs they serve over HTTPS (`cert_domains`), emit events.
pub fn role(ep: &TailscaleEndpoints, cert_domains: &BTreeSet<String>) -> Role {
    let name = ep_name(ep);
    let mut state: Vec<String> = (0..replicas(ep)).map(|i| state_secret_name(&name, i)).collect();
    state.extend(cert_domains.iter().cloned());
    let secrets = PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec!["secrets".into()]),
        resource_names: Some(state),
        verbs: vec!["get".into(), "update".into(), "patch".into()],
        ..PolicyRule::default()
    };
    let events = PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec!["events".into()]),
        verbs: vec!["create".into(), "patch".into(), "get".into()],
        ..PolicyRule::default()
    };
    Role { metadata: meta(ep, name), rules: Some(vec![secrets, events]) }
}

/// Binds [`role`] to [`service_account`].
pub fn role_binding(ep: &TailscaleEndpoints) -> RoleBinding {
    let name = ep_name(ep);
    RoleBinding {
        metadata: meta(ep, name.clone()),
        role_ref: RoleRef { api_group: "rbac.authorization.k8s.io".into(), kind: "Role".into(), name: name.clone() },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name,
            namespace: ep.metadata.namespace.clone(),
            ..Subject::default()
        }]),
    }
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), value_from: None }
}

fn env_field(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { api_version: Some("v1".into()), field_path: field_path.into() }),
            ..EnvVarSource::default()
        }),
    }
}

fn protocol(p: &Option<String>) -> String {
    p.clone().unwrap_or_else(|| "TCP".into())
}

fn port_name(name: &Option<String>, protocol: &str, port: i32) -> String {
    name.clone().unwrap_or_else(|| format!("{}-{port}", protocol.to_ascii_lowercase()))
}

/// The proxies' StatefulSet. Every pod mounts every replica's config Secret under
/// `/etc/tsconfig/<pod name>` and picks its own through `TS_EXPERIMENTAL_VERSIONED_CONFIG_DIR`.
// long: one StatefulSet built field by field (volumes, mounts, container, pod spec), read best in one place.
pub fn stateful_set(ep: &TailscaleEndpoints, default_image: &str) -> StatefulSet {
    let name = ep_name(ep);
    let proxy = ep.spec.proxy.clone().unwrap_or_default();
    let n = replicas(ep);
    let mut pod_labels = object_labels(&name);
    let mode = ConnectionType::of(ep);
    pod_labels.insert(CONNECTION_TYPE_LABEL.into(), mode.as_str().into());
    let mut volumes: Vec<Volume> = (0..n)
        .map(|i| Volume {
            name: format!("tailscaledconfig-{i}"),
            secret: Some(SecretVolumeSource {
                secret_name: Some(config_secret_name(&name, i)),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        })
        .collect();
    volumes.push(Volume {
        name: PROXIES_VOLUME.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: proxies_config_map_name(&name),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    });
    let mut mounts: Vec<VolumeMount> = (0..n)
        .map(|i| VolumeMount {
            name: format!("tailscaledconfig-{i}"),
            mount_path: format!("{CONFIG_DIR}/{}", state_secret_name(&name, i)),
            read_only: Some(true),
            ..VolumeMount::default()
        })
        .collect();
    mounts.push(VolumeMount {
        name: PROXIES_VOLUME.into(),
        mount_path: PROXIES_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    });
    let mut ports: Vec<ContainerPort> = ep
        .spec
        .ports
        .iter()
        .map(|p| {
            let proto = protocol(&p.protocol);
            ContainerPort {
                name: Some(port_name(&p.name, &proto, p.port)),
                container_port: p.port,
                protocol: Some(proto),
                ..ContainerPort::default()
            }
        })
        .collect();
    ports.push(ContainerPort {
        name: Some("health".into()),
        container_port: HEALTH_PORT,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    });
    let container = Container {
        name: "tailscale".into(),
        image: Some(proxy.image.clone().unwrap_or_else(|| default_image.to_string())),
        env: Some(proxy_env(mode)),
        ports: Some(ports),
        volume_mounts: Some(mounts),
        resources: Some(proxy.resources.clone().unwrap_or_else(default_resources)),
        security_context: Some(container_security_context(mode)),
        readiness_probe: Some(readiness_probe()),
        lifecycle: mode.egress().then(egress_pre_stop),
        ..Container::default()
    };
    let image = container.image.clone().unwrap_or_default();
    StatefulSet {
        metadata: meta(ep, name.clone()),
        spec: Some(StatefulSetSpec {
            replicas: Some(n),
            service_name: Some(proxy_service_name(&name)),
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector { match_labels: Some(selector_labels(&name)), ..LabelSelector::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(pod_labels), ..ObjectMeta::default() }),
                spec: Some(PodSpec {
                    service_account_name: Some(name.clone()),
                    security_context: Some(pod_security_context(mode)),
                    init_containers: mode.egress().then(|| vec![sysctler(&image)]),
                    containers: vec![container],
                    volumes: Some(volumes),
                    termination_grace_period_seconds: mode.egress().then_some(EGRESS_GRACE_SECONDS),
                    node_selector: proxy.node_selector.clone(),
                    tolerations: proxy.tolerations.clone(),
                    affinity: proxy.affinity.clone(),
                    ..PodSpec::default()
                }),
            },
            ..StatefulSetSpec::default()
        }),
        status: None,
    }
}

/// Requests when the spec sets no resources: a userspace tailscaled on a mid-sized tailnet. No
/// limits: a CPU limit throttles forwarding, and a memory limit too low for a large netmap kills
/// the proxy; set them in `spec.proxy.resources` where a quota asks for them.
pub fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("50m".into())),
            ("memory".to_string(), Quantity("128Mi".into())),
        ])),
        ..ResourceRequirements::default()
    }
}

/// The proxy container's environment. Every mode reads its tailscaled config from the
/// versioned config dir and serves `/healthz`; we decide what each replica advertises
/// (`TS_EXPERIMENTAL_SERVICE_AUTO_ADVERTISEMENT=false`). Ingress proxies serve VIPs through the
/// serve config in userspace; egress proxies forward to tailnet targets with kernel networking.
fn proxy_env(mode: ConnectionType) -> Vec<EnvVar> {
    let mut vars = vec![
        env_field("POD_NAME", "metadata.name"),
        env_field("POD_UID", "metadata.uid"),
        env_field("POD_IP", "status.podIP"),
        // containerboot stamps egress status and answers the pre-stop drain with these.
        env_field("POD_IPS", "status.podIPs"),
        env("TS_KUBE_SECRET", "$(POD_NAME)"),
        env("TS_STATE", "kube:$(POD_NAME)"),
        env("TS_EXPERIMENTAL_VERSIONED_CONFIG_DIR", &format!("{CONFIG_DIR}/$(POD_NAME)")),
        env("TS_USERSPACE", if mode.egress() { "false" } else { "true" }),
        env("TS_ENABLE_HEALTH_CHECK", "true"),
        env("TS_LOCAL_ADDR_PORT", &format!("[::]:{HEALTH_PORT}")),
        env("TS_EXPERIMENTAL_SERVICE_AUTO_ADVERTISEMENT", "false"),
    ];
    if mode.ingress() {
        vars.push(env("TS_SERVE_CONFIG", &format!("{PROXIES_DIR}/{SERVE_CONFIG_KEY}")));
        // One certificate per HTTPS VIP for all replicas: replica 0 issues and renews it into the
        // Secret named after the domain, the others only read it (no per-replica ACME orders).
        vars.push(env("TS_EXPERIMENTAL_CERT_SHARE", "true"));
    }
    if mode.egress() {
        vars.push(env("TS_EGRESS_PROXIES_CONFIG_PATH", PROXIES_DIR));
    }
    vars
}

/// The pod's security context. Ingress (userspace) proxies get what Pod Security's `restricted`
/// level asks for: neither root nor any capability. Egress proxies install netfilter rules, so
/// they run as root in a privileged container (Pod Security `privileged`), as upstream's do.
fn pod_security_context(mode: ConnectionType) -> PodSecurityContext {
    let seccomp = Some(SeccompProfile { type_: "RuntimeDefault".into(), ..SeccompProfile::default() });
    if mode.egress() {
        return PodSecurityContext { seccomp_profile: seccomp, ..PodSecurityContext::default() };
    }
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(PROXY_USER),
        run_as_group: Some(PROXY_USER),
        seccomp_profile: seccomp,
        ..PodSecurityContext::default()
    }
}

/// The proxy container's security context: `restricted` for ingress, privileged for egress.
fn container_security_context(mode: ConnectionType) -> SecurityContext {
    if mode.egress() {
        return SecurityContext { privileged: Some(true), ..SecurityContext::default() };
    }
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Capabilities::default() }),
        ..SecurityContext::default()
    }
}

/// Egress proxies' init container: turns on IP forwarding, which DNAT to the tailnet needs.
fn sysctler(image: &str) -> Container {
    Container {
        name: "sysctler".into(),
        image: Some(image.to_string()),
        command: Some(vec!["/bin/sh".into(), "-c".into()]),
        args: Some(vec![
            "sysctl -w net.ipv4.ip_forward=1 && if sysctl net.ipv6.conf.all.forwarding; then sysctl -w net.ipv6.conf.all.forwarding=1; fi".into(),
        ]),
        security_context: Some(SecurityContext { privileged: Some(true), ..SecurityContext::default() }),
        resources: Some(default_resources()),
        ..Container::default()
    }
}

/// containerboot's pre-stop endpoint for egress proxies: it waits until cluster traffic for the
/// egress targets no longer reaches this pod before the pod stops.
pub const EGRESS_PRE_STOP_PATH: &str = "/internal-egress-services-preshutdown";
/// Grace period of egress pods, long enough for the pre-stop wait.
pub const EGRESS_GRACE_SECONDS: i64 = 360;

fn egress_pre_stop() -> Lifecycle {
    Lifecycle {
        pre_stop: Some(LifecycleHandler {
            http_get: Some(HTTPGetAction {
                path: Some(EGRESS_PRE_STOP_PATH.into()),
                port: IntOrString::Int(HEALTH_PORT),
                ..HTTPGetAction::default()
            }),
            ..LifecycleHandler::default()
        }),
        ..Lifecycle::default()
    }
}

/// Indented JSON, so `kubectl get configmap -o yaml` and `render` read well.
fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()) + "\n"
}

/// Name of the ConfigMap volume mounted at [`PROXIES_DIR`].
pub const PROXIES_VOLUME: &str = "proxies";

/// The proxies' ConfigMap: the serve config (ingress proxies) and the egress targets (egress
/// proxies), from `plan`. `serve_config` is what to write for the serve key, which the
/// controller computes with [`dataplane::serve_config_keeping`] so advertised VIPs keep their
/// entries.
pub fn config_map(ep: &TailscaleEndpoints, plan: &ProxyPlan, serve_config: &serde_json::Value) -> ConfigMap {
    let mode = ConnectionType::of(ep);
    let mut data = BTreeMap::new();
    if mode.ingress() {
        data.insert(SERVE_CONFIG_KEY.to_string(), pretty(serve_config));
    }
    if mode.egress() {
        data.insert(EGRESS_CONFIG_KEY.to_string(), pretty(&dataplane::egress_config(&plan.egress, &plan.match_ports)));
    }
    ConfigMap { metadata: meta(ep, proxies_config_map_name(&ep_name(ep))), data: Some(data), ..ConfigMap::default() }
}

/// Ready once containerboot's `/healthz` says the node has a tailnet address. No liveness probe
/// on it: a proxy waiting for its auth key or the control server is not helped by a restart.
fn readiness_probe() -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/healthz".into()),
            port: IntOrString::String("health".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(5),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

/// The proxies' Service: ClusterIP over the spec's ports and the egress match ports (Envoy
/// reaches a tailnet target at `<service>:<match port>`), or headless when there are none.
pub fn service(ep: &TailscaleEndpoints, plan: &ProxyPlan) -> Service {
    let name = ep_name(ep);
    let mut ports: Vec<ServicePort> = ep
        .spec
        .ports
        .iter()
        .map(|p| {
            let proto = protocol(&p.protocol);
            ServicePort {
                name: Some(port_name(&p.name, &proto, p.port)),
                port: p.port,
                target_port: Some(IntOrString::Int(p.port)),
                protocol: Some(proto),
                ..ServicePort::default()
            }
        })
        .collect();
    let mut match_ports: Vec<u16> = plan.match_ports.values().copied().collect();
    match_ports.sort_unstable();
    ports.extend(match_ports.into_iter().map(|m| ServicePort {
        name: Some(format!("egress-{m}")),
        port: i32::from(m),
        target_port: Some(IntOrString::Int(i32::from(m))),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }));
    let headless = ports.is_empty();
    Service {
        metadata: meta(ep, proxy_service_name(&name)),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: headless.then(|| "None".to_string()),
            selector: Some(selector_labels(&name)),
            ports: (!headless).then_some(ports),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// tailscaled's `ipn.ConfigVAlpha`, the fields we set. `Debug` never prints the auth key.
#[derive(Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TailscaledConfig {
    /// Always `alpha0`.
    pub version: String,
    /// Whether `tailscale set` may change the config (we say no).
    pub locked: bool,
    /// One-off auth key; absent once the device is registered and the key was never written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_key: Option<String>,
    /// Device hostname (the pod name).
    pub hostname: String,
    /// Use the tailnet's DNS settings.
    #[serde(rename = "AcceptDNS")]
    pub accept_dns: bool,
    /// Accept subnet routes from other devices.
    pub accept_routes: bool,
    /// VIP services this replica serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub advertise_services: Vec<String>,
}

impl std::fmt::Debug for TailscaledConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TailscaledConfig")
            .field("hostname", &self.hostname)
            .field("auth_key", &self.auth_key.as_ref().map(|_| "<redacted>"))
            .field("advertise_services", &self.advertise_services)
            .finish_non_exhaustive()
    }
}

/// Replica `i`'s tailscaled config.
pub fn tailscaled_config(endpoints: &str, i: i32, auth_key: Option<String>, advertise: &[String]) -> TailscaledConfig {
    TailscaledConfig {
        version: "alpha0".into(),
        locked: false,
        auth_key,
        hostname: state_secret_name(endpoints, i),
        accept_dns: false,
        accept_routes: false,
        advertise_services: advertise.to_vec(),
    }
}

fn replica_meta(ep: &TailscaleEndpoints, name: String, i: i32, kind: &str) -> ObjectMeta {
    let mut m = meta(ep, name);
    let labels = m.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(REPLICA_LABEL.into(), i.to_string());
    labels.insert(SECRET_TYPE_LABEL.into(), kind.into());
    m
}

/// Replica `i`'s config Secret holding `cap-<capver>.hujson`.
pub fn config_secret(ep: &TailscaleEndpoints, i: i32, config: &TailscaledConfig) -> Result<Secret, serde_json::Error> {
    let body = serde_json::to_vec_pretty(config)?;
    Ok(Secret {
        metadata: replica_meta(ep, config_secret_name(&ep_name(ep), i), i, "config"),
        data: Some(BTreeMap::from([(config_file_name(), ByteString(body))])),
        type_: Some("Opaque".into()),
        ..Secret::default()
    })
}

/// Replica `i`'s state Secret. Created empty: the proxy fills it (we never send `data`, so our
/// apply never overwrites what the proxy wrote).
pub fn state_secret(ep: &TailscaleEndpoints, i: i32) -> Secret {
    Secret {
        metadata: replica_meta(ep, state_secret_name(&ep_name(ep), i), i, "state"),
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}

/// Value of [`SECRET_TYPE_LABEL`] on the shared certificate Secrets.
pub const CERT_SECRET_TYPE: &str = "certs";

/// The shared certificate Secret of an HTTPS VIP, named after its MagicDNS name as tailscaled's
/// Kubernetes store expects. Created empty and never written by us again: replica 0 fills it.
pub fn cert_secret(ep: &TailscaleEndpoints, domain: &str) -> Secret {
    let mut metadata = meta(ep, domain.to_string());
    metadata.labels.get_or_insert_with(BTreeMap::new).insert(SECRET_TYPE_LABEL.into(), CERT_SECRET_TYPE.into());
    Secret { metadata, type_: Some("Opaque".into()), ..Secret::default() }
}

/// Whether a shared certificate Secret holds a certificate yet.
pub fn has_certificate(secret: &Secret) -> bool {
    secret.data.as_ref().and_then(|d| d.get("tls.crt")).is_some_and(|c| !c.0.is_empty())
}

/// Whether a Secret is one of the shared certificate Secrets.
pub fn is_cert_secret(secret: &Secret) -> bool {
    secret.metadata.labels.as_ref().and_then(|l| l.get(SECRET_TYPE_LABEL)).map(String::as_str) == Some(CERT_SECRET_TYPE)
}

/// The auth key already in a config Secret, if any.
pub fn existing_auth_key(secret: &Secret) -> Option<String> {
    let raw = secret.data.as_ref()?.get(&config_file_name())?;
    let config: TailscaledConfig = serde_json::from_slice(&raw.0).ok()?;
    config.auth_key.filter(|k| !k.is_empty())
}

/// The VIP services a config Secret tells its replica to advertise.
pub fn advertised_services(secret: &Secret) -> Vec<String> {
    let Some(raw) = secret.data.as_ref().and_then(|d| d.get(&config_file_name())) else { return Vec::new() };
    serde_json::from_slice::<TailscaledConfig>(&raw.0).map(|c| c.advertise_services).unwrap_or_default()
}

/// The replica index of one of our per-replica Secrets.
pub fn replica_index(secret: &Secret) -> Option<i32> {
    secret.metadata.labels.as_ref()?.get(REPLICA_LABEL)?.parse().ok()
}

/// Whether a Secret is a config (`true`) or state (`false`) Secret; `None` when neither.
pub fn is_config_secret(secret: &Secret) -> Option<bool> {
    match secret.metadata.labels.as_ref()?.get(SECRET_TYPE_LABEL)?.as_str() {
        "config" => Some(true),
        "state" => Some(false),
        _ => None,
    }
}

/// What a proxy wrote into its state Secret about its device.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeviceState {
    /// Stable node ID (`device_id`).
    pub node_id: Option<String>,
    /// MagicDNS FQDN (`device_fqdn`).
    pub fqdn: Option<String>,
    /// Tailscale IPs (`device_ips`, a JSON array).
    pub ips: Vec<String>,
}

/// Reads `device_id`, `device_fqdn` and `device_ips` from a state Secret.
pub fn device_state(secret: &Secret) -> DeviceState {
    let get = |k: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .filter(|s| !s.is_empty())
    };
    DeviceState {
        node_id: get("device_id"),
        fqdn: get("device_fqdn").map(|f| f.trim_end_matches('.').to_string()),
        ips: get("device_ips").and_then(|s| serde_json::from_str::<Vec<String>>(&s).ok()).unwrap_or_default(),
    }
}

/// Joins replica `i`'s state with the tailnet's live device list (by node ID).
pub fn device_status(endpoints: &str, i: i32, state: &DeviceState, live: &[Device]) -> Option<DeviceStatus> {
    let node_id = state.node_id.clone()?;
    let pod = state_secret_name(endpoints, i);
    let device = live.iter().find(|d| d.node_id == node_id);
    let fqdn = device
        .map(|d| d.name.trim_end_matches('.').to_string())
        .filter(|n| !n.is_empty())
        .or_else(|| state.fqdn.clone());
    let addresses = match device {
        Some(d) if !d.addresses.is_empty() => d.addresses.clone(),
        _ => state.ips.clone(),
    };
    let hostname = device
        .map(|d| d.hostname.clone())
        .filter(|h| !h.is_empty())
        .or_else(|| fqdn.as_deref().and_then(|f| f.split('.').next()).map(str::to_string))
        .unwrap_or_else(|| pod.clone());
    let connected = device.is_some_and(|d| d.connected_to_control);
    Some(DeviceStatus {
        hostname,
        tailscale_ip: addresses.first().cloned(),
        addresses,
        tailscale_fqdn: fqdn,
        node_id: Some(node_id),
        stateful_set_pod: Some(pod),
        connected,
        online: connected,
        last_seen: device.and_then(|d| d.last_seen.clone()),
        tags: device.map(|d| d.tags.clone()).unwrap_or_default(),
        os: device.and_then(|d| d.os.clone()),
        client_version: device.and_then(|d| d.client_version.clone()),
    })
}

/// Observed facts about the proxies' StatefulSet used in the status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ObservedStatefulSet {
    /// Ready pods.
    pub ready_replicas: i32,
    /// Creation time.
    pub created_at: Option<String>,
}

impl ObservedStatefulSet {
    /// Reads the facts off a StatefulSet from the API server.
    pub fn of(sts: &StatefulSet) -> Self {
        Self {
            ready_replicas: sts.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0),
            created_at: sts.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()),
        }
    }
}

/// The whole status of a TailscaleEndpoints. `devices` are the replicas with a registered
/// device; Ready when their number equals the desired replicas.
pub fn endpoints_status(
    ep: &TailscaleEndpoints,
    devices: Vec<DeviceStatus>,
    sts: Option<&ObservedStatefulSet>,
    now: Timestamp,
) -> TailscaleEndpointsStatus {
    let name = ep_name(ep);
    let want = replicas(ep);
    let have = devices.len() as i32;
    let previous: &[Condition] = ep.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let ready = status::condition(
        Desired {
            type_: READY,
            ok: have == want,
            reason: if have == want { "DevicesReady" } else { "WaitingForDevices" },
            message: format!("{have}/{want} devices registered in the tailnet"),
        },
        ep.metadata.generation,
        now,
        previous,
    );
    TailscaleEndpointsStatus {
        conditions: vec![ready],
        device_count: Some(have),
        devices,
        stateful_sets: vec![StatefulSetStatus {
            name: name.clone(),
            namespace: ep.metadata.namespace.clone().unwrap_or_default(),
            type_: Some(ConnectionType::of(ep).as_str().into()),
            replicas: want,
            ready_replicas: sts.map(|s| s.ready_replicas).unwrap_or(0),
            service: Some(proxy_service_name(&name)),
            created_at: sts.and_then(|s| s.created_at.clone()),
        }],
        observed_generation: ep.metadata.generation,
    }
}

/// Where a TailscaleServices' VIP service stands after this reconcile.
#[derive(Clone, Debug, PartialEq)]
pub enum VipOutcome {
    /// Created or attached; as the API reports it.
    Ready(crate::tailscale::VipService),
    /// Owned by someone else; we leave it alone.
    Foreign(String),
    /// Cannot be placed yet (reason, message); the last known VIP status is kept.
    Pending(&'static str, String),
}

/// The selected TailscaleEndpoints by what they carry, for the `Published` condition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SelectedProxies {
    /// Names of the ingress-capable ones (they publish the VIP).
    pub ingress: Vec<String>,
    /// Names of the egress-capable ones (Envoy reaches the VIP through them).
    pub egress: Vec<String>,
}

impl SelectedProxies {
    /// Sorts `selected` by connection type.
    pub fn of(selected: &[std::sync::Arc<TailscaleEndpoints>]) -> Self {
        let mut out = Self::default();
        for ep in selected {
            let ct = ConnectionType::of(ep);
            let name = ep_name(ep);
            if ct.ingress() {
                out.ingress.push(name.clone());
            }
            if ct.egress() {
                out.egress.push(name);
            }
        }
        out
    }
}

/// `Published`: whether this cluster serves the VIP, on which ports, by which proxies, and which
/// egress proxies reach it.
fn published(svc: &TailscaleServices, proxies: &SelectedProxies, vip_ok: bool) -> Desired<'static> {
    let egress = match proxies.egress.as_slice() {
        [] => String::new(),
        names => format!("; reached from Envoy through {}", names.join(", ")),
    };
    let ports: Vec<String> = svc
        .spec
        .serve
        .iter()
        .map(|s| format!("{}/{}", s.port, s.protocol.as_deref().unwrap_or(dataplane::ServeProtocol::DEFAULT)))
        .collect();
    let (ok, reason, message) = match (ports.is_empty(), proxies.ingress.is_empty(), vip_ok) {
        (true, _, _) => {
            (false, "NotServedHere", format!("spec.serve is empty: another cluster publishes the VIP service{egress}"))
        }
        (false, true, _) => (
            false,
            "NoIngressProxies",
            format!(
                "no selected TailscaleEndpoints is ingress or bidirectional, so nothing serves {}{egress}",
                ports.join(", ")
            ),
        ),
        (false, false, false) => {
            (false, "WaitingForVIPService", format!("{} waits for the VIP service{egress}", ports.join(", ")))
        }
        (false, false, true) => {
            (true, "Published", format!("{} served by {}{egress}", ports.join(", "), proxies.ingress.join(", ")))
        }
    };
    Desired { type_: PUBLISHED, ok, reason, message }
}

/// The whole status of a TailscaleServices: selection, VIP service and conditions.
pub fn services_status(
    svc: &TailscaleServices,
    selected: Vec<SelectedEndpointsStatus>,
    proxies: &SelectedProxies,
    outcome: &VipOutcome,
    magic_dns_suffix: Option<&str>,
    now: Timestamp,
) -> TailscaleServicesStatus {
    let previous = svc.status.clone().unwrap_or_default();
    let backends: i32 = selected.iter().map(|s| s.machines.len() as i32).sum();
    let healthy: i32 = selected.iter().map(|s| s.healthy_machines.unwrap_or(0)).sum();
    let (vip_service, vip_cond) = match outcome {
        VipOutcome::Ready(v) => (
            Some(VipServiceStatus {
                name: Some(v.name.clone()),
                addresses: v.addrs.clone(),
                dns_name: crate::vip::dns_name(&v.name, magic_dns_suffix),
                backend_count: backends,
                healthy_backends: healthy,
            }),
            Desired {
                type_: VIP_SERVICE_READY,
                ok: true,
                reason: "VIPServiceReady",
                message: format!("{} is served by {healthy}/{backends} backends", v.name),
            },
        ),
        VipOutcome::Foreign(msg) => {
            (None, Desired { type_: VIP_SERVICE_READY, ok: false, reason: "OwnedByAnother", message: msg.clone() })
        }
        VipOutcome::Pending(reason, msg) => (
            previous.vip_service.clone().map(|mut v| {
                v.backend_count = backends;
                v.healthy_backends = healthy;
                v
            }),
            Desired { type_: VIP_SERVICE_READY, ok: false, reason, message: msg.clone() },
        ),
    };
    let vip_ok = matches!(outcome, VipOutcome::Ready(_));
    let ready = match (vip_ok, selected.is_empty(), healthy > 0) {
        (false, _, _) => {
            Desired { type_: READY, ok: false, reason: "VIPServiceNotReady", message: vip_cond.message.clone() }
        }
        (true, true, _) => Desired {
            type_: READY,
            ok: false,
            reason: "NoEndpointsSelected",
            message: "the selector matches no TailscaleEndpoints".into(),
        },
        (true, false, false) => Desired {
            type_: READY,
            ok: false,
            reason: "NoHealthyBackends",
            message: format!("0/{backends} backends online"),
        },
        (true, false, true) => Desired {
            type_: READY,
            ok: true,
            reason: "Ready",
            message: format!("{healthy}/{backends} backends online"),
        },
    };
    let generation = svc.metadata.generation;
    TailscaleServicesStatus {
        conditions: vec![
            status::condition(ready, generation, now, &previous.conditions),
            status::condition(vip_cond, generation, now, &previous.conditions),
            status::condition(published(svc, proxies, vip_ok), generation, now, &previous.conditions),
        ],
        endpoint_count: Some(selected.len() as i32),
        selected_endpoints: selected,
        vip_service,
        observed_generation: generation,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::{PortSpec, ProxySpec, TailscaleEndpointsSpec};

    fn ep(replicas: i32) -> TailscaleEndpoints {
        let mut ep = TailscaleEndpoints::new(
            "web",
            TailscaleEndpointsSpec {
                tailnet: "corp".into(),
                tags: vec!["tag:k8s-proxy".into()],
                proxy: Some(Box::new(ProxySpec { replicas: Some(replicas), ..ProxySpec::default() })),
                ports: vec![PortSpec { name: None, port: 80, protocol: None }],
                egress_targets: Vec::new(),
            },
        );
        ep.metadata.namespace = Some("prod".into());
        ep.metadata.uid = Some("uid-1".into());
        ep.metadata.generation = Some(3);
        ep
    }

    fn to_json<T: Serialize>(v: &T) -> serde_json::Value {
        serde_json::to_value(v).expect("serializing to JSON")
    }

    #[test]
    fn stateful_set_follows_proxygroup_patterns() {
        let sts = to_json(&stateful_set(&ep(2), "tailscale/tailscale:stable"));
        assert_eq!(sts["apiVersion"], "apps/v1");
        assert_eq!(sts["metadata"]["name"], "web");
        assert_eq!(sts["metadata"]["namespace"], "prod");
        assert_eq!(
            sts["metadata"]["ownerReferences"],
            json!([{"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleEndpoints", "name": "web",
                    "uid": "uid-1", "controller": true, "blockOwnerDeletion": true}])
        );
        assert_eq!(sts["spec"]["replicas"], 2);
        assert_eq!(sts["spec"]["serviceName"], "web-svc");
        assert_eq!(sts["spec"]["selector"]["matchLabels"][ENDPOINTS_LABEL], "web");
        let pod = &sts["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], "web");
        let c = &pod["containers"][0];
        assert_eq!(c["image"], "tailscale/tailscale:stable");
        let env: BTreeMap<String, serde_json::Value> = c["env"]
            .as_array()
            .unwrap_or_else(|| panic!("env"))
            .iter()
            .map(|e| (e["name"].as_str().unwrap_or_default().to_string(), e.clone()))
            .collect();
        assert_eq!(env["TS_KUBE_SECRET"]["value"], "$(POD_NAME)");
        assert_eq!(env["TS_STATE"]["value"], "kube:$(POD_NAME)");
        assert_eq!(env["TS_EXPERIMENTAL_VERSIONED_CONFIG_DIR"]["value"], "/etc/tsconfig/$(POD_NAME)");
        assert_eq!(env["TS_USERSPACE"]["value"], "true");
        assert_eq!(env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
        assert_eq!(env["POD_UID"]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.uid");
        assert_eq!(env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP");
        assert_eq!(
            c["volumeMounts"][1],
            json!({"name": "tailscaledconfig-1", "mountPath": "/etc/tsconfig/web-1", "readOnly": true})
        );
        assert_eq!(pod["volumes"][0]["secret"]["secretName"], "web-0-config");
        assert_eq!(
            c["ports"],
            json!([{"name": "tcp-80", "containerPort": 80, "protocol": "TCP"},
                   {"name": "health", "containerPort": 9002, "protocol": "TCP"}])
        );
        assert_eq!(env["TS_ENABLE_HEALTH_CHECK"]["value"], "true");
        assert_eq!(env["TS_LOCAL_ADDR_PORT"]["value"], "[::]:9002");
        assert_eq!(
            c["readinessProbe"]["httpGet"],
            json!({"path": "/healthz", "port": "health"}),
            "containerboot's health check"
        );
        assert!(c.get("livenessProbe").is_none());
        assert_eq!(c["resources"], json!({"requests": {"cpu": "50m", "memory": "128Mi"}}), "defaults");
        // Pod Security `restricted`: non-root, no escalation, no capabilities, RuntimeDefault seccomp.
        assert_eq!(
            pod["securityContext"],
            json!({"runAsNonRoot": true, "runAsUser": 1000, "runAsGroup": 1000,
                   "seccompProfile": {"type": "RuntimeDefault"}})
        );
        assert_eq!(c["securityContext"], json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}));
        assert!(c["securityContext"].get("privileged").is_none());
        // The spec's image wins over the default.
        let mut custom = ep(1);
        if let Some(p) = custom.spec.proxy.as_mut() {
            p.image = Some("my/proxy:1".into());
            p.resources = Some(ResourceRequirements {
                limits: Some(BTreeMap::from([("memory".to_string(), Quantity("1Gi".into()))])),
                ..ResourceRequirements::default()
            });
        }
        assert_eq!(
            to_json(&stateful_set(&custom, "x"))["spec"]["template"]["spec"]["containers"][0]["resources"],
            json!({"limits": {"memory": "1Gi"}}),
            "the spec's resources replace the defaults"
        );
        assert_eq!(
            to_json(&stateful_set(&custom, "x"))["spec"]["template"]["spec"]["containers"][0]["image"],
            "my/proxy:1"
        );
    }

    #[test]
    fn render_mode_has_no_owner_reference() {
        let mut e = ep(1);
        e.metadata.uid = None;
        assert!(service(&e, &ProxyPlan::default()).metadata.owner_references.is_none());
    }

    #[test]
    fn service_is_cluster_ip_or_headless() {
        let svc = to_json(&service(&ep(2), &ProxyPlan::default()));
        assert_eq!(svc["metadata"]["name"], "web-svc");
        assert_eq!(svc["spec"]["type"], "ClusterIP");
        assert_eq!(svc["spec"]["ports"], json!([{"name": "tcp-80", "port": 80, "targetPort": 80, "protocol": "TCP"}]));
        assert_eq!(svc["spec"]["selector"][ENDPOINTS_LABEL], "web");
        let mut no_ports = ep(2);
        no_ports.spec.ports.clear();
        let headless = to_json(&service(&no_ports, &ProxyPlan::default()));
        assert_eq!(headless["spec"]["clusterIP"], "None");
        assert!(headless["spec"].get("ports").is_none());
    }

    #[test]
    fn rbac_limits_proxies_to_their_state_secrets() {
        let r = to_json(&role(&ep(2), &BTreeSet::from(["web.tail1.ts.net".to_string()])));
        assert_eq!(
            r["rules"][0]["resourceNames"],
            json!(["web-0", "web-1", "web.tail1.ts.net"]),
            "state and certificate Secrets"
        );
        assert_eq!(r["rules"][0]["verbs"], json!(["get", "update", "patch"]));
        let rb = to_json(&role_binding(&ep(2)));
        assert_eq!(rb["subjects"][0], json!({"kind": "ServiceAccount", "name": "web", "namespace": "prod"}));
        assert_eq!(rb["roleRef"]["name"], "web");
        assert_eq!(to_json(&service_account(&ep(2)))["metadata"]["name"], "web");
    }

    #[test]
    fn config_secret_holds_hujson_and_round_trips_the_key() {
        let cfg = tailscaled_config("web", 1, Some("tskey-auth-abc".into()), &["svc:web".into()]);
        assert!(!format!("{cfg:?}").contains("tskey"), "Debug must not print the key");
        let secret = config_secret(&ep(2), 1, &cfg).expect("building the config Secret");
        assert_eq!(secret.metadata.name.as_deref(), Some("web-1-config"));
        let labels = secret.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels[REPLICA_LABEL], "1");
        assert_eq!(labels[SECRET_TYPE_LABEL], "config");
        let raw = &secret.data.as_ref().and_then(|d| d.get("cap-107.hujson")).unwrap_or_else(|| panic!("file")).0;
        let parsed: serde_json::Value = serde_json::from_slice(raw).expect("parsing the HuJSON config");
        assert_eq!(
            parsed,
            json!({"Version": "alpha0", "Locked": false, "AuthKey": "tskey-auth-abc", "Hostname": "web-1",
                   "AcceptDNS": false, "AcceptRoutes": false, "AdvertiseServices": ["svc:web"]})
        );
        assert_eq!(existing_auth_key(&secret).as_deref(), Some("tskey-auth-abc"));
        assert_eq!(replica_index(&secret), Some(1));
        assert_eq!(is_config_secret(&secret), Some(true));
        let keyless = config_secret(&ep(2), 0, &tailscaled_config("web", 0, None, &[]))
            .expect("building the config Secret without a key");
        assert_eq!(existing_auth_key(&keyless), None);
        let raw = &keyless.data.as_ref().and_then(|d| d.get("cap-107.hujson")).unwrap_or_else(|| panic!("file")).0;
        let text = String::from_utf8_lossy(raw);
        assert!(!text.contains("AuthKey") && !text.contains("AdvertiseServices"), "{text}");
    }

    #[test]
    fn state_secret_carries_no_data() {
        let s = state_secret(&ep(2), 0);
        assert_eq!(s.metadata.name.as_deref(), Some("web-0"));
        assert!(s.data.is_none());
        assert_eq!(is_config_secret(&s), Some(false));
    }

    fn state(id: &str) -> Secret {
        Secret {
            data: Some(BTreeMap::from([
                ("device_id".into(), ByteString(id.as_bytes().to_vec())),
                ("device_fqdn".into(), ByteString(b"web-0.tail8eff9.ts.net.".to_vec())),
                ("device_ips".into(), ByteString(br#"["100.64.0.1","fd7a::1"]"#.to_vec())),
            ])),
            ..Secret::default()
        }
    }

    #[test]
    fn device_status_joins_state_with_live_data() {
        let st = device_state(&state("nABC"));
        assert_eq!(st.fqdn.as_deref(), Some("web-0.tail8eff9.ts.net"));
        assert_eq!(st.ips, vec!["100.64.0.1", "fd7a::1"]);
        // Without live data: from the state Secret, offline.
        let d = device_status("web", 0, &st, &[]).unwrap_or_else(|| panic!("device"));
        assert_eq!(d.hostname, "web-0");
        assert_eq!(d.tailscale_ip.as_deref(), Some("100.64.0.1"));
        assert!(!d.online);
        // With live data: live wins.
        let live = Device {
            id: "1".into(),
            node_id: "nABC".into(),
            name: "web-0-1.tail8eff9.ts.net".into(),
            hostname: "web-0-1".into(),
            addresses: vec!["100.64.0.9".into()],
            connected_to_control: true,
            tags: vec!["tag:k8s-proxy".into()],
            last_seen: Some("2025-06-25T10:30:00Z".into()),
            ..Device::default()
        };
        let d = device_status("web", 0, &st, &[live]).unwrap_or_else(|| panic!("device"));
        assert_eq!(d.hostname, "web-0-1");
        assert_eq!(d.tailscale_ip.as_deref(), Some("100.64.0.9"));
        assert!(d.online && d.connected);
        assert_eq!(d.stateful_set_pod.as_deref(), Some("web-0"));
        assert_eq!(d.tags, vec!["tag:k8s-proxy"]);
        // Not registered yet: no device.
        assert_eq!(device_status("web", 1, &DeviceState::default(), &[]), None);
    }

    #[test]
    fn ready_when_devices_equal_replicas_and_stable_when_unchanged() {
        let now: Timestamp = "2025-06-25T10:00:00Z".parse().expect("parsing the timestamp");
        let st = device_state(&state("nABC"));
        let dev = device_status("web", 0, &st, &[]).unwrap_or_else(|| panic!("device"));
        let mut e = ep(2);
        let s1 = endpoints_status(&e, vec![dev.clone()], None, now);
        assert_eq!(s1.conditions[0].status, "False");
        assert_eq!(s1.conditions[0].reason, "WaitingForDevices");
        assert_eq!(s1.device_count, Some(1));
        assert_eq!(s1.observed_generation, Some(3));
        assert_eq!(s1.stateful_sets[0].service.as_deref(), Some("web-svc"));
        e.status = Some(s1.clone());
        let later = now + std::time::Duration::from_secs(60);
        assert_eq!(endpoints_status(&e, vec![dev.clone()], None, later), s1, "same input, same status");
        let mut d2 = dev.clone();
        d2.hostname = "web-1".into();
        let s2 = endpoints_status(&e, vec![dev, d2], None, later);
        assert_eq!(s2.conditions[0].status, "True");
        assert_eq!(s2.conditions[0].last_transition_time.0, later);
    }

    #[test]
    fn services_status_reports_vip_and_backends() {
        let now: Timestamp = "2025-06-25T10:00:00Z".parse().expect("parsing the timestamp");
        let mut svc = TailscaleServices::new("web", Default::default());
        svc.metadata.generation = Some(4);
        let selected = vec![SelectedEndpointsStatus {
            name: "east".into(),
            machines: vec!["east-0".into(), "east-1".into()],
            healthy_machines: Some(1),
        }];
        let vip = crate::tailscale::VipService {
            name: "svc:web".into(),
            addrs: vec!["100.100.100.50".into()],
            ..Default::default()
        };
        let proxies = SelectedProxies { ingress: vec!["east".into()], egress: vec![] };
        let s = services_status(
            &svc,
            selected.clone(),
            &proxies,
            &VipOutcome::Ready(vip.clone()),
            Some("tail8eff9.ts.net"),
            now,
        );
        let v = s.vip_service.clone().unwrap_or_else(|| panic!("vip"));
        assert_eq!(v.dns_name.as_deref(), Some("web.tail8eff9.ts.net"));
        assert_eq!(v.addresses, vec!["100.100.100.50"]);
        assert_eq!((v.backend_count, v.healthy_backends), (2, 1));
        assert_eq!(s.endpoint_count, Some(1));
        assert_eq!(s.conditions[0].status, "True");
        assert_eq!(s.conditions[1].type_, "VIPServiceReady");
        assert_eq!(s.observed_generation, Some(4));
        // A failure to place the VIP keeps the last known VIP status.
        svc.status = Some(s.clone());
        let pending = services_status(
            &svc,
            selected.clone(),
            &proxies,
            &VipOutcome::Pending("TailnetNotReady", "x".into()),
            None,
            now,
        );
        assert_eq!(pending.vip_service.as_ref().map(|v| v.addresses.clone()), Some(vec!["100.100.100.50".to_string()]));
        assert_eq!(pending.conditions[0].reason, "VIPServiceNotReady");
        let foreign =
            services_status(&svc, selected.clone(), &proxies, &VipOutcome::Foreign("not ours".into()), None, now);
        assert_eq!(foreign.vip_service, None);
        assert_eq!(foreign.conditions[1].reason, "OwnedByAnother");
        let none = services_status(
            &svc,
            vec![],
            &SelectedProxies::default(),
            &VipOutcome::Ready(Default::default()),
            None,
            now,
        );
        assert_eq!(none.conditions[0].reason, "NoEndpointsSelected");

        // Published: what this cluster serves, by which proxies, and how Envoy reaches the VIP.
        let published = |svc: &TailscaleServices, proxies: &SelectedProxies| {
            let s = services_status(svc, selected.clone(), proxies, &VipOutcome::Ready(vip.clone()), None, now);
            let c =
                s.conditions.iter().find(|c| c.type_ == "Published").cloned().unwrap_or_else(|| panic!("Published"));
            (c.status, c.reason, c.message)
        };
        assert_eq!(published(&svc, &proxies).1, "NotServedHere");
        svc.spec.serve = vec![crate::api::ServePort {
            port: 443,
            protocol: Some("HTTPS".into()),
            backend_ref: crate::api::ServeBackendRef { name: "web".into(), port: 8080, ..Default::default() },
        }];
        let both = SelectedProxies { ingress: vec!["east".into()], egress: vec!["west".into()] };
        assert_eq!(
            published(&svc, &both),
            ("True".into(), "Published".into(), "443/HTTPS served by east; reached from Envoy through west".into())
        );
        let egress_only = SelectedProxies { ingress: vec![], egress: vec!["west".into()] };
        assert_eq!(published(&svc, &egress_only).1, "NoIngressProxies");
    }
}
