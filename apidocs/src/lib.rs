//! The API documents, generated from the code.
//!
//! * `docs/asyncapi.yaml`: every stream, message and consumer, from the
//!   contract crate ([`contract::asyncapi`]);
//! * `docs/openapi/<service>.json`: each service's REST routes, from its
//!   handlers (utoipa), exactly what the service serves at
//!   `/api/v1/openapi.json`.
//!
//! `cargo run -p apidocs` writes them; `cargo run -p apidocs -- --check`
//! (and this crate's test, in `make test`) fails when a committed file
//! differs from what the code generates.

use std::path::{Path, PathBuf};

/// The workspace version, as every document states it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Every document: its path under the workspace root and its text.
pub fn documents() -> anyhow::Result<Vec<(PathBuf, String)>> {
    let mut docs = vec![(
        PathBuf::from("docs/asyncapi.yaml"),
        format!(
            "# GENERATED from contract/src/events.rs by `cargo run -p apidocs`; do not edit.\n{}",
            serde_yaml_ng::to_string(&contract::asyncapi::document(VERSION))?
        ),
    )];
    for (service, doc) in [
        ("order-svc", order_svc::api::openapi()),
        ("delivery-svc", delivery_svc::api::openapi()),
        ("notify-svc", notify_svc::api::openapi()),
        ("simulator", simulator::openapi()),
    ] {
        docs.push((
            PathBuf::from(format!("docs/openapi/{service}.json")),
            format!("{}\n", doc.to_pretty_json()?),
        ));
    }
    Ok(docs)
}

/// The workspace root (this crate's parent directory).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The documents whose committed text differs from the generated one.
pub fn drift(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    Ok(documents()?
        .into_iter()
        .filter(|(path, text)| {
            std::fs::read_to_string(root.join(path)).ok().as_deref() != Some(text)
        })
        .map(|(path, _)| path)
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_documents_are_what_the_code_generates() {
        let stale = drift(&root()).unwrap();
        assert!(
            stale.is_empty(),
            "out of date (run `cargo run -p apidocs` and commit): {stale:?}"
        );
    }
}
