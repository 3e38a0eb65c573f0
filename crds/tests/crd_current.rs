//! The checked-in CRD manifest is the one the code generates.

use std::path::Path;

#[test]
fn checked_in_crd_matches_the_code() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(scale_agent_crds::CRD_FILE);
    let generated = scale_agent_crds::crd_yaml().expect("the CRD serializes to YAML");
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "{} is stale or missing: the AgentShard types changed since it was generated.\n\
         Run `just crds` (or `cargo run -p scale-agent-crds --bin crdgen`) and commit the result.",
        path.display()
    );
}

#[test]
fn checked_in_crd_reads_back_as_a_crd() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let yaml = scale_agent_crds::crd_yaml().expect("the CRD serializes to YAML");
    let back: CustomResourceDefinition =
        serde_yaml::from_str(&yaml).expect("the manifest is a CustomResourceDefinition");
    assert_eq!(back, scale_agent_crds::crd());
}
