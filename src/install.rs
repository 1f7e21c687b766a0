//! Names shared by the binary and the manifests in `deploy/`, `webhooks/` and `apiservice/`.
//!
//! The server patches its own webhook configurations and APIService and keeps its certificate in
//! a Secret; the manifests must create exactly these objects. Keeping the names in one place lets
//! `tests/install.rs` check the YAML against the code instead of against a second copy.

/// The container image a release publishes, as deploy/ references it and the Dockerfile's build
/// command tags it.
pub const IMAGE: &str = concat!("ghcr.io/tailscale-gateway/tailscale-gateway:v", env!("CARGO_PKG_VERSION"));
/// Namespace the manifests install into.
pub const NAMESPACE: &str = "tailscale-gateway";
/// Name of the ServiceAccount, Deployment, ClusterRole and most other objects.
pub const APP_NAME: &str = "tailscale-gateway";
/// The Service in front of the HTTPS port (webhooks and the aggregated API).
pub const SERVICE_NAME: &str = "tailscale-gateway";
/// Port of [`SERVICE_NAME`] (and the container's HTTPS port).
pub const HTTPS_PORT: u16 = 8443;
/// The Service Envoy Gateway dials for the extension server.
pub const XDS_SERVICE_NAME: &str = "tailscale-gateway-xds";
/// Port of [`XDS_SERVICE_NAME`] (and the container's gRPC port).
pub const XDS_PORT: u16 = 5005;
/// Name of both the ValidatingWebhookConfiguration and the MutatingWebhookConfiguration.
pub const WEBHOOK_CONFIG_NAME: &str = "tailscale-gateway";
/// Path of the validating webhook.
pub const VALIDATE_PATH: &str = "/validate";
/// Path of the mutating webhook.
pub const MUTATE_PATH: &str = "/mutate";
/// Group of the aggregated read API.
pub const AGGREGATED_GROUP: &str = "tailnet.gateway.tailscale.com";
/// Version of the aggregated read API.
pub const AGGREGATED_VERSION: &str = "v1alpha1";
/// Resources the aggregated API serves (read-only).
pub const AGGREGATED_RESOURCES: &[&str] = &["tailscaledevices", "selectedendpoints"];
/// Name of the APIService registering the aggregated API (`<version>.<group>`).
pub const APISERVICE_NAME: &str = "v1alpha1.tailnet.gateway.tailscale.com";
/// Secret holding the self-managed CA and serving certificate, shared by all replicas.
pub const CERT_SECRET_NAME: &str = "tailscale-gateway-tls";
/// Lease electing the replica that reconciles (the `--lease-name` default).
pub const LEASE_NAME: &str = "tailscale-gateway-reconciler";
/// Namespace of the authentication ConfigMap an extension API server reads.
pub const AUTH_CONFIGMAP_NAMESPACE: &str = "kube-system";
/// The ConfigMap with the client and requestheader CAs.
pub const AUTH_CONFIGMAP_NAME: &str = "extension-apiserver-authentication";

/// DNS names a client may use for `service` in `namespace`: the serving certificate needs all
/// of them (kube-apiserver dials `<service>.<namespace>.svc`).
pub fn service_dns_names(service: &str, namespace: &str, cluster_domain: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.{cluster_domain}"),
        format!("{service}.{namespace}"),
        service.to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apiservice_name_is_version_dot_group() {
        assert_eq!(APISERVICE_NAME, format!("{AGGREGATED_VERSION}.{AGGREGATED_GROUP}"));
    }

    #[test]
    fn dns_names_start_with_the_one_kube_apiserver_dials() {
        let names = service_dns_names("gw", "ns", "cluster.local");
        assert_eq!(names, ["gw.ns.svc", "gw.ns.svc.cluster.local", "gw.ns", "gw"]);
    }
}
