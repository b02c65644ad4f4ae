//! PHP arrays as plain Rust values, and typed readers over them.
//!
//! The PHP layer copies an incoming array into `Value` once; everything else (configuration,
//! filters, reap options) reads from these types, so it is testable without a PHP engine and
//! every refusal says which key or element was wrong.

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub enum Key {
    Int(i64),
    Str(String),
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Int(i) => write!(f, "{i}"),
            Key::Str(s) => write!(f, "'{s}'"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Array(Vec<(Key, Value)>),
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "string",
            Value::Array(_) => "array",
        }
    }
}

/// A PHP array of options (string keys), checked against the keys a function knows.
pub struct Options<'a> {
    function: &'static str,
    entries: &'a [(Key, Value)],
}

impl<'a> Options<'a> {
    /// Refuses any key not in `known` (a typo must not pass silently) and any integer key.
    pub fn new(
        function: &'static str,
        entries: &'a [(Key, Value)],
        known: &[&str],
    ) -> Result<Self> {
        for (key, _) in entries {
            match key {
                Key::Str(k) if known.contains(&k.as_str()) => {}
                _ => {
                    return Err(Error::invalid(format!(
                        "{function}(): unknown option {key}; known options are: {}",
                        known.join(", ")
                    )))
                }
            }
        }
        Ok(Options { function, entries })
    }

    pub fn function(&self) -> &'static str {
        self.function
    }

    /// The value of `key`, treating an explicit null as absent.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.entries.iter().find_map(|(k, v)| match (k, v) {
            (_, Value::Null) => None,
            (Key::Str(name), v) if name == key => Some(v),
            _ => None,
        })
    }

    fn wrong(&self, key: &str, expected: &str, got: &Value) -> Error {
        Error::wrong_type(format!(
            "{}(): option '{key}' must be {expected}, {} given",
            self.function,
            got.type_name()
        ))
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::Int(0)) => Ok(Some(false)),
            Some(Value::Int(1)) => Ok(Some(true)),
            Some(v) => Err(self.wrong(key, "a bool", v)),
        }
    }

    /// A whole number in `min..=max`; decimal strings are accepted because ini files and
    /// Matomo's config hand numbers over as strings.
    pub fn int_in(&self, key: &str, min: i64, max: i64) -> Result<Option<i64>> {
        let n = match self.get(key) {
            None => return Ok(None),
            Some(Value::Int(n)) => *n,
            Some(Value::Str(s)) => s.trim().parse::<i64>().map_err(|_| {
                Error::invalid(format!(
                    "{}(): option '{key}' must be a whole number, got '{s}'",
                    self.function
                ))
            })?,
            Some(v) => return Err(self.wrong(key, "an int", v)),
        };
        if n < min || n > max {
            return Err(Error::invalid(format!(
                "{}(): option '{key}' must be between {min} and {max}, got {n}",
                self.function
            )));
        }
        Ok(Some(n))
    }

    pub fn string(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s.as_str())),
            Some(v) => Err(self.wrong(key, "a string", v)),
        }
    }

    /// A list of site ids (positive ints or their decimal strings).
    pub fn ids(&self, key: &str) -> Result<Option<Vec<i64>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => {
                let context = format!("{}(): option '{key}'", self.function);
                items
                    .iter()
                    .map(|(_, v)| positive_id(&context, v))
                    .collect::<Result<Vec<_>>>()
                    .map(Some)
            }
            Some(v) => Err(self.wrong(key, "an array of ids", v)),
        }
    }

    /// A list of non-empty strings (host names).
    pub fn strings(&self, key: &str) -> Result<Option<Vec<String>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|(k, v)| match v {
                    Value::Str(s) if !s.is_empty() => Ok(s.clone()),
                    other => Err(Error::invalid(format!(
                        "{}(): option '{key}' element {k} must be a non-empty string, {} given",
                        self.function,
                        other.type_name()
                    ))),
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => Err(self.wrong(key, "an array of strings", v)),
        }
    }
}

/// One id from a PHP value: a positive int, or the decimal string PDO hands back for one.
pub fn positive_id(context: &str, value: &Value) -> Result<i64> {
    let parsed = match value {
        Value::Int(n) => Some(*n),
        Value::Str(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse::<i64>().ok()
        }
        _ => None,
    };
    match parsed {
        Some(n) if n >= 1 => Ok(n),
        _ => Err(Error::invalid(format!(
            "{context}: ids must be positive integers, got {}",
            describe(value)
        ))),
    }
}

/// A short, password-free rendering of a value for error messages.
pub fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("{b}"),
        Value::Int(n) => format!("{n}"),
        Value::Float(f) => format!("{f}"),
        Value::Str(s) if s.chars().count() > 40 => {
            format!("'{}...'", s.chars().take(40).collect::<String>())
        }
        Value::Str(s) => format!("'{s}'"),
        Value::Array(_) => "an array".into(),
    }
}

/// The id list that release/complete take, in ascending order without repeats.
pub fn id_list(function: &str, items: &[(Key, Value)]) -> Result<Vec<i64>> {
    let context = format!("{function}()");
    let mut ids = items
        .iter()
        .map(|(_, v)| positive_id(&context, v))
        .collect::<Result<Vec<_>>>()?;
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(k: &str, v: Value) -> (Key, Value) {
        (Key::Str(k.into()), v)
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let entries = vec![s("dry_rn", Value::Bool(true))];
        let err = Options::new("reap_orphans", &entries, &["dry_run"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("'dry_rn'"), "{err}");
        assert!(err.contains("dry_run"), "{err}");
    }

    #[test]
    fn integer_keys_are_refused() {
        let entries = vec![(Key::Int(0), Value::Int(3))];
        assert!(Options::new("f", &entries, &["a"]).is_err());
    }

    #[test]
    fn numbers_come_as_ints_or_decimal_strings_within_range() {
        let entries = vec![
            s("a", Value::Int(5)),
            s("b", Value::Str("3306".into())),
            s("c", Value::Str("x".into())),
            s("d", Value::Int(-1)),
        ];
        let o = Options::new("f", &entries, &["a", "b", "c", "d"]).expect("known keys");
        assert_eq!(o.int_in("a", 0, 10).ok().flatten(), Some(5));
        assert_eq!(o.int_in("b", 1, 65535).ok().flatten(), Some(3306));
        assert!(o.int_in("c", 0, 10).is_err());
        assert!(o.int_in("d", 0, 10).is_err());
        assert_eq!(o.int_in("missing", 0, 10).ok().flatten(), None);
    }

    #[test]
    fn null_counts_as_absent() {
        let entries = vec![s("a", Value::Null)];
        let o = Options::new("f", &entries, &["a"]).expect("known keys");
        assert_eq!(o.bool("a").ok().flatten(), None);
    }

    #[test]
    fn wrong_types_are_type_errors() {
        let entries = vec![s("a", Value::Str("yes".into()))];
        let o = Options::new("f", &entries, &["a"]).expect("known keys");
        assert!(matches!(o.bool("a"), Err(Error::WrongType(_))));
    }

    #[test]
    fn ids_accept_pdo_strings_and_refuse_zero_negative_and_junk() {
        let ok = [Value::Int(7), Value::Str("12".into())];
        for v in &ok {
            assert!(positive_id("t", v).is_ok());
        }
        let bad = [
            Value::Int(0),
            Value::Int(-3),
            Value::Str("1e3".into()),
            Value::Str("".into()),
            Value::Str(" 4".into()),
            Value::Float(2.0),
            Value::Null,
        ];
        for v in &bad {
            assert!(positive_id("t", v).is_err(), "{v:?}");
        }
    }

    #[test]
    fn id_lists_are_sorted_and_unique() {
        let items = vec![
            (Key::Int(0), Value::Int(9)),
            (Key::Int(1), Value::Int(2)),
            (Key::Int(2), Value::Str("9".into())),
        ];
        assert_eq!(id_list("f", &items).ok(), Some(vec![2, 9]));
    }
}
