//! Errors and warnings about configuration documents.
//!
//! Every error names the document it is about (file, position in the file, and the kind and
//! name once those are known) and, where it can, the field path, so that an operator applying a
//! long multi-document file can find the line to fix.

use std::fmt;

use crate::path::FieldPath;

/// Which document an error or warning is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DocumentId {
    /// Where the text came from, usually a file name.
    pub source: String,
    /// Position of the document in its source, counting from 0.
    pub index: usize,
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl DocumentId {
    pub fn new(source: impl Into<String>, index: usize) -> Self {
        Self {
            source: source.into(),
            index,
            ..Self::default()
        }
    }
}

impl fmt::Display for DocumentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.source, self.index)?;
        if let Some(kind) = &self.kind {
            write!(f, " {kind}")?;
        }
        match (&self.namespace, &self.name) {
            (Some(ns), Some(name)) => write!(f, " {ns}/{name}"),
            (None, Some(name)) => write!(f, " {name}"),
            _ => Ok(()),
        }
    }
}

/// Formats `path: ` only when there is a path, so document-level errors read naturally.
struct At<'a>(&'a FieldPath);

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_root() {
            Ok(())
        } else {
            write!(f, "{}: ", self.0)
        }
    }
}

/// Why a document was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// The text is not well-formed YAML or JSON.
    #[error("{doc}: {message}")]
    Syntax {
        doc: Box<DocumentId>,
        message: String,
    },

    /// A document that is not an object with `apiVersion` and `kind`.
    #[error("{doc}: {}{message}", At(path))]
    Envelope {
        doc: Box<DocumentId>,
        path: FieldPath,
        message: String,
    },

    /// A kind the mesh does not know, or a version of it that is not read.
    #[error(
        "{doc}: unknown kind `{kind}` in apiVersion `{api_version}`{}",
        hint_suffix(hint)
    )]
    UnknownKind {
        doc: Box<DocumentId>,
        api_version: String,
        kind: String,
        hint: Option<String>,
    },

    /// A Kubernetes built-in object (a `Service`, a `Deployment`, ...) found among mesh config.
    /// It is not refused as malformed: it is simply not something the mesh stores.
    #[error("{doc}: {api_version} {kind} is a Kubernetes object, not mesh configuration")]
    NotMeshConfig {
        doc: Box<DocumentId>,
        api_version: String,
        kind: String,
    },

    /// A field the schema does not have. Refused rather than ignored, so that a typo never
    /// silently turns into a default.
    #[error(
        "{doc}: {}unknown field `{field}`{}",
        At(path),
        suggestion_suffix(suggestion, expected)
    )]
    UnknownField {
        doc: Box<DocumentId>,
        path: FieldPath,
        field: String,
        suggestion: Option<String>,
        expected: Vec<String>,
    },

    /// A value of the wrong type, an enum value that does not exist, a missing required field.
    #[error("{doc}: {}{message}", At(path))]
    Decode {
        doc: Box<DocumentId>,
        path: FieldPath,
        message: String,
    },

    /// A well-typed value that breaks one of the mesh's rules.
    #[error("{doc}: {}{message}", At(path))]
    Invalid {
        doc: Box<DocumentId>,
        path: FieldPath,
        message: String,
    },
}

fn hint_suffix(hint: &Option<String>) -> String {
    hint.as_ref().map(|h| format!(" ({h})")).unwrap_or_default()
}

fn suggestion_suffix(suggestion: &Option<String>, expected: &[String]) -> String {
    match suggestion {
        Some(s) => format!(", did you mean `{s}`?"),
        None if expected.is_empty() => ", this object has no fields".to_owned(),
        None => {
            let list: Vec<String> = expected.iter().map(|e| format!("`{e}`")).collect();
            format!(", expected one of {}", list.join(", "))
        }
    }
}

impl ConfigError {
    pub fn doc(&self) -> &DocumentId {
        match self {
            Self::Syntax { doc, .. }
            | Self::Envelope { doc, .. }
            | Self::UnknownKind { doc, .. }
            | Self::NotMeshConfig { doc, .. }
            | Self::UnknownField { doc, .. }
            | Self::Decode { doc, .. }
            | Self::Invalid { doc, .. } => doc,
        }
    }

    /// The field the error is about, when it is about one.
    pub fn path(&self) -> Option<&FieldPath> {
        match self {
            Self::Envelope { path, .. }
            | Self::UnknownField { path, .. }
            | Self::Decode { path, .. }
            | Self::Invalid { path, .. } => Some(path),
            _ => None,
        }
    }

    /// The error without the document prefix.
    pub fn message(&self) -> String {
        let full = self.to_string();
        let prefix = format!("{}: ", self.doc());
        full.strip_prefix(&prefix)
            .map(str::to_owned)
            .unwrap_or(full)
    }
}

/// Every error found in a source, so an operator can fix a file in one pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParseErrors(pub Vec<ConfigError>);

impl ParseErrors {
    pub fn iter(&self) -> impl Iterator<Item = &ConfigError> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Display for ParseErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ParseErrors {}

impl From<ConfigError> for ParseErrors {
    fn from(e: ConfigError) -> Self {
        Self(vec![e])
    }
}

impl IntoIterator for ParseErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// Something accepted but worth telling the operator: a deprecated field, a setting the data
/// plane does not enforce yet, a rule that can never match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub path: FieldPath,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", At(&self.path), self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> DocumentId {
        DocumentId {
            source: "bookinfo.yaml".into(),
            index: 2,
            kind: Some("VirtualService".into()),
            namespace: Some("default".into()),
            name: Some("reviews".into()),
        }
    }

    #[test]
    fn displays_document_then_path_then_message() {
        let e = ConfigError::Invalid {
            doc: Box::new(doc()),
            path: "spec.http[0].route[1].weight".into(),
            message: "must be between 0 and 100".into(),
        };
        assert_eq!(
            e.to_string(),
            "bookinfo.yaml[2] VirtualService default/reviews: spec.http[0].route[1].weight: must be between 0 and 100"
        );
        assert_eq!(
            e.message(),
            "spec.http[0].route[1].weight: must be between 0 and 100"
        );
    }

    #[test]
    fn unknown_field_names_the_nearest_known_field() {
        let e = ConfigError::UnknownField {
            doc: Box::new(doc()),
            path: "spec.http[0].route[1].wieght".into(),
            field: "wieght".into(),
            suggestion: Some("weight".into()),
            expected: vec!["destination".into(), "weight".into(), "headers".into()],
        };
        assert!(
            e.to_string().ends_with(
                "spec.http[0].route[1].wieght: unknown field `wieght`, did you mean `weight`?"
            ),
            "{e}"
        );
    }

    #[test]
    fn document_without_identity_shows_position_only() {
        let e = ConfigError::Syntax {
            doc: Box::new(DocumentId::new("a.yaml", 0)),
            message: "bad".into(),
        };
        assert_eq!(e.to_string(), "a.yaml[0]: bad");
    }
}
