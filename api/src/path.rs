//! Field paths in the style operators see in `kubectl` errors: `spec.http[0].route[1].weight`.

use std::fmt;

/// Where in a document a value sits. The empty path is the document itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FieldPath(String);

impl FieldPath {
    pub fn root() -> Self {
        Self::default()
    }

    /// A struct field or a map key. Keys that are not plain words are quoted so that a key
    /// containing a dot cannot be mistaken for two levels.
    pub fn field(&self, name: &str) -> Self {
        let plain = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            && !name.starts_with(|c: char| c.is_ascii_digit() || c == '-');
        let mut s = self.0.clone();
        if plain {
            if !s.is_empty() {
                s.push('.');
            }
            s.push_str(name);
        } else {
            s.push_str(&format!("[{name:?}]"));
        }
        Self(s)
    }

    pub fn index(&self, index: usize) -> Self {
        Self(format!("{}[{index}]", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `fragment` (itself a path, possibly cut from the front like Kubernetes does in
    /// long messages) names this path or one of its ancestors.
    pub fn contains_segment_path(&self, fragment: &str) -> bool {
        if fragment.is_empty() {
            return false;
        }
        let s = self.0.as_str();
        let mut from = 0;
        while let Some(pos) = s[from..].find(fragment) {
            let start = from + pos;
            let end = start + fragment.len();
            let starts_clean = start == 0
                || s[..start].ends_with('.')
                || fragment.starts_with('[')
                || fragment.starts_with('.');
            let ends_clean = end == s.len() || s[end..].starts_with(['.', '[']);
            if starts_clean && ends_clean {
                return true;
            }
            from = start + 1;
        }
        false
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for FieldPath {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_kubectl_style_paths() {
        let p = FieldPath::root()
            .field("spec")
            .field("http")
            .index(0)
            .field("route")
            .index(1)
            .field("weight");
        assert_eq!(p.as_str(), "spec.http[0].route[1].weight");
    }

    #[test]
    fn quotes_keys_that_are_not_words() {
        let p = FieldPath::root().field("spec").field("ports").field("@");
        assert_eq!(p.as_str(), "spec.ports[\"@\"]");
        let p = FieldPath::root()
            .field("spec")
            .field("portLevelMtls")
            .field("80");
        assert_eq!(p.as_str(), "spec.portLevelMtls[\"80\"]");
    }

    #[test]
    fn matches_fragments_on_segment_boundaries() {
        let p = FieldPath::from("spec.jwtRules[0].audiences[0]");
        assert!(p.contains_segment_path("audiences[0]"));
        assert!(p.contains_segment_path("spec.jwtRules[0]"));
        assert!(!p.contains_segment_path("udiences[0]"));
        assert!(!p.contains_segment_path("spec.jwtRule"));
        let p = FieldPath::from("spec.jwtRules[0].outputClaimToHeaders[0].header");
        assert!(p.contains_segment_path("header"));
    }
}
