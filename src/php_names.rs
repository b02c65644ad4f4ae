//! The strings rows carry (`verdict`, `reason`, `action`) as class constants, so callers
//! compare with `Verdict::DEAD` instead of a bare 'dead' a typo can break silently:
//!
//! ```text
//! final class Matomo\ArchiveClaim\Verdict  { const DEAD = 'dead'; ... }
//! final class Matomo\ArchiveClaim\Reason   { const PID_GONE = 'pid_gone'; ... }
//! final class Matomo\ArchiveClaim\Action   { const RESET = 'reset'; ... }
//! ```
//!
//! Built from the enums' own lists (`string_enum!`): a constant's name is its value in upper
//! case. The values stay the strings rows always carried.

use ext_php_rs::builders::ClassBuilder;
use ext_php_rs::flags::{ClassFlags, ConstantFlags};

use crate::liveness::{Reason, Verdict};
use crate::reap::Action;

/// (class, values) for every class of names.
pub fn classes() -> [(&'static str, Vec<&'static str>); 3] {
    [
        (
            "Matomo\\ArchiveClaim\\Verdict",
            Verdict::ALL.iter().map(|v| v.as_str()).collect(),
        ),
        (
            "Matomo\\ArchiveClaim\\Reason",
            Reason::ALL.iter().map(|r| r.as_str()).collect(),
        ),
        (
            "Matomo\\ArchiveClaim\\Action",
            Action::ALL.iter().map(|a| a.as_str()).collect(),
        ),
    ]
}

/// Registers the classes; called from module startup. Returns false if PHP refused one.
pub fn register() -> bool {
    classes().into_iter().all(|(class, values)| {
        let mut builder = ClassBuilder::new(class).flags(ClassFlags::Final);
        for value in values {
            let added = builder.constant(
                value.to_ascii_uppercase(),
                value,
                &[],
                ConstantFlags::Public,
            );
            match added {
                Ok(b) => builder = b,
                Err(_) => return false,
            }
        }
        builder.registration(|_, _| {}).register().is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_unique_snake_case_words_so_their_upper_case_is_a_constant_name() {
        for (class, values) in classes() {
            assert!(!values.is_empty(), "{class}");
            let mut seen = values.clone();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), values.len(), "{class}: a value twice");
            for v in values {
                assert!(
                    v.starts_with(|c: char| c.is_ascii_lowercase())
                        && v.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                    "{class}: {v}"
                );
            }
        }
    }
}
