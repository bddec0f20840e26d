//! The mesh's resource model.
//!
//! Operators write the Istio resources they already know (`networking.istio.io`,
//! `security.istio.io`) plus a few Trellis kinds (`trellis.dev/v1`), in YAML or JSON. This crate
//! reads them into typed structs, refuses anything it does not understand with an error that
//! names the document and the field path, and checks them with Istio's own validation rules.
#![forbid(unsafe_code)]

pub mod discovery;
pub mod document;
pub mod duration;
pub mod error;
pub mod meta;
pub mod networking;
pub mod path;
pub mod resource;
pub mod security;
pub mod selector;
pub mod spiffe;
mod suggest;
pub mod trellis;
pub mod validate;

pub use document::{Document, RawDocument, decode_document, parse_documents, split_documents};
pub use duration::Duration;
pub use error::{ConfigError, DocumentId, ParseErrors, Warning};
pub use meta::{Object, ObjectMeta};
pub use path::FieldPath;
pub use resource::{Kind, Resource, ResourceKey};
pub use spiffe::{SpiffeId, SpiffeIdError};
