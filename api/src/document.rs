//! Reading operator input: YAML or JSON, one document or many, into validated resources.
//!
//! Reading happens in two steps so callers (and tests) can look at a document between them:
//! [`split_documents`] turns text into untyped documents, [`decode_document`] types and
//! validates one. [`parse_documents`] does both for a whole source.

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::{ConfigError, DocumentId, ParseErrors, Warning};
use crate::meta::{DEFAULT_NAMESPACE, Object};
use crate::path::FieldPath;
use crate::resource::{Kind, Resource};
use crate::suggest::nearest;
use crate::validate;

/// One document of a source, not yet typed.
#[derive(Debug, Clone, PartialEq)]
pub struct RawDocument {
    pub id: DocumentId,
    pub value: serde_json::Value,
}

/// A resource that was read and passed validation, with what is worth telling about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub id: DocumentId,
    pub resource: Resource,
    pub warnings: Vec<Warning>,
}

/// Reads every document of `text`, YAML (`---`-separated) or JSON (one value, an array, or
/// several values in a row). Every bad document is reported, not only the first.
pub fn parse_documents(source_name: &str, text: &str) -> Result<Vec<Document>, ParseErrors> {
    let raws = split_documents(source_name, text)?;
    let mut documents = Vec::with_capacity(raws.len());
    let mut errors = Vec::new();
    for raw in raws {
        match decode_document(raw) {
            Ok(doc) => documents.push(doc),
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() {
        Ok(documents)
    } else {
        Err(ParseErrors(errors))
    }
}

/// Splits a source into documents. Empty documents (a trailing `---`, a file of comments) are
/// skipped but still counted, so indexes match what the operator sees in the file.
pub fn split_documents(source_name: &str, text: &str) -> Result<Vec<RawDocument>, ParseErrors> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        split_json(source_name, text)
    } else {
        split_yaml(source_name, text)
    }
}

fn split_json(source: &str, text: &str) -> Result<Vec<RawDocument>, ParseErrors> {
    let mut out = Vec::new();
    let mut index = 0;
    for value in serde_json::Deserializer::from_str(text).into_iter::<serde_json::Value>() {
        let value = value.map_err(|e| ConfigError::Syntax {
            doc: Box::new(DocumentId::new(source, index)),
            message: format!("invalid JSON: {e}"),
        })?;
        let items = match value {
            serde_json::Value::Array(items) => items,
            other => vec![other],
        };
        for item in items {
            push_document(source, &mut index, item, &mut out);
        }
    }
    Ok(out)
}

fn split_yaml(source: &str, text: &str) -> Result<Vec<RawDocument>, ParseErrors> {
    let mut text = std::borrow::Cow::Borrowed(text);
    // Each retry quotes one more line, so this ends; the bound only guards against surprises.
    for _ in 0..64 {
        match split_yaml_once(source, &text) {
            Ok(docs) => return Ok(docs),
            Err(failure) => {
                let (error, line) = *failure;
                match line.and_then(|l| quote_flow_scalars(&text, l)) {
                    Some(fixed) => text = std::borrow::Cow::Owned(fixed),
                    None => return Err(error.into()),
                }
            }
        }
    }
    split_yaml_once(source, &text).map_err(|failure| failure.0.into())
}

/// On a failure that [`quote_flow_scalars`] may repair, also returns the 1-based line.
fn split_yaml_once(
    source: &str,
    text: &str,
) -> Result<Vec<RawDocument>, Box<(ConfigError, Option<usize>)>> {
    let mut out = Vec::new();
    let mut index = 0;
    for de in serde_norway::Deserializer::from_str(text) {
        let syntax = |index: usize, what: &str, e: &serde_norway::Error| {
            let repairable = e.to_string().contains("found unexpected ':'");
            Box::new((
                ConfigError::Syntax {
                    doc: Box::new(DocumentId::new(source, index)),
                    message: format!("invalid YAML{what}: {e}"),
                },
                e.location().filter(|_| repairable).map(|l| l.line()),
            ))
        };
        let mut value = serde_norway::Value::deserialize(de).map_err(|e| syntax(index, "", &e))?;
        value
            .apply_merge()
            .map_err(|e| syntax(index, " merge key", &e))?;
        push_document(source, &mut index, yaml_to_json(value), &mut out);
    }
    Ok(out)
}

/// Go's YAML reader, which Kubernetes and Istio use, accepts plain scalars containing `:` in
/// flow sequences (`addresses: [1.2.3.4, 2001:db8::]`); libyaml refuses them. To read such
/// files as Istio does, the items of flow sequences on the offending line are quoted and the
/// text is read again. Returns `None` when the line is not of that simple shape.
fn quote_flow_scalars(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let target = lines.get(line.checked_sub(1)?)?;
    let (body, newline) = match target.strip_suffix('\n') {
        Some(b) => (b, "\n"),
        None => (*target, ""),
    };
    let open = body.find('[')?;
    let close = body.rfind(']')?;
    let inner = body.get(open + 1..close)?;
    if inner.contains(['[', ']', '{', '}', '"', '\'', '#']) {
        return None;
    }
    let mut changed = false;
    let items: Vec<String> = inner
        .split(',')
        .map(|item| {
            let trimmed = item.trim();
            if trimmed.contains(':') {
                changed = true;
                format!("{:?}", trimmed)
            } else {
                trimmed.to_owned()
            }
        })
        .collect();
    if !changed {
        return None;
    }
    let fixed = format!(
        "{}[{}]{}{}",
        &body[..open],
        items.join(", "),
        &body[close + 1..],
        newline
    );
    let mut out = String::with_capacity(text.len() + 8);
    for (i, l) in lines.iter().enumerate() {
        out.push_str(if i + 1 == line { &fixed } else { l });
    }
    Some(out)
}

/// A Kubernetes `List` is a wrapper, not a document: its items are the documents.
fn push_document(
    source: &str,
    index: &mut usize,
    value: serde_json::Value,
    out: &mut Vec<RawDocument>,
) {
    if value.is_null() {
        *index += 1;
        return;
    }
    let is_list = value.get("kind").and_then(|k| k.as_str()) == Some("List")
        && value.get("apiVersion").and_then(|k| k.as_str()) == Some("v1");
    if is_list && let Some(serde_json::Value::Array(items)) = value.get("items") {
        for item in items.clone() {
            push_document(source, index, item, out);
        }
        return;
    }
    out.push(RawDocument {
        id: DocumentId::new(source, *index),
        value,
    });
    *index += 1;
}

/// YAML allows keys of any type; Kubernetes tooling turns them into strings (`80:` becomes
/// `"80"`), and so do we, so that `portLevelMtls: {80: ...}` reads as Istio reads it.
fn yaml_to_json(value: serde_norway::Value) -> serde_json::Value {
    use serde_json::Value as J;
    use serde_norway::Value as Y;
    match value {
        Y::Null => J::Null,
        Y::Bool(b) => J::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                J::from(i)
            } else if let Some(u) = n.as_u64() {
                J::from(u)
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map_or(J::Null, J::Number)
            }
        }
        Y::String(s) => J::String(s),
        Y::Sequence(items) => J::Array(items.into_iter().map(yaml_to_json).collect()),
        Y::Mapping(map) => J::Object(
            map.into_iter()
                .map(|(k, v)| (yaml_key(k), yaml_to_json(v)))
                .collect(),
        ),
        Y::Tagged(tagged) => yaml_to_json(tagged.value),
    }
}

fn yaml_key(key: serde_norway::Value) -> String {
    match key {
        serde_norway::Value::String(s) => s,
        serde_norway::Value::Null => "null".to_owned(),
        serde_norway::Value::Bool(b) => b.to_string(),
        serde_norway::Value::Number(n) => n.to_string(),
        other => match yaml_to_json(other) {
            serde_json::Value::String(s) => s,
            v => v.to_string(),
        },
    }
}

/// Types and validates one document.
pub fn decode_document(raw: RawDocument) -> Result<Document, ParseErrors> {
    let (resource, id) = decode_resource(raw.id, raw.value)?;
    let report = validate::validate(&resource);
    if report.errors.is_empty() {
        Ok(Document {
            id,
            resource,
            warnings: report.warnings,
        })
    } else {
        Err(ParseErrors(
            report
                .errors
                .into_iter()
                .map(|v| ConfigError::Invalid {
                    doc: Box::new(id.clone()),
                    path: v.path,
                    message: v.message,
                })
                .collect(),
        ))
    }
}

/// Types one document without validating it. On success also returns the document identity
/// completed with kind, namespace and name.
pub(crate) fn decode_resource(
    mut id: DocumentId,
    value: serde_json::Value,
) -> Result<(Resource, DocumentId), ConfigError> {
    let envelope = |id: &DocumentId, path: &str, message: &str| ConfigError::Envelope {
        doc: Box::new(id.clone()),
        path: FieldPath::from(path),
        message: message.to_owned(),
    };
    let Some(object) = value.as_object() else {
        return Err(envelope(
            &id,
            "",
            "a document must be an object with apiVersion, kind, metadata and spec",
        ));
    };
    let api_version = object.get("apiVersion").and_then(|v| v.as_str());
    let kind_name = object.get("kind").and_then(|v| v.as_str());
    if let Some(kind) = kind_name {
        id.kind = Some(kind.to_owned());
    }
    if let Some(meta) = object.get("metadata").and_then(|m| m.as_object()) {
        id.name = meta.get("name").and_then(|v| v.as_str()).map(str::to_owned);
        id.namespace = Some(
            meta.get("namespace")
                .and_then(|v| v.as_str())
                .unwrap_or(DEFAULT_NAMESPACE)
                .to_owned(),
        );
    }
    let Some(api_version) = api_version else {
        return Err(envelope(&id, "apiVersion", "Required value"));
    };
    let Some(kind_name) = kind_name else {
        return Err(envelope(&id, "kind", "Required value"));
    };
    if is_kubernetes_builtin(api_version) {
        return Err(ConfigError::NotMeshConfig {
            doc: Box::new(id.clone()),
            api_version: api_version.to_owned(),
            kind: kind_name.to_owned(),
        });
    }
    let Some(kind) = Kind::from_api(api_version, kind_name) else {
        let hint = unknown_kind_hint(api_version, kind_name);
        return Err(ConfigError::UnknownKind {
            doc: Box::new(id.clone()),
            api_version: api_version.to_owned(),
            kind: kind_name.to_owned(),
            hint,
        });
    };
    if kind.requires_spec() && object.get("spec").is_none_or(|s| s.is_null()) {
        return Err(ConfigError::Invalid {
            doc: Box::new(id.clone()),
            path: FieldPath::from("spec"),
            message: "Required value".to_owned(),
        });
    }
    let resource = match kind {
        Kind::VirtualService => typed(&id, value).map(Resource::VirtualService),
        Kind::DestinationRule => typed(&id, value).map(Resource::DestinationRule),
        Kind::Gateway => typed(&id, value).map(Resource::Gateway),
        Kind::ServiceEntry => typed(&id, value).map(Resource::ServiceEntry),
        Kind::WorkloadEntry => typed(&id, value).map(Resource::WorkloadEntry),
        Kind::WorkloadGroup => typed(&id, value).map(Resource::WorkloadGroup),
        Kind::Sidecar => typed(&id, value).map(Resource::Sidecar),
        Kind::PeerAuthentication => typed(&id, value).map(Resource::PeerAuthentication),
        Kind::AuthorizationPolicy => typed(&id, value).map(Resource::AuthorizationPolicy),
        Kind::RequestAuthentication => typed(&id, value).map(Resource::RequestAuthentication),
        Kind::Service => typed(&id, value).map(Resource::Service),
        Kind::RateLimit => typed(&id, value).map(Resource::RateLimit),
    };
    resource.map(|r| (r, id))
}

/// Core (`v1`), `apps/v1`, `batch/v1` and `*.k8s.io` groups are Kubernetes' own objects.
fn is_kubernetes_builtin(api_version: &str) -> bool {
    match api_version.split_once('/') {
        None => true,
        Some((group, _)) => !group.contains('.') || group.ends_with(".k8s.io"),
    }
}

fn unknown_kind_hint(api_version: &str, kind: &str) -> Option<String> {
    if let Some(known) = Kind::ALL.into_iter().find(|k| k.as_str() == kind) {
        let versions: Vec<String> = known
            .versions()
            .iter()
            .map(|v| format!("{}/{v}", known.group()))
            .collect();
        return Some(format!("{kind} is read as {}", versions.join(", ")));
    }
    let _ = api_version;
    nearest(kind, Kind::ALL.iter().map(|k| k.as_str())).map(|k| format!("did you mean {k}?"))
}

fn typed<S: DeserializeOwned + Default>(
    id: &DocumentId,
    value: serde_json::Value,
) -> Result<Object<S>, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| decode_error(id, e))
}

fn decode_error(id: &DocumentId, e: serde_path_to_error::Error<serde_json::Error>) -> ConfigError {
    let mut path = FieldPath::root();
    for segment in e.path().iter() {
        path = match segment {
            serde_path_to_error::Segment::Seq { index } => path.index(*index),
            serde_path_to_error::Segment::Map { key } => path.field(key),
            serde_path_to_error::Segment::Enum { variant } => path.field(variant),
            serde_path_to_error::Segment::Unknown => path,
        };
    }
    let message = e.inner().to_string();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let quoted = backticked(rest);
        let field = rest.split('`').next().unwrap_or_default().to_owned();
        let expected: Vec<String> = quoted.into_iter().skip(1).collect();
        let suggestion = nearest(&field, expected.iter().map(String::as_str)).map(str::to_owned);
        if !path.as_str().ends_with(field.as_str()) {
            path = path.field(&field);
        }
        return ConfigError::UnknownField {
            doc: Box::new(id.clone()),
            path,
            field,
            suggestion,
            expected,
        };
    }
    let message = if let Some(rest) = message.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or_default();
        path = path.field(field);
        "Required value".to_owned()
    } else if let Some(rest) = message.strip_prefix("unknown variant `") {
        let names = backticked(rest);
        let (found, supported) = names.split_first().map_or(("", &[][..]), |(f, s)| (f, s));
        let supported: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        format!(
            "Unsupported value: {found:?}: supported values: {}",
            supported.join(", ")
        )
    } else if let Some(rest) = message.strip_prefix("invalid type: ") {
        match rest.split_once(", expected ") {
            Some((found, expected)) => {
                format!("must be {}, found {found}", describe_expected(expected))
            }
            None => message,
        }
    } else {
        message
    };
    ConfigError::Decode {
        doc: Box::new(id.clone()),
        path,
        message,
    }
}

/// Serde names Rust types; operators write YAML, so say it in YAML's words.
fn describe_expected(expected: &str) -> String {
    if expected.starts_with("struct ") || expected == "a map" {
        "an object".to_owned()
    } else if expected == "a sequence" {
        "a list".to_owned()
    } else if expected.starts_with('u') && expected[1..].parse::<u8>().is_ok() {
        "a non-negative integer".to_owned()
    } else if expected.starts_with('i') && expected[1..].parse::<u8>().is_ok() {
        "an integer".to_owned()
    } else if expected.starts_with('f') && expected[1..].parse::<u8>().is_ok() {
        "a number".to_owned()
    } else {
        expected.to_owned()
    }
}

/// The words between backticks, in order: serde quotes field and variant names that way.
fn backticked(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    // The text starts just inside the first backtick.
    if let Some(end) = rest.find('`') {
        out.push(rest[..end].to_owned());
        rest = &rest[end + 1..];
    }
    while let Some(start) = rest.find('`') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('`') else { break };
        out.push(after[..end].to_owned());
        rest = &after[end + 1..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const REVIEWS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 80
    - destination: {host: reviews, subset: v2}
      weight: 20
"#;

    fn only_error(source: &str, text: &str) -> ConfigError {
        let errors = parse_documents(source, text).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors}");
        errors.0.into_iter().next().unwrap()
    }

    #[test]
    fn reads_multi_document_yaml_and_skips_empty_documents() {
        let text = format!("---\n# only a comment\n---\n{REVIEWS}\n---\n{REVIEWS}\n---\n");
        let docs = parse_documents("two.yaml", &text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].id.index, 1);
        let key = docs[0].resource.key();
        assert_eq!(key.kind, Kind::VirtualService);
        assert_eq!(key.namespace, "default");
        assert_eq!(
            docs[0].resource.store_key(),
            "/config/virtualservice/default/reviews"
        );
    }

    #[test]
    fn reads_json_objects_arrays_and_lists() {
        let docs = parse_documents("a.yaml", REVIEWS).unwrap();
        let json = docs[0].resource.to_json();
        let one = parse_documents("one.json", &json).unwrap();
        assert_eq!(one[0].resource, docs[0].resource);
        let array = format!("[{json}, {json}]");
        assert_eq!(parse_documents("array.json", &array).unwrap().len(), 2);
        let list = format!(r#"{{"apiVersion":"v1","kind":"List","items":[{json}]}}"#);
        assert_eq!(parse_documents("list.json", &list).unwrap().len(), 1);
    }

    #[test]
    fn stored_json_round_trips_without_nulls() {
        let docs = parse_documents("a.yaml", REVIEWS).unwrap();
        let json = docs[0].resource.to_json();
        assert!(!json.contains("null"), "{json}");
        assert_eq!(Resource::from_json(&json).unwrap(), docs[0].resource);
        assert!(Resource::from_json("{").is_err());
    }

    #[test]
    fn unknown_field_suggests_the_nearest_and_names_the_document() {
        let text = format!(
            "{REVIEWS}---\n{}",
            REVIEWS.replace("weight: 20", "wieght: 20")
        );
        let e = only_error("bookinfo.yaml", &text);
        assert_eq!(
            e.to_string(),
            "bookinfo.yaml[1] VirtualService default/reviews: spec.http[0].route[1].wieght: unknown field `wieght`, did you mean `weight`?"
        );
        assert_eq!(e.path().unwrap().as_str(), "spec.http[0].route[1].wieght");
    }

    #[test]
    fn validation_errors_carry_identity_and_path() {
        let text = REVIEWS.replace("weight: 20", "weight: 120");
        let e = only_error("bookinfo.yaml", &text);
        assert_eq!(
            e.to_string(),
            "bookinfo.yaml[0] VirtualService default/reviews: spec.http[0].route[1].weight: must be between 0 and 100"
        );
    }

    #[test]
    fn type_and_enum_errors_read_like_kubernetes() {
        let text = REVIEWS.replace("weight: 20", "weight: lots");
        assert!(
            only_error("a.yaml", &text).to_string().contains(
                "spec.http[0].route[1].weight: must be an integer, found string \"lots\""
            )
        );
        let pa = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: x}\nspec:\n  mtls: {mode: BLAH}\n";
        let e = only_error("pa.yaml", pa).to_string();
        assert!(
            e.contains("spec.mtls.mode: Unsupported value: \"BLAH\""),
            "{e}"
        );
    }

    #[test]
    fn envelope_problems() {
        assert!(matches!(
            only_error("a.yaml", "- 1\n- 2\n"),
            ConfigError::Envelope { .. }
        ));
        assert!(
            only_error("a.yaml", "kind: VirtualService\n")
                .to_string()
                .contains("apiVersion: Required value")
        );
        let e = only_error(
            "a.yaml",
            "apiVersion: networking.istio.io/v1\nkind: VirtualServce\nmetadata: {name: x}\n",
        );
        assert!(
            e.to_string().contains("did you mean VirtualService?"),
            "{e}"
        );
        let e = only_error(
            "a.yaml",
            "apiVersion: security.istio.io/v1alpha3\nkind: PeerAuthentication\nmetadata: {name: x}\n",
        );
        assert!(e.to_string().contains("security.istio.io/v1"), "{e}");
        let e = only_error(
            "a.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n",
        );
        assert!(matches!(e, ConfigError::NotMeshConfig { .. }));
        let e = only_error(
            "a.yaml",
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: x}\n",
        );
        assert_eq!(e.path().unwrap().as_str(), "spec");
    }

    #[test]
    fn syntax_errors_name_the_document() {
        let e = only_error("bad.yaml", &format!("{REVIEWS}---\nfoo: [unclosed\n"));
        assert!(
            matches!(e, ConfigError::Syntax { ref doc, .. } if doc.index == 1),
            "{e}"
        );
        assert!(matches!(
            only_error("bad.json", "{\"a\": }"),
            ConfigError::Syntax { .. }
        ));
    }

    #[test]
    fn kubernetes_metadata_and_status_are_tolerated() {
        let text = REVIEWS.replace(
            "  name: reviews\n",
            "  name: reviews\n  namespace: shop\n  uid: \"1234\"\n  resourceVersion: \"42\"\n  generation: 3\n  creationTimestamp: null\n  labels: {app: reviews}\n",
        ) + "status: {observedGeneration: 3}\n";
        let docs = parse_documents("a.yaml", &text).unwrap();
        assert_eq!(docs[0].resource.metadata().namespace, "shop");
        assert_eq!(docs[0].resource.metadata().uid.as_deref(), Some("1234"));
    }

    #[test]
    fn ipv6_in_flow_sequence_reads_as_go_yaml_does() {
        let text = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: x}\nspec:\n  hosts: [example.com]\n  addresses: [1.2.3.4, 2001:db8::]\n";
        let docs = parse_documents("se.yaml", text).unwrap();
        let Resource::ServiceEntry(se) = &docs[0].resource else {
            panic!("not a ServiceEntry")
        };
        assert_eq!(se.spec.addresses, vec!["1.2.3.4", "2001:db8::"]);
    }

    #[test]
    fn integer_map_keys_become_strings() {
        let text = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: x}\nspec:\n  selector: {matchLabels: {app: a}}\n  portLevelMtls:\n    8080: {mode: DISABLE}\n";
        assert!(parse_documents("pa.yaml", text).is_ok());
    }

    #[test]
    fn trellis_kinds_read_and_validate() {
        let text = r#"
apiVersion: trellis.dev/v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  serviceAccount: bookinfo-reviews
  labels: {app: reviews}
  ports:
  - {name: http, number: 9080, protocol: HTTP, targetPort: 8080}
---
apiVersion: trellis.dev/v1
kind: RateLimit
metadata: {name: reviews-limit, namespace: shop}
spec:
  host: reviews.shop.svc.cluster.local
  route: default
  tokensPerFill: 10
  fillInterval: 1s
  maxTokens: 20
"#;
        let docs = parse_documents("trellis.yaml", text).unwrap();
        assert_eq!(
            docs[1].resource.store_key(),
            "/config/ratelimit/shop/reviews-limit"
        );
        let bad = text.replace("fillInterval: 1s", "fillInterval: 0s");
        assert!(
            only_error("trellis.yaml", &bad)
                .to_string()
                .contains("spec.fillInterval")
        );
    }

    #[test]
    fn deprecated_fields_are_warned_about_not_dropped() {
        let text = REVIEWS.replace("  - route:", "  - websocketUpgrade: true\n    route:");
        let docs = parse_documents("a.yaml", &text).unwrap();
        assert_eq!(docs[0].warnings.len(), 1);
        assert_eq!(
            docs[0].warnings[0].path.as_str(),
            "spec.http[0].websocketUpgrade"
        );
    }

    #[test]
    fn garbage_never_panics() {
        for text in [
            "",
            "---",
            "null",
            "42",
            "\"x\"",
            "[[[",
            "{}",
            "apiVersion: 3\nkind: []\n",
            ":\n:",
            "\t",
        ] {
            let _ = parse_documents("g.yaml", text);
        }
    }
}
