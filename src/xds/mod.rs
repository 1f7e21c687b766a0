//! Envoy Gateway extension server.

/// Generated code of the `envoygateway.extension` protobuf package.
pub mod pb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("envoygateway.extension");
}
