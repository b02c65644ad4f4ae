//! What callers may ask to see: the row filter of `in_progress()` (and the time bounds a reap
//! shares), its paging cursor and its bounds, parsed from PHP options and checked before any
//! statement is built.

use crate::error::{Error, Result};
use crate::invalidations::{RowFilter, TimeBound};
use crate::options::{Key, Options, Value};

pub const FILTER_KEYS: &[&str] = &[
    "idsites",
    "hosts",
    "started_after",
    "started_before",
    "limit",
    "after",
];

/// Rows `in_progress()` returns when no `limit` is given: a bounded answer by default (about
/// 15 MB of PHP arrays), pages for more.
pub const DEFAULT_IN_PROGRESS_LIMIT: usize = 10_000;

/// Rows read from the database per statement while an `in_progress()` answer is built: what the
/// extension holds outside PHP's memory_limit at any time, whatever the limit asked for.
pub const IN_PROGRESS_CHUNK: usize = 5_000;

pub fn parse_filter(function: &'static str, entries: &[(Key, Value)]) -> Result<RowFilter> {
    let o = Options::new(function, entries, FILTER_KEYS)?;
    let limit = o
        .int_in("limit", 1, i64::from(i32::MAX))?
        .map_or(DEFAULT_IN_PROGRESS_LIMIT, |n| n as usize);
    Ok(RowFilter {
        idsites: o.ids("idsites")?,
        hosts: o.strings("hosts")?,
        started_after: datetime(&o, "started_after")?,
        started_before: datetime(&o, "started_before")?,
        include_never_started: false,
        by_id: false,
        after: page_cursor(&o)?,
        limit: Some(limit),
        decision_columns_only: false,
    })
}

/// `after`: the last row of the previous page (any array with its `ts_started` and
/// `idinvalidation`; the other keys of a row are ignored).
fn page_cursor(o: &Options) -> Result<Option<(String, u64)>> {
    let wrong = || {
        Error::invalid(format!(
            "{}(): option 'after' must be the last row of the previous page (an array with \
             'ts_started' => 'YYYY-MM-DD HH:MM:SS' and 'idinvalidation' => a positive int)",
            o.function()
        ))
    };
    let entries = match o.get("after") {
        None => return Ok(None),
        Some(Value::Array(entries)) => entries,
        Some(v) => {
            return Err(Error::wrong_type(format!(
                "{}(): option 'after' must be an array (a row of the previous page), {} given",
                o.function(),
                v.type_name()
            )))
        }
    };
    let field = |name: &str| {
        entries
            .iter()
            .find(|(k, _)| *k == Key::Str(name.into()))
            .map(|(_, v)| v)
    };
    let ts_started = match field("ts_started") {
        Some(Value::Str(s)) if s.len() == 19 && is_datetime(s) => s.clone(),
        _ => return Err(wrong()),
    };
    let id = field("idinvalidation")
        .and_then(|v| crate::options::positive_id("", v).ok())
        .ok_or_else(wrong)?;
    Ok(Some((ts_started, id as u64)))
}

/// 'YYYY-MM-DD HH:MM:SS' or 'YYYY-MM-DD' on the database clock, as Matomo writes ts_started, or
/// an int: an instant in Unix seconds, which the database turns into its own local time (a
/// caller's "an hour ago" is an instant, and only the database knows its time zone).
pub fn datetime(o: &Options, key: &str) -> Result<Option<TimeBound>> {
    if let Some(Value::Int(t)) = o.get(key) {
        return if (0..=i64::from(i32::MAX)).contains(t) {
            Ok(Some(TimeBound::Unix(*t)))
        } else {
            Err(Error::invalid(format!(
                "{}(): option '{key}' as Unix seconds must be between 0 and {}, got {t}",
                o.function(),
                i32::MAX
            )))
        };
    }
    let Some(s) = o.string(key)? else {
        return Ok(None);
    };
    if is_datetime(s) {
        Ok(Some(TimeBound::Local(s.to_owned())))
    } else {
        Err(Error::invalid(format!(
            "{}(): option '{key}' must look like '2026-11-29 03:00:00' (database time) or be Unix \
             seconds (an int), got '{}'",
            o.function(),
            s.chars().take(40).collect::<String>()
        )))
    }
}

/// 'YYYY-MM-DD' or 'YYYY-MM-DD HH:MM:SS' naming a real calendar time: '2026-13-45 99:99:99' has
/// the shape but MariaDB would compare it as a string and match every row.
fn is_datetime(s: &str) -> bool {
    let shape = |pattern: &str| {
        s.len() == pattern.len()
            && s.bytes().zip(pattern.bytes()).all(|(c, p)| match p {
                b'9' => c.is_ascii_digit(),
                other => c == other,
            })
    };
    if !(shape("9999-99-99") || shape("9999-99-99 99:99:99")) {
        return false;
    }
    let field = |range: std::ops::Range<usize>| s.get(range).and_then(|f| f.parse::<u32>().ok());
    let (Some(year), Some(month), Some(day)) = (field(0..4), field(5..7), field(8..10)) else {
        return false;
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    let time_ok = s.len() == 10
        || matches!((field(11..13), field(14..16), field(17..19)),
            (Some(h), Some(m), Some(sec)) if h < 24 && m < 60 && sec < 60);
    year >= 1000 && (1..=days).contains(&day) && time_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(k: &str, v: Value) -> (Key, Value) {
        (Key::Str(k.into()), v)
    }

    #[test]
    fn filters_parse_and_refuse_what_is_wrong() {
        let f = parse_filter(
            "in_progress",
            &[
                s("idsites", Value::Array(vec![(Key::Int(0), Value::Int(3))])),
                s("started_before", Value::Str("2026-11-29 03:00:00".into())),
            ],
        )
        .expect("valid");
        assert_eq!(f.idsites, Some(vec![3]));
        assert_eq!(
            f.started_before,
            Some(TimeBound::Local("2026-11-29 03:00:00".into()))
        );
        assert!(is_datetime("2024-02-29") && is_datetime("2026-12-31 23:59:59"));

        for bad in [
            vec![s("idsite", Value::Int(1))],
            vec![s("idsites", Value::Int(1))],
            vec![s("started_after", Value::Str("yesterday".into()))],
            vec![s(
                "started_after",
                Value::Str("2026-11-29' OR 1=1 --".into()),
            )],
            vec![s("started_after", Value::Str("2026-13-45 99:99:99".into()))],
            vec![s("started_before", Value::Str("2026-02-29".into()))],
            vec![s(
                "started_before",
                Value::Str("2026-11-29 24:00:00".into()),
            )],
            vec![s(
                "hosts",
                Value::Array(vec![(Key::Int(0), Value::Str(String::new()))]),
            )],
        ] {
            assert!(parse_filter("in_progress", &bad).is_err(), "{bad:?}");
        }
    }
}
