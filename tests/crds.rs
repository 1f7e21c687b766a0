//! `crds/` is generated from the Rust types; this test fails when it is stale.

#[test]
fn checked_in_crds_match_the_types() {
    let generated = tailscale_gateway::api::crds_yaml().expect("generating the CRDs");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/tailscale-gateway.crds.yaml");
    let checked_in = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    assert!(
        generated == checked_in,
        "crds/ is stale: run `cargo run -- crds > crds/tailscale-gateway.crds.yaml` and commit the result"
    );
}

#[test]
fn crds_carry_columns_short_names_and_cel_rules() {
    let yaml = tailscale_gateway::api::crds_yaml().unwrap_or_default();
    for needle in [
        "kind: TailscaleServices",
        "name: VIP",
        "name: ENDPOINTS",
        "name: HEALTHY",
        "- tssvc",
        "x-kubernetes-validations",
        "spec.selector is required unless spec.endpointTemplate is given",
        "subresources:",
        "kind: TailscaleRoutePolicy",
        "- tsrp",
        "action type must be Allow or Deny",
    ] {
        assert!(yaml.contains(needle), "CRDs lack {needle:?}");
    }
    let docs = yaml.matches("kind: CustomResourceDefinition").count();
    assert_eq!(docs, tailscale_gateway::api::crds().len());
}
