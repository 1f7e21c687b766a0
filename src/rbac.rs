//! Every Kubernetes API permission the server needs, in one table: the single source of truth
//! for the RBAC objects in `deploy/rbac.yaml` and of the Helm chart's `templates/rbac.yaml`, which
//! [`helm_template`] generates (`tests/helm.rs` fails when the checked-in file is stale).
//!
//! `tests/install.rs` keeps the table honest from both sides: it replays the requests the code
//! sends (reconciler, leader election, self-managed certificates) through
//! [`request_attributes`] and requires each to be allowed by [`PERMISSIONS`], and it requires
//! the manifests to grant exactly the table, nothing more.

use crate::install;

/// Where a permission applies and who grants it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// In every namespace: our ClusterRole, bound by a ClusterRoleBinding.
    Cluster,
    /// Only in the namespace the server runs in: our Role, bound by a RoleBinding.
    InstallNamespace,
    /// Granted by a role Kubernetes ships, which the manifests only bind.
    BuiltIn {
        /// `ClusterRole` or `Role`.
        role_kind: &'static str,
        /// Name of the built-in role.
        role: &'static str,
        /// Namespace of the binding (`None`: a ClusterRoleBinding).
        namespace: Option<&'static str>,
        /// The binding is named `<app>:<binding>`.
        binding: &'static str,
    },
}

/// One RBAC rule the server needs, with the reason it needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permission {
    /// API group (`""` for core).
    pub group: &'static str,
    /// Resource plural, with `/subresource` where one is needed.
    pub resource: &'static str,
    /// RBAC verbs.
    pub verbs: &'static [&'static str],
    /// When not empty, the rule is limited to these object names.
    pub resource_names: &'static [&'static str],
    /// Where it applies.
    pub scope: Scope,
    /// Which code needs it, for reviewers.
    pub why: &'static str,
}

const GW: &str = crate::api::GROUP;
const READ: &[&str] = &["get", "list", "watch"];
const AUTH_DELEGATOR: Scope = Scope::BuiltIn {
    role_kind: "ClusterRole",
    role: "system:auth-delegator",
    namespace: None,
    binding: "auth-delegator",
};

/// Every permission the binary uses. See the module docs for how it is checked.
pub const PERMISSIONS: &[Permission] = &[
    // Our own resources: watched into the cache by every replica, reconciled by the leader.
    Permission {
        group: GW,
        resource: "tailscaletailnets",
        verbs: &["get", "list", "watch", "patch"],
        resource_names: &[],
        scope: Scope::Cluster,
        why: "cache watch; reconciler",
    },
    Permission {
        group: GW,
        resource: "tailscaletailnets/status",
        verbs: &["patch"],
        resource_names: &[],
        scope: Scope::Cluster,
        why: "reconciler status (server-side apply)",
    },
    Permission {
        group: GW,
        resource: "tailscaleendpoints",
        verbs: &["get", "list", "watch", "create", "patch", "delete"],
        resource_names: &[],
        scope: Scope::Cluster,
        why: "cache watch; finalizer; auto-provisioning creates and deletes endpoints",
    },
    Permission {
        group: GW,
        resource: "tailscaleendpoints/status",
        verbs: &["patch"],
        resource_names: &[],
        scope: Scope::Cluster,
        why: "reconciler status (server-side apply)",
    },
    Permission {
        group: GW,
        resource: "tailscaleendpoints/finalizers",
        verbs: &["update"],
        resource_names: &[],
        scope: Scope::Cluster,
        why: "owner references with blockOwnerDeletion on proxy objects",
    },
    Permission {
        group: GW,
        resource: "tailscaleservices",
        verbs: &["get", "list", "watch", "patch"],
        resource_names: &[],
        scope: Scope::Cluster,
        why: "cache watch; finalizer",
    },
    Permission {
        group: GW,
        resource: "tailscaleservices/status",
        verbs: &["patch"],
        resource_names: &[],
        scope: Scope::Cluster,
        why: "reconciler status (server-side apply)",
    },
    Permission {
        group: GW,
        resource: "tailscaleservices/finalizers",
        verbs: &["update"],
        resource_names: &[],
        scope: Scope::Cluster,
        why: "owner references with blockOwnerDeletion on auto-provisioned endpoints",
    },
    Permission {
        group: GW,
        resource: "tailscalegateways",
        verbs: READ,
        resource_names: &[],
        scope: Scope::Cluster,
        why: "cache watch",
    },
    Permission {
        group: GW,
        resource: "tailscaleroutepolicies",
        verbs: READ,
        resource_names: &[],
        scope: Scope::Cluster,
        why: "cache watch",
    },
    Permission {
        group: "",
        resource: "pods",
        verbs: READ,
        resource_names: &[],
        scope: Scope::Cluster,
        why: "route policies: the IPs of our ingress proxies, whose identity headers are trusted",
    },
    Permission {
        group: GW,
        resource: "tailscaleroutepolicies/status",
        verbs: &["patch"],
        resource_names: &[],
        scope: Scope::Cluster,
        why: "reconciler status of route policies (per target)",
    },
    Permission {
        group: "gateway.networking.k8s.io",
        resource: "httproutes",
        verbs: READ,
        resource_names: &[],
        scope: Scope::Cluster,
        why: "extension: the port and weight of backendRefs to our kinds (Envoy Gateway does not send them)",
    },
    Permission {
        group: "gateway.networking.k8s.io",
        resource: "grpcroutes",
        verbs: READ,
        resource_names: &[],
        scope: Scope::Cluster,
        why: "extension: the port and weight of backendRefs to our kinds (Envoy Gateway does not send them)",
    },
    // What the reconciler manages for proxies, in the TailscaleEndpoints' namespaces.
    Permission {
        group: "",
        resource: "secrets",
        verbs: &["get", "list", "watch", "create", "update", "patch", "delete"],
        resource_names: &[],
        scope: Scope::Cluster,
        why: "proxy config/state Secrets, OAuth Secrets, the certificate Secret; update is granted to proxies",
    },
    Permission {
        group: "",
        resource: "configmaps",
        verbs: &["get", "list", "watch", "create", "patch"],
        resource_names: &[],
        scope: Scope::Cluster,
        why: "proxy data-plane ConfigMaps (serve config, egress targets)",
    },
    Permission {
        group: "",
        resource: "services",
        verbs: &["get", "list", "watch", "create", "patch"],
        resource_names: &[],
        scope: Scope::Cluster,
        why: "proxy Services (server-side apply, watched into the reconciler's store)",
    },
    Permission {
        group: "",
        resource: "serviceaccounts",
        verbs: &["get", "list", "watch", "create", "patch"],
        resource_names: &[],
        scope: Scope::Cluster,
        why: "proxy ServiceAccounts (server-side apply, watched into the reconciler's store)",
    },
    Permission {
        group: "rbac.authorization.k8s.io",
        resource: "roles",
        verbs: &["get", "list", "watch", "create", "patch"],
        resource_names: &[],
        scope: Scope::Cluster,
        why: "proxy Roles (server-side apply, watched into the reconciler's store)",
    },
    Permission {
        group: "rbac.authorization.k8s.io",
        resource: "rolebindings",
        verbs: &["get", "list", "watch", "create", "patch"],
        resource_names: &[],
        scope: Scope::Cluster,
        why: "proxy RoleBindings (server-side apply, watched into the reconciler's store)",
    },
    Permission {
        group: "apps",
        resource: "statefulsets",
        verbs: &["get", "list", "watch", "create", "patch"],
        resource_names: &[],
        scope: Scope::Cluster,
        why: "proxy StatefulSets (server-side apply, watched into the reconciler's store)",
    },
    Permission {
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
        resource_names: &[],
        scope: Scope::Cluster,
        why: "reconciler Events",
    },
    Permission {
        group: "",
        resource: "events",
        verbs: &["get", "create", "patch"],
        resource_names: &[],
        scope: Scope::Cluster,
        why: "granted to proxies by their Role (RBAC lets us grant only what we hold)",
    },
    // Self-managed certificates: keep caBundle of our own registrations current.
    Permission {
        group: "admissionregistration.k8s.io",
        resource: "validatingwebhookconfigurations",
        verbs: &["get", "patch"],
        resource_names: &[install::WEBHOOK_CONFIG_NAME],
        scope: Scope::Cluster,
        why: "self-managed certificates: caBundle",
    },
    Permission {
        group: "admissionregistration.k8s.io",
        resource: "mutatingwebhookconfigurations",
        verbs: &["get", "patch"],
        resource_names: &[install::WEBHOOK_CONFIG_NAME],
        scope: Scope::Cluster,
        why: "self-managed certificates: caBundle",
    },
    Permission {
        group: "apiregistration.k8s.io",
        resource: "apiservices",
        verbs: &["get", "patch"],
        resource_names: &[install::APISERVICE_NAME],
        scope: Scope::Cluster,
        why: "self-managed certificates: caBundle",
    },
    // Leader election.
    Permission {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "update"],
        resource_names: &[install::LEASE_NAME],
        scope: Scope::InstallNamespace,
        why: "leader election",
    },
    Permission {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["create"],
        resource_names: &[],
        scope: Scope::InstallNamespace,
        why: "leader election (create cannot be limited by name)",
    },
    // Aggregated API: delegated authentication and authorization.
    Permission {
        group: "authentication.k8s.io",
        resource: "tokenreviews",
        verbs: &["create"],
        resource_names: &[],
        scope: AUTH_DELEGATOR,
        why: "aggregated API: bearer token authentication",
    },
    Permission {
        group: "authorization.k8s.io",
        resource: "subjectaccessreviews",
        verbs: &["create"],
        resource_names: &[],
        scope: AUTH_DELEGATOR,
        why: "aggregated API: authorization",
    },
    Permission {
        group: "",
        resource: "configmaps",
        verbs: READ,
        resource_names: &[install::AUTH_CONFIGMAP_NAME],
        scope: Scope::BuiltIn {
            role_kind: "Role",
            role: "extension-apiserver-authentication-reader",
            namespace: Some(install::AUTH_CONFIGMAP_NAMESPACE),
            binding: "auth-reader",
        },
        why: "aggregated API: client and requestheader CAs",
    },
];

/// What RBAC sees of one request: kube-apiserver's request attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attributes {
    /// RBAC verb (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`).
    pub verb: String,
    /// API group.
    pub group: String,
    /// Resource plural with `/subresource`.
    pub resource: String,
    /// Namespace, for namespaced requests.
    pub namespace: Option<String>,
    /// Object name, when the request names one.
    pub name: Option<String>,
}

impl std::fmt::Display for Attributes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.verb, self.group, self.resource)?;
        if let Some(n) = &self.name {
            write!(f, " {n}")?;
        }
        if let Some(ns) = &self.namespace {
            write!(f, " in {ns}")?;
        }
        Ok(())
    }
}

/// The RBAC attributes of an HTTP request to kube-apiserver, as its request-info resolver derives
/// them. A server-side apply may create the object, so it needs `create` as well as `patch`
/// (except on a subresource).
/// Returns nothing for non-resource paths.
pub fn request_attributes(method: &str, path: &str, query: &str, content_type: &str) -> Vec<Attributes> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segs.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return Vec::new(),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (resource, name, sub) = match rest {
        [resource] => (*resource, None, None),
        [resource, name] => (*resource, Some(name.to_string()), None),
        [resource, name, sub, ..] => (*resource, Some(name.to_string()), Some(*sub)),
        _ => return Vec::new(),
    };
    let watch = query.split('&').any(|kv| kv == "watch=true" || kv == "watch=1");
    // A list or watch limited to one object by field selector carries its name, so RBAC rules
    // with resourceNames can allow it.
    let name = name.or_else(|| {
        query.split('&').find_map(|kv| {
            let value = kv.strip_prefix("fieldSelector=")?;
            let value = value.replace("%3D", "=").replace("%3d", "=");
            let n = value.strip_prefix("metadata.name=")?;
            (!n.contains(',') && !n.contains('%')).then(|| n.to_string())
        })
    });
    let verbs: &[&str] = match (method, rest.len() > 1) {
        ("GET", _) if watch => &["watch"],
        ("GET", true) => &["get"],
        ("GET", false) => &["list"],
        ("POST", _) => &["create"],
        ("PUT", _) => &["update"],
        // Apply creates a missing object; a subresource of a missing object is just not found.
        ("PATCH", _) if content_type.starts_with("application/apply-patch") && sub.is_none() => &["patch", "create"],
        ("PATCH", _) => &["patch"],
        ("DELETE", true) => &["delete"],
        ("DELETE", false) => &["deletecollection"],
        _ => return Vec::new(),
    };
    let resource = match sub {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource.to_string(),
    };
    verbs
        .iter()
        .map(|verb| Attributes {
            verb: verb.to_string(),
            group: group.to_string(),
            resource: resource.clone(),
            namespace: namespace.clone(),
            name: name.clone(),
        })
        .collect()
}

impl Permission {
    /// Whether this rule allows `attrs` for a server installed in `install_namespace`.
    pub fn allows(&self, attrs: &Attributes, install_namespace: &str) -> bool {
        let in_scope = match self.scope {
            Scope::Cluster => true,
            Scope::InstallNamespace => attrs.namespace.as_deref() == Some(install_namespace),
            Scope::BuiltIn { namespace: None, .. } => true,
            Scope::BuiltIn { namespace: Some(ns), .. } => attrs.namespace.as_deref() == Some(ns),
        };
        let named =
            self.resource_names.is_empty() || attrs.name.as_deref().is_some_and(|n| self.resource_names.contains(&n));
        in_scope
            && named
            && self.group == attrs.group
            && self.resource == attrs.resource
            && self.verbs.contains(&attrs.verb.as_str())
    }
}

/// The permission in [`PERMISSIONS`] that allows `attrs`, if any.
pub fn allowed_by(attrs: &Attributes, install_namespace: &str) -> Option<&'static Permission> {
    PERMISSIONS.iter().find(|p| p.allows(attrs, install_namespace))
}

/// The chart's bindings of built-in roles (one per [`Scope::BuiltIn`], in table order), each
/// after a comment saying what the role grants that we need.
fn built_in_bindings(out: &mut String, labels: &str, subject: &str) {
    use std::fmt::Write as _;
    let app = install::APP_NAME;
    let mut built_in: Vec<Scope> = Vec::new();
    for p in PERMISSIONS {
        if matches!(p.scope, Scope::BuiltIn { .. }) && !built_in.contains(&p.scope) {
            built_in.push(p.scope);
        }
    }
    for scope in built_in {
        let Scope::BuiltIn { role_kind, role, namespace, binding } = scope else { continue };
        let granted: Vec<String> = PERMISSIONS
            .iter()
            .filter(|p| p.scope == scope)
            .map(|p| format!("{} {}/{}", p.verbs.join(","), p.group, p.resource))
            .collect();
        let _ = writeln!(out, "---\n# {role}: {}", granted.join("; "));
        let kind = if namespace.is_some() { "RoleBinding" } else { "ClusterRoleBinding" };
        let _ =
            write!(out, "apiVersion: rbac.authorization.k8s.io/v1\nkind: {kind}\nmetadata:\n  name: {app}:{binding}\n");
        if let Some(ns) = namespace {
            let _ = writeln!(out, "  namespace: {ns}");
        }
        let _ = write!(
            out,
            "{labels}roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: {role_kind}\n  name: {role}\n{subject}"
        );
    }
}

/// Where the chart's generated RBAC template lives, relative to the repository root.
pub const HELM_TEMPLATE_PATH: &str = "charts/tailscale-gateway/templates/rbac.yaml";

/// The Helm chart's `templates/rbac.yaml`, generated from [`PERMISSIONS`]: the ServiceAccount, the
/// ClusterRole and Role with their bindings, the bindings of the built-in roles, and the ClusterRole
/// that aggregates read access into `view`. `tests/helm.rs` fails when the checked-in file differs.
pub fn helm_template() -> String {
    use std::fmt::Write as _;
    const NS: &str = "{{ include \"tailscale-gateway.namespace\" . }}";
    let app = install::APP_NAME;
    let list = |items: &[&str]| items.iter().map(|i| format!("{i:?}")).collect::<Vec<_>>().join(", ");
    let rules = |out: &mut String, scope: Scope| {
        for p in PERMISSIONS.iter().filter(|p| p.scope == scope) {
            let _ = writeln!(out, "# {}", p.why);
            let _ = writeln!(out, "- apiGroups: [{:?}]", p.group);
            let _ = writeln!(out, "  resources: [{:?}]", p.resource);
            if !p.resource_names.is_empty() {
                let _ = writeln!(out, "  resourceNames: [{}]", list(p.resource_names));
            }
            let _ = writeln!(out, "  verbs: [{}]", list(p.verbs));
        }
    };
    let labels = format!("  labels:\n    app.kubernetes.io/name: {app}\n");
    let subject = format!("subjects:\n- kind: ServiceAccount\n  name: {app}\n  namespace: {NS}\n");
    let mut out = String::new();
    out.push_str(
        "# Generated from the table in src/rbac.rs; do not edit. tests/helm.rs keeps this file in sync:\n\
         # `TSGW_UPDATE_CHART=1 cargo test --test helm generated` rewrites it.\n",
    );
    let _ = write!(out, "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {app}\n  namespace: {NS}\n{labels}");
    let _ = write!(
        out,
        "---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: {app}\n{labels}rules:\n"
    );
    rules(&mut out, Scope::Cluster);
    let _ = write!(
        out,
        "---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: {app}\n{labels}\
         roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: {app}\n{subject}"
    );
    let _ = write!(
        out,
        "---\napiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: {app}\n  namespace: {NS}\n\
         {labels}rules:\n"
    );
    rules(&mut out, Scope::InstallNamespace);
    let _ = write!(
        out,
        "---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: {app}\n  namespace: {NS}\n\
         {labels}roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Role\n  name: {app}\n{subject}"
    );
    let plurals: Vec<String> = crate::api::crds().into_iter().map(|c| c.spec.names.plural).collect();
    built_in_bindings(&mut out, &labels, &subject);
    let _ = write!(
        out,
        "---\n# Everyone with `view` (and so `edit` and `admin`) reads our resources and the aggregated API.\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: {app}:view\n{labels}\
         \x20   rbac.authorization.k8s.io/aggregate-to-view: \"true\"\nrules:\n\
         - apiGroups: [{:?}]\n  resources: [{}]\n  verbs: [\"get\", \"list\", \"watch\"]\n\
         - apiGroups: [{:?}]\n  resources: [{}]\n  verbs: [\"get\", \"list\", \"watch\"]\n",
        install::AGGREGATED_GROUP,
        list(install::AGGREGATED_RESOURCES),
        crate::api::GROUP,
        list(&plurals.iter().map(String::as_str).collect::<Vec<_>>()),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(method: &str, path: &str, query: &str) -> Attributes {
        let mut all = request_attributes(method, path, query, "application/json");
        assert_eq!(all.len(), 1, "{method} {path}");
        all.remove(0)
    }

    #[test]
    fn attributes_follow_kube_apiserver() {
        let a = one("GET", "/api/v1/namespaces/prod/secrets/web-0", "");
        assert_eq!((a.verb.as_str(), a.group.as_str(), a.resource.as_str()), ("get", "", "secrets"));
        assert_eq!((a.namespace.as_deref(), a.name.as_deref()), (Some("prod"), Some("web-0")));
        let a = one("GET", "/apis/gateway.tailscale.com/v1alpha1/tailscaletailnets", "watch=true&timeoutSeconds=290");
        assert_eq!((a.verb.as_str(), a.namespace), ("watch", None));
        let a = one("PATCH", "/apis/gateway.tailscale.com/v1alpha1/namespaces/p/tailscaleendpoints/w/status", "");
        assert_eq!((a.verb.as_str(), a.resource.as_str()), ("patch", "tailscaleendpoints/status"));
        let a = one("GET", "/api/v1/namespaces/kube-system/configmaps", "fieldSelector=metadata.name%3Dx&watch=true");
        assert_eq!((a.verb.as_str(), a.name.as_deref()), ("watch", Some("x")));
        let a = one("GET", "/api/v1/namespaces", "");
        assert_eq!((a.verb.as_str(), a.resource.as_str(), a.namespace), ("list", "namespaces", None));
        let apply = request_attributes("PATCH", "/api/v1/namespaces/p/services/s", "", "application/apply-patch+yaml");
        let verbs: Vec<&str> = apply.iter().map(|a| a.verb.as_str()).collect();
        assert_eq!(verbs, ["patch", "create"]);
        let status =
            request_attributes("PATCH", "/api/v1/namespaces/p/services/s/status", "", "application/apply-patch+yaml");
        assert_eq!(status.len(), 1, "status apply never creates");
        assert!(request_attributes("GET", "/healthz", "", "").is_empty());
    }

    #[test]
    fn names_and_namespaces_limit_rules() {
        let lease = |ns: &str, name: &str, verb: &str| Attributes {
            verb: verb.into(),
            group: "coordination.k8s.io".into(),
            resource: "leases".into(),
            namespace: Some(ns.into()),
            name: Some(name.into()),
        };
        assert!(allowed_by(&lease("tsgw", install::LEASE_NAME, "update"), "tsgw").is_some());
        assert!(allowed_by(&lease("tsgw", "other", "update"), "tsgw").is_none(), "limited by name");
        assert!(allowed_by(&lease("elsewhere", install::LEASE_NAME, "update"), "tsgw").is_none(), "own namespace");
        assert!(allowed_by(&lease("tsgw", install::LEASE_NAME, "delete"), "tsgw").is_none(), "verb");
        let cm = Attributes {
            verb: "get".into(),
            group: String::new(),
            resource: "configmaps".into(),
            namespace: Some("kube-system".into()),
            name: Some(install::AUTH_CONFIGMAP_NAME.into()),
        };
        assert!(allowed_by(&cm, "tsgw").is_some());
        let write = Attributes { verb: "update".into(), ..cm.clone() };
        assert!(allowed_by(&Attributes { name: Some("coredns".into()), ..write }, "tsgw").is_none());
    }

    #[test]
    fn every_rule_says_why_and_uses_known_verbs() {
        const VERBS: &[&str] = &["get", "list", "watch", "create", "update", "patch", "delete"];
        for p in PERMISSIONS {
            assert!(!p.why.is_empty(), "{p:?}");
            assert!(p.verbs.iter().all(|v| VERBS.contains(v)), "{p:?}");
            assert!(
                p.resource_names.is_empty() || !p.verbs.contains(&"create"),
                "{}: RBAC cannot limit create by name",
                p.resource
            );
        }
    }
}
