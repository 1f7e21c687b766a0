//! Property tests over what peers send (issue 17): the admission review parser, the label and
//! field selector and list-option parsers, the aggregated API's path parser, the extension's
//! resource decoder and its wire-level list counter never panic on any input, and the counter
//! agrees with prost on what it counts. A fixed number of cases, so the run takes seconds.

use proptest::prelude::*;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::route::v3::{Route, RouteConfiguration, VirtualHost};
use prost::Message;
use tailscale_gateway::aggregated::request::{FieldSelector, ListOptions, Target};
use tailscale_gateway::core::selector::Selector;
use tailscale_gateway::xds::limits::{decoded_size, list_sizes};
use tailscale_gateway::xds::pb::PostTranslateModifyRequest;

const VALID_REVIEW: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"gateway.tailscale.com","version":"v1alpha1","kind":"TailscaleTailnet"},"resource":{"group":"gateway.tailscale.com","version":"v1alpha1","resource":"tailscaletailnets"},"namespace":"default","operation":"CREATE","userInfo":{"username":"admin"},"object":{"apiVersion":"gateway.tailscale.com/v1alpha1","kind":"TailscaleTailnet","metadata":{"name":"corp"},"spec":{"oauthSecretRef":{"name":"oauth"}}}}}"#;

fn config() -> ProptestConfig {
    ProptestConfig { cases: 2048, failure_persistence: None, ..ProptestConfig::default() }
}

/// A valid review with `n` bytes from `at` on replaced by `with`: mostly broken JSON and values
/// of the wrong type, near enough to valid to go deep into the parser.
fn mutated_review() -> impl Strategy<Value = Vec<u8>> {
    let len = VALID_REVIEW.len();
    (0..len, 0usize..16, proptest::collection::vec(any::<u8>(), 0..16)).prop_map(move |(at, n, with)| {
        let mut bytes = VALID_REVIEW.as_bytes().to_vec();
        let end = (at + n).min(len);
        bytes.splice(at..end, with);
        bytes
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_review_parser_never_panics(body in prop_oneof![mutated_review(), proptest::collection::vec(any::<u8>(), 0..512)]) {
        let _ = tailscale_gateway::admission::parse_review(&body, true);
        let _ = tailscale_gateway::admission::parse_review(&body, false);
    }

    #[test]
    fn selectors_and_list_options_never_panic(s in "[a-z0-9=!,()/.\\\\ _-]{0,64}|\\PC{0,64}") {
        let _ = Selector::parse(&s);
        let _ = FieldSelector::parse(&s);
        let pairs: Vec<(String, String)> = ["labelSelector", "fieldSelector", "limit", "continue", "timeoutSeconds", "resourceVersion", "watch"]
            .iter()
            .map(|k| (k.to_string(), s.clone()))
            .collect();
        for pair in pairs {
            let _ = ListOptions::from_query(&[pair]);
        }
        let _ = Target::parse(&format!("/apis/tailnet.gateway.tailscale.com/v1alpha1/{s}"), true);
    }

    #[test]
    fn the_extension_resource_decoder_never_panics(bytes in prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        "\\{\"apiVersion\":\"gateway.tailscale.com/v1alpha1\",\"kind\":\"(TailscaleServices|TailscaleEndpoints|X)\",\"metadata\":\\{\"name\":\"[a-z\\-]{0,8}\"\\},\"spec\":\\PC{0,32}\\}".prop_map(String::into_bytes),
    ]) {
        let _ = tailscale_gateway::xds::backend::parse_backend(&bytes);
        prop_assert!(tailscale_gateway::xds::backend::identity(&bytes).len() < 4096);
    }

    #[test]
    fn the_wire_walkers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        for method in ["PostTranslateModify", "PostClusterModify", "PostRouteModify", "PostHTTPListenerModify", "PostVirtualHostModify", "PostEndpointsModify"] {
            let _ = list_sizes(method, &bytes);
            prop_assert!(decoded_size(method, &bytes, usize::MAX).is_some(), "{} has a schema", method);
        }
    }

    #[test]
    fn the_wire_counter_counts_what_prost_decodes(clusters in 0usize..40, hosts in proptest::collection::vec(0usize..6, 0..6)) {
        let routes: usize = hosts.iter().sum();
        let req = PostTranslateModifyRequest {
            clusters: (0..clusters).map(|i| Cluster { name: format!("c{i}"), ..Cluster::default() }).collect(),
            routes: vec![RouteConfiguration {
                virtual_hosts: hosts.iter().map(|n| VirtualHost { routes: vec![Route::default(); *n], ..VirtualHost::default() }).collect(),
                ..RouteConfiguration::default()
            }],
            ..PostTranslateModifyRequest::default()
        };
        let sizes = list_sizes("PostTranslateModify", &req.encode_to_vec());
        let of = |name: &str| sizes.iter().find(|(n, _)| *n == name).map_or(0, |(_, c)| *c);
        prop_assert_eq!(of("clusters"), clusters);
        prop_assert_eq!(of("virtual hosts"), hosts.len());
        prop_assert_eq!(of("routes"), routes);
    }
}
