//! Request checks: what Tencent would refuse for its shape, refused here first, with Tencent's
//! own ErrorCode and an `ErrorInfo` that says exactly what is wrong.
//!
//! Rules are data (`table`): per API, a list of (field path, check, error code), read in
//! order; the first broken rule answers. A path names fields from the body's root, with `[]`
//! for every element of an array: `Metadata[].Value`. Checks read the parsed body in place
//! (strings are borrowed from the request bytes, never copied) and never change it. APIs
//! without rules pass unchecked. The gateway and the emulator use the same table.

mod table;

use std::collections::HashSet;

use serde_json_borrow::Value;

pub use table::{ELEMENTS, TABLE};

/// A JSON type a field must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// A JSON string.
    String,
    /// A JSON number without a fraction.
    Integer,
    /// Any JSON number.
    Number,
    /// A JSON array.
    Array,
    /// A JSON object.
    Object,
}

/// One check on every value a path selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Present, not null, and of this type.
    Required(Type),
    /// Absent, null, or of this type.
    Optional(Type),
    /// A string or array with at least one element.
    NonEmpty,
    /// A string of at most this many UTF-8 bytes.
    MaxBytes(usize),
    /// An array of at most this many elements.
    MaxItems(usize),
    /// An integer of at most this value.
    MaxValue(i64),
    /// An integer of at least this value.
    MinValue(i64),
    /// A value whose JSON text is at most this many bytes (a message body's size).
    MaxJsonBytes(usize),
    /// A message element: an object whose `MsgType` is one of these, with a `MsgContent`
    /// object holding the fields its type requires.
    Elements(&'static [Element]),
    /// At most this many distinct strings across all selected values.
    MaxDistinct(usize),
    /// At most this many UTF-8 bytes across all selected strings.
    MaxTotalBytes(usize),
}

/// A message element type (`MsgBody[].MsgType`) and the `MsgContent` fields it requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Element {
    /// Its `MsgType`, e.g. `TIMTextElem`.
    pub name: &'static str,
    /// The fields its `MsgContent` must hold, with their types.
    pub required: &'static [(&'static str, Type)],
}

/// One line of an API's rules, as it reads on Tencent's page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// The field path, e.g. `Metadata[].Key`.
    pub field: &'static str,
    /// What must hold for it.
    pub check: Check,
    /// Tencent's ErrorCode when it does not.
    pub code: u32,
}

/// A Tencent API-level refusal: an ErrorCode and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Tencent's ErrorCode.
    pub code: u32,
    /// What is wrong, naming the field.
    pub info: String,
}

impl Refusal {
    /// A refusal with `code` and `info`.
    pub fn new(code: u32, info: impl Into<String>) -> Self {
        Self {
            code,
            info: info.into(),
        }
    }
}

/// The rules for `api` (`service/command`), if it has any.
pub fn for_api(api: &str) -> Option<&'static [Rule]> {
    TABLE
        .iter()
        .find(|(name, _)| *name == api)
        .map(|(_, rules)| *rules)
}

/// Checks a parsed body against `rules`; the first broken rule answers. The body was read by
/// `json::parse`, which refuses a key named twice in one object before any rule is read.
pub fn check(rules: &[Rule], body: &Value<'_>) -> Result<(), Refusal> {
    if !body.is_object() {
        return Err(Refusal::new(
            INVALID,
            format!("the body must be a JSON object, not {}", kind(body)),
        ));
    }
    rules.iter().try_for_each(|rule| apply(rule, body))
}

/// Tencent's "invalid parameter".
const INVALID: u32 = 100002;

fn apply(rule: &Rule, body: &Value<'_>) -> Result<(), Refusal> {
    let fail = |at: &[usize], what: String| {
        Err(Refusal::new(
            rule.code,
            format!("{} {what}", name(rule.field, at)),
        ))
    };
    match rule.check {
        Check::MaxDistinct(max) => {
            let mut seen = HashSet::new();
            visit(body, rule.field, &mut |_, v| {
                seen.extend(v.and_then(Value::as_str));
                Ok(())
            })?;
            if seen.len() > max {
                return fail(
                    &[],
                    format!("has {} distinct values; the limit is {max}", seen.len()),
                );
            }
            Ok(())
        }
        Check::MaxTotalBytes(max) => {
            let mut total = 0;
            visit(body, rule.field, &mut |_, v| {
                total += v.and_then(Value::as_str).map_or(0, str::len);
                Ok(())
            })?;
            if total > max {
                return fail(&[], format!("totals {total} bytes; the limit is {max}"));
            }
            Ok(())
        }
        check => visit(body, rule.field, &mut |at, v| match one(check, v) {
            Ok(()) => Ok(()),
            Err(what) => fail(at, what),
        }),
    }
}

/// Checks one selected value (`None` when absent); says what is wrong.
fn one(check: Check, value: Option<&Value<'_>>) -> Result<(), String> {
    let value = value.filter(|v| !v.is_null());
    match (check, value) {
        (Check::Required(ty), None) => Err(format!("is required: {}", article(ty))),
        (Check::Required(ty) | Check::Optional(ty), Some(v)) if !is(ty, v) => {
            Err(format!("must be {}, not {}", article(ty), kind(v)))
        }
        (Check::NonEmpty, Some(v))
            if v.as_str() == Some("") || v.as_array().is_some_and(<[_]>::is_empty) =>
        {
            Err("must not be empty".into())
        }
        (Check::MaxBytes(max), Some(Value::Str(s))) if s.len() > max => {
            Err(format!("is {} bytes; the limit is {max}", s.len()))
        }
        (Check::MaxItems(max), Some(Value::Array(items))) if items.len() > max => {
            Err(format!("has {} items; the limit is {max}", items.len()))
        }
        (Check::MaxValue(max), Some(v))
            if v.as_i64().is_some_and(|n| n > max)
                || v.as_u64().is_some_and(|n| n > max as u64) =>
        {
            Err(format!("is {v}; the limit is {max}"))
        }
        (Check::MinValue(min), Some(v)) if v.as_i64().is_some_and(|n| n < min) => {
            Err(format!("is {v}; the lowest allowed is {min}"))
        }
        (Check::MaxJsonBytes(max), Some(v)) => match json_len(v) {
            len if len > max => Err(format!("is {len} bytes as JSON; the limit is {max}")),
            _ => Ok(()),
        },
        (Check::Elements(types), Some(v)) => element(types, v),
        _ => Ok(()),
    }
}

/// The length of `value`'s JSON text, counted without building it.
fn json_len(value: &Value<'_>) -> usize {
    struct Count(usize);
    impl std::fmt::Write for Count {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0 += s.len();
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing to a counter cannot fail.
    let _ = std::fmt::write(&mut count, format_args!("{value}"));
    count.0
}

/// Checks one message element against Tencent's element types.
fn element(types: &[Element], value: &Value<'_>) -> Result<(), String> {
    let Some(object) = value.as_object() else {
        return Err(format!("must be an object, not {}", kind(value)));
    };
    let Some(name) = object.get("MsgType").and_then(Value::as_str) else {
        return Err("needs MsgType: a string".into());
    };
    let Some(known) = types.iter().find(|t| t.name == name) else {
        let names: Vec<&str> = types.iter().map(|t| t.name).collect();
        return Err(format!(
            "has MsgType {name}, which is not one of {}",
            names.join(", ")
        ));
    };
    let Some(content) = object.get("MsgContent").filter(|c| c.is_object()) else {
        return Err(format!("({name}) needs MsgContent: an object"));
    };
    for (field, ty) in known.required {
        let found = content.get(*field);
        if found.is_null() || !is(*ty, found) {
            return Err(format!(
                "({name}) needs MsgContent.{field}: {}",
                article(*ty)
            ));
        }
    }
    Ok(())
}

/// What `visit` calls with each selected value: its array indices on the way, and the value.
type Visitor<'f, 'v> = dyn FnMut(&[usize], Option<&'v Value<'v>>) -> Result<(), Refusal> + 'f;

/// Calls `f` with every value `path` selects (and `None` where the last field is absent).
/// Where an intermediate field is absent or of another type, nothing is selected: the rule
/// for that field itself says what is wrong.
fn visit<'v>(root: &'v Value<'v>, path: &str, f: &mut Visitor<'_, 'v>) -> Result<(), Refusal> {
    fn walk<'v>(
        value: Option<&'v Value<'v>>,
        segments: &[&str],
        at: &mut Vec<usize>,
        f: &mut Visitor<'_, 'v>,
    ) -> Result<(), Refusal> {
        let Some((segment, rest)) = segments.split_first() else {
            return f(at, value);
        };
        let Some(Value::Object(object)) = value else {
            return Ok(());
        };
        let (field, each) = match segment.strip_suffix("[]") {
            Some(field) => (field, true),
            None => (*segment, false),
        };
        let child = object.get(field);
        if !each {
            return walk(child, rest, at, f);
        }
        let Some(Value::Array(items)) = child else {
            return Ok(());
        };
        for (i, item) in items.iter().enumerate() {
            at.push(i);
            walk(Some(item), rest, at, f)?;
            at.pop();
        }
        Ok(())
    }
    let segments: Vec<&str> = path.split('.').collect();
    walk(Some(root), &segments, &mut Vec::new(), f)
}

/// `Metadata[].Value` with indices `[3]` reads `Metadata[3].Value`.
fn name(path: &str, at: &[usize]) -> String {
    let mut out = String::with_capacity(path.len() + 8);
    let mut indices = at.iter();
    for (i, part) in path.split("[]").enumerate() {
        if i > 0 {
            match indices.next() {
                Some(n) => out.push_str(&format!("[{n}]")),
                None => out.push_str("[]"),
            }
        }
        out.push_str(part);
    }
    out
}

fn is(ty: Type, value: &Value<'_>) -> bool {
    match ty {
        Type::String => value.is_string(),
        Type::Integer => value.is_i64() || value.is_u64(),
        Type::Number => value.is_number(),
        Type::Array => value.is_array(),
        Type::Object => value.is_object(),
    }
}

fn article(ty: Type) -> &'static str {
    match ty {
        Type::String => "a string",
        Type::Integer => "an integer",
        Type::Number => "a number",
        Type::Array => "an array",
        Type::Object => "an object",
    }
}

fn kind(value: &Value<'_>) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::Str(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SET: &str = "live_engine_http_srv/set_room_metadata";

    fn verdict(api: &str, body: &str) -> Result<(), Refusal> {
        let value: Value = serde_json::from_str(body).expect("test bodies are JSON");
        check(for_api(api).expect("a checked API"), &value)
    }

    fn entries(n: usize, value_len: usize) -> String {
        let list: Vec<String> = (0..n)
            .map(|i| format!(r#"{{"Key":"k{i}","Value":"{}"}}"#, "v".repeat(value_len)))
            .collect();
        format!(r#"{{"RoomId":"r","Metadata":[{}]}}"#, list.join(","))
    }

    #[test]
    fn error_info_names_the_element_and_its_size() {
        let body = format!(
            r#"{{"RoomId":"r","Metadata":[{{"Key":"a","Value":"x"}},{{"Key":"b","Value":"x"}},{{"Key":"c","Value":"x"}},{{"Key":"d","Value":"{}"}}]}}"#,
            "é".repeat(1025) + "x"
        );
        let refusal = verdict(SET, &body).unwrap_err();
        assert_eq!(refusal.code, 100501);
        assert_eq!(
            refusal.info,
            "Metadata[3].Value is 2051 bytes; the limit is 2048"
        );
    }

    #[test]
    fn set_room_metadata_limits_hold_exactly_at_the_boundary() {
        assert_eq!(verdict(SET, &entries(10, 1)), Ok(()));
        assert_eq!(verdict(SET, &entries(11, 1)).unwrap_err().code, 100500);
        assert_eq!(verdict(SET, &entries(8, 2048)), Ok(()));
        let over = verdict(
            SET,
            &entries(8, 2048).replace(r#""Key":"k0""#, r#""Key":"k0","Extra":1"#),
        );
        assert_eq!(over, Ok(()), "unknown fields are Tencent's business");
        let total = verdict(
            SET,
            &entries(8, 2048).replace("]}", r#",{"Key":"z","Value":"1"}]}"#),
        );
        assert_eq!(
            total.unwrap_err(),
            Refusal::new(
                100502,
                "Metadata[].Value totals 16385 bytes; the limit is 16384"
            )
        );
        let key = |n: usize| {
            format!(
                r#"{{"RoomId":"r","Metadata":[{{"Key":"{}","Value":""}}]}}"#,
                "k".repeat(n)
            )
        };
        assert_eq!(verdict(SET, &key(50)), Ok(()));
        assert_eq!(verdict(SET, &key(51)).unwrap_err().code, 100504);
    }

    #[test]
    fn repeated_keys_in_one_request_count_once() {
        let body = entries(10, 1).replace("]}", r#",{"Key":"k0","Value":"again"}]}"#);
        assert_eq!(verdict(SET, &body), Ok(()));
    }

    #[test]
    fn malformed_shapes_are_invalid_parameters() {
        let cases = [
            (
                r#"{"Metadata":[{"Key":"k","Value":"v"}]}"#,
                "RoomId is required: a string",
            ),
            (
                r#"{"RoomId":null,"Metadata":[]}"#,
                "RoomId is required: a string",
            ),
            (
                r#"{"RoomId":7,"Metadata":[]}"#,
                "RoomId must be a string, not a number",
            ),
            (r#"{"RoomId":"","Metadata":[]}"#, "RoomId must not be empty"),
            (
                r#"{"RoomId":"r","Metadata":[]}"#,
                "Metadata must not be empty",
            ),
            (
                r#"{"RoomId":"r","Metadata":{"Key":"k"}}"#,
                "Metadata must be an array, not an object",
            ),
            (
                r#"{"RoomId":"r","Metadata":[1]}"#,
                "Metadata[0] must be an object, not a number",
            ),
            (
                r#"{"RoomId":"r","Metadata":[{"Key":"k","Value":"v"},null]}"#,
                "Metadata[1] is required: an object",
            ),
            (
                r#"{"RoomId":"r","Metadata":[{"Key":"k"}]}"#,
                "Metadata[0].Value is required: a string",
            ),
            (
                r#"{"RoomId":"r","Metadata":[{"Key":["k"],"Value":"v"}]}"#,
                "Metadata[0].Key must be a string, not an array",
            ),
            ("[]", "the body must be a JSON object, not an array"),
            ("\"text\"", "the body must be a JSON object, not a string"),
        ];
        for (body, info) in cases {
            assert_eq!(
                verdict(SET, body),
                Err(Refusal::new(100002, info)),
                "{body}"
            );
        }
    }

    #[test]
    fn a_huge_array_is_refused_quickly_by_count() {
        let body = entries(100_000, 1);
        let started = std::time::Instant::now();
        assert_eq!(verdict(SET, &body).unwrap_err().code, 100500);
        let numbers = format!(
            r#"{{"RoomId":"r","Metadata":[{}]}}"#,
            vec!["1"; 100_000].join(",")
        );
        assert_eq!(verdict(SET, &numbers).unwrap_err().code, 100002);
        // Generous: this is about not being quadratic, not about speed.
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn integer_limits_and_optional_fields() {
        let list = "live_engine_http_srv/get_room_list";
        assert_eq!(verdict(list, r#"{"Next":"","Count":20}"#), Ok(()));
        assert_eq!(verdict(list, r#"{"Next":""}"#), Ok(()));
        assert_eq!(verdict(list, r#"{"Next":"","Count":null}"#), Ok(()));
        assert_eq!(
            verdict(list, r#"{"Next":"","Count":21}"#),
            Err(Refusal::new(100002, "Count is 21; the limit is 20"))
        );
        assert_eq!(
            verdict(list, r#"{"Next":"","Count":"20"}"#)
                .unwrap_err()
                .info,
            "Count must be an integer, not a string"
        );
        assert_eq!(
            verdict(list, r#"{"Next":"","Count":2.5}"#)
                .unwrap_err()
                .code,
            100002
        );
        assert_eq!(
            verdict(list, r#"{"Count":1}"#).unwrap_err().info,
            "Next is required: a string"
        );
    }

    #[test]
    fn nested_fields_are_named_by_their_path() {
        let create = "live_engine_http_srv/create_room";
        let body = format!(r#"{{"RoomInfo":{{"RoomId":"{}"}}}}"#, "r".repeat(49));
        assert_eq!(
            verdict(create, &body).unwrap_err().info,
            "RoomInfo.RoomId is 49 bytes; the limit is 48"
        );
        let body = r#"{"RoomInfo":{"RoomId":"r","Category":[1,2,3,4]}}"#;
        assert_eq!(
            verdict(create, body).unwrap_err().info,
            "RoomInfo.Category has 4 items; the limit is 3"
        );
        assert_eq!(
            verdict(create, r#"{"RoomInfo":"r"}"#).unwrap_err().info,
            "RoomInfo must be an object, not a string"
        );
    }

    #[test]
    fn unchecked_apis_have_no_rules() {
        assert!(for_api("profile/portrait_get").is_none());
        assert!(
            TABLE
                .iter()
                .all(|(api, rules)| api.contains('/') && !rules.is_empty())
        );
    }

    #[test]
    fn paths_read_with_their_indices() {
        assert_eq!(name("Metadata[].Value", &[3]), "Metadata[3].Value");
        assert_eq!(name("Metadata[].Value", &[]), "Metadata[].Value");
        assert_eq!(name("RoomInfo.RoomId", &[]), "RoomInfo.RoomId");
    }
}
