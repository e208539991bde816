//! One reading of every body: JSON by the same rules on every API, and no object that names
//! a key twice.
//!
//! "JSON" means what serde_json's full parse accepts: UTF-8 throughout (no lone surrogate in
//! a `\u` escape either), fewer than 128 levels of nesting, numbers that fit an `f64`, nothing
//! after the value. A body that needs a tree (its API has rules or quotas) gets one from
//! `parse`; any other from `validate`, which walks the same parse without building anything.
//! Strings are borrowed from the body, which goes upstream unchanged.
//!
//! A key named twice in one object, at any depth, makes a body unreadable: RFC 8259 leaves
//! its meaning to each parser, so timgate (which reads a quota's cost and key from the body)
//! and Tencent could read two different requests. I-JSON (RFC 7493) forbids such bodies; so
//! does timgate, on every API, before any quota is spent. Keys are compared as decoded
//! strings: `"a"` and `"\u0061"` are the same key.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt::{self, Write as _};

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json_borrow::Value;

/// A body that timgate cannot read as one request (Tencent's 60003).
#[derive(Debug, thiserror::Error)]
pub enum Unreadable {
    /// Not JSON at all.
    #[error("request body is not valid JSON: {0}")]
    Syntax(#[source] serde_json::Error),
    /// An object names a key twice.
    #[error("{0}")]
    Repeated(Repeated),
}

/// A key named twice in one object, and where that object is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repeated {
    /// The key, as decoded (cut to `SHOWN` characters when shown).
    pub key: String,
    /// The object's path from the body's root (`Msg.Body[2]`); empty for the root itself.
    pub at: String,
}

/// The most characters of a key or path an error shows: a caller's key can be megabytes long.
const SHOWN: usize = 64;

impl fmt::Display for Repeated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "request body names the key {:?} twice in ",
            cut(&self.key)
        )?;
        if self.at.is_empty() {
            f.write_str("its top-level object")?;
        } else {
            write!(f, "the object at {}", cut(&self.at))?;
        }
        f.write_str(": which copy Tencent would read is undefined, so timgate reads neither")
    }
}

/// `text`, cut to `SHOWN` characters with `…` when longer.
fn cut(text: &str) -> Cow<'_, str> {
    match text.char_indices().nth(SHOWN) {
        Some((end, _)) => Cow::Owned(format!("{}…", &text[..end])),
        None => Cow::Borrowed(text),
    }
}

/// Checks that `body` is JSON with no repeated key, building nothing.
pub fn validate(body: &[u8]) -> Result<(), Unreadable> {
    match serde_json::from_slice::<Json>(body) {
        Ok(Json) => Ok(()),
        // Only `Json`'s repeated-key error is a data error; the tree finds the key's path.
        Err(e) if e.is_data() => parse(body).map(drop).and(Err(Unreadable::Syntax(e))),
        Err(e) => Err(Unreadable::Syntax(e)),
    }
}

/// Parses `body` into a tree that borrows its strings, refusing any repeated key.
pub fn parse(body: &[u8]) -> Result<Value<'_>, Unreadable> {
    let value: Value<'_> = serde_json::from_slice(body).map_err(Unreadable::Syntax)?;
    match repeated(&value) {
        Some(repeated) => Err(Unreadable::Repeated(repeated)),
        None => Ok(value),
    }
}

/// The first key named twice in one object anywhere in `value`, depth first.
fn repeated(value: &Value<'_>) -> Option<Repeated> {
    let mut path = Vec::new();
    find(value, &mut path).map(|key| Repeated {
        key: key.to_owned(),
        at: show(&path),
    })
}

/// A step from an object or array to one of its values.
enum Step<'v> {
    Key(&'v str),
    Index(usize),
}

fn find<'v>(value: &'v Value<'_>, path: &mut Vec<Step<'v>>) -> Option<&'v str> {
    match value {
        Value::Object(object) => {
            if let Some(key) = twice(object.keys()) {
                return Some(key);
            }
            object.iter().find_map(|(key, value)| {
                path.push(Step::Key(key));
                let found = find(value, path);
                if found.is_none() {
                    path.pop();
                }
                found
            })
        }
        Value::Array(items) => items.iter().enumerate().find_map(|(i, value)| {
            path.push(Step::Index(i));
            let found = find(value, path);
            if found.is_none() {
                path.pop();
            }
            found
        }),
        _ => None,
    }
}

fn show(path: &[Step<'_>]) -> String {
    let mut shown = String::new();
    for step in path {
        match step {
            Step::Key(key) if shown.is_empty() => shown.push_str(key),
            Step::Key(key) => {
                shown.push('.');
                shown.push_str(key);
            }
            Step::Index(i) => {
                let _ = write!(shown, "[{i}]");
            }
        }
    }
    shown
}

/// A key that `keys` yields twice, if any.
fn twice<'k>(mut keys: impl Iterator<Item = &'k str>) -> Option<&'k str> {
    let mut seen = Seen::default();
    keys.find(|key| !seen.insert(key))
}

/// Keys seen in one object: a short list while few (most objects), a set past that.
#[derive(Default)]
struct Seen<'k> {
    few: Vec<&'k str>,
    many: Option<HashSet<&'k str>>,
}

/// Objects with at most this many keys are checked by a linear scan.
const FEW: usize = 16;

impl<'k> Seen<'k> {
    /// Adds `key`; false when it was seen before.
    fn insert(&mut self, key: &'k str) -> bool {
        if let Some(many) = &mut self.many {
            return many.insert(key);
        }
        if self.few.contains(&key) {
            return false;
        }
        self.few.push(key);
        if self.few.len() > FEW {
            self.many = Some(self.few.drain(..).collect());
        }
        true
    }
}

/// Any JSON value, validated and then forgotten. Unlike `IgnoredAny`, which skips strings and
/// nested values without looking, it asks for every value, so the parser checks each string's
/// UTF-8 and escapes, counts nesting against its limit, and reads each number; and it keeps
/// each object's keys while it reads that object, to refuse one named twice.
struct Json;

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Json, D::Error> {
        deserializer.deserialize_any(Json)
    }
}

impl<'de> Visitor<'de> for Json {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Json, E> {
        Ok(Json)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Json, E> {
        Ok(Json)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Json, E> {
        Ok(Json)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Json, E> {
        Ok(Json)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Json, E> {
        Ok(Json)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Json, A::Error> {
        while items.next_element::<Json>()?.is_some() {}
        Ok(Json)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<Json, A::Error> {
        let mut keys: Vec<Cow<'de, str>> = Vec::new();
        while let Some(key) = entries.next_key_seed(Key)? {
            if keys.len() == FEW {
                return Self::visit_large_map(keys, key, entries);
            }
            if keys.contains(&key) {
                return Err(de::Error::custom("a key is repeated"));
            }
            keys.push(key);
            entries.next_value::<Json>()?;
        }
        Ok(Json)
    }
}

impl Json {
    /// The rest of a map that has passed `FEW` keys, with its keys in a set.
    fn visit_large_map<'de, A: MapAccess<'de>>(
        keys: Vec<Cow<'de, str>>,
        mut key: Cow<'de, str>,
        mut entries: A,
    ) -> Result<Json, A::Error> {
        let mut keys: HashSet<Cow<'de, str>> = keys.into_iter().collect();
        loop {
            if !keys.insert(key) {
                return Err(de::Error::custom("a key is repeated"));
            }
            entries.next_value::<Json>()?;
            match entries.next_key_seed(Key)? {
                Some(next) => key = next,
                None => return Ok(Json),
            }
        }
    }
}

/// An object's key, borrowed from the body unless it had escapes to decode.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(key))
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(key.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repeated_in(body: &str) -> Option<Repeated> {
        let fast = validate(body.as_bytes());
        let tree = parse(body.as_bytes()).map(drop);
        let found = |result: Result<(), Unreadable>| match result {
            Ok(()) => None,
            Err(Unreadable::Repeated(r)) => Some(r),
            Err(Unreadable::Syntax(e)) => panic!("{body}: {e}"),
        };
        let (fast, tree) = (found(fast), found(tree));
        assert_eq!(fast, tree, "validate and parse disagree on {body}");
        fast
    }

    fn at(key: &str, at: &str) -> Option<Repeated> {
        Some(Repeated {
            key: key.into(),
            at: at.into(),
        })
    }

    #[test]
    fn a_repeated_key_is_found_in_either_order_and_at_any_depth() {
        let many = |n: usize| (0..n).map(|i| format!(r#""k{i}":{i}"#)).collect::<Vec<_>>();
        let mut wide = many(40);
        wide.push(r#""k3":"again""#.into());
        let cases = [
            (
                r#"{"To_Account":["x"],"To_Account":["a","b"]}"#,
                at("To_Account", ""),
            ),
            (
                r#"{"To_Account":["a","b"],"To_Account":["x"]}"#,
                at("To_Account", ""),
            ),
            (
                r#"{"GroupId":"decoy","GroupId":"victim"}"#,
                at("GroupId", ""),
            ),
            (
                r#"{"MsgBody":[{"MsgType":"TIMTextElem"},{"MsgContent":{"Text":"a","Text":"b"}}]}"#,
                at("Text", "MsgBody[1].MsgContent"),
            ),
            (r#"[{"a":1},{"b":[{"c":1,"c":2}]}]"#, at("c", "[1].b[0]")),
            (r#"{"a":1,"\u0061":2}"#, at("a", "")),
            (&format!("{{{}}}", wide.join(",")), at("k3", "")),
            (r#"{"a":{"x":1},"b":{"x":1},"c":[{"x":1},{"x":2}]}"#, None),
            (&format!("{{{}}}", many(40).join(",")), None),
            (r#"{"a":"a","A":"a","a ":1}"#, None),
        ];
        for (body, expected) in cases {
            assert_eq!(repeated_in(body), expected, "{body}");
        }
    }

    #[test]
    fn the_answer_names_the_key_and_where_it_is() {
        let named = |body: &str| parse(body.as_bytes()).map(drop).unwrap_err().to_string();
        assert_eq!(
            named(r#"{"GroupId":"decoy","GroupId":"victim"}"#),
            "request body names the key \"GroupId\" twice in its top-level object: \
             which copy Tencent would read is undefined, so timgate reads neither"
        );
        assert!(
            named(r#"{"MsgBody":[{"MsgContent":{"Text":"a","Text":"b"}}]}"#)
                .contains("\"Text\" twice in the object at MsgBody[0].MsgContent:")
        );
        let long = "k".repeat(1_000_000);
        let shown = named(&format!(r#"{{"{long}":1,"{long}":2}}"#));
        assert!(shown.len() < 300, "{} bytes", shown.len());
        assert!(shown.contains(&format!("\"{}…\"", "k".repeat(SHOWN))));
    }

    #[test]
    fn malformed_json_is_a_syntax_error_on_both_readings() {
        for body in [
            &br#"{"a":1,"a""#[..],
            b"{\"a\":1,}",
            b"{} {}",
            b"\"\\ud800\"",
        ] {
            assert!(matches!(validate(body), Err(Unreadable::Syntax(_))));
            assert!(matches!(parse(body), Err(Unreadable::Syntax(_))));
        }
    }
}
