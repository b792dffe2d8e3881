//! Validation of user-chosen names (VMs, hosts, datastores, networks).

/// Longest accepted name.
pub const MAX_NAME_LEN: usize = 63;

/// [`validate_name`]'s rule as the regular expression the OpenAPI document
/// states (with a length of 1 to [`MAX_NAME_LEN`]); every name field of the
/// API types carries it.
pub const NAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._-]*$";

/// Checks that `name` is a valid object name: 1–63 characters, ASCII letters,
/// digits, `-`, `_` and `.`, starting with a letter or digit. Such a name is
/// safe as a file name, a hostname label prefix and a URL path segment.
///
/// Returns a sentence saying what is wrong, for the API's error message.
pub fn validate_name(kind: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{kind} name must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "{kind} name '{}…' is {} characters long; at most {MAX_NAME_LEN} are allowed",
            &name[..name
                .char_indices()
                .nth(16)
                .map(|(i, _)| i)
                .unwrap_or(name.len())],
            name.chars().count()
        ));
    }
    let first = name.chars().next().unwrap_or(' ');
    if !first.is_ascii_alphanumeric() {
        return Err(format!(
            "{kind} name '{name}' must start with a letter or a digit"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "{kind} name '{}' contains '{}'; use letters, digits, '-', '_' or '.'",
            name.escape_default(),
            bad.escape_default()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for n in ["web-1", "db01", "a", "x.y_z", "9lives"] {
            assert!(validate_name("VM", n).is_ok(), "{n}");
        }
    }

    proptest::proptest! {
        /// The OpenAPI document's pattern and length state exactly what
        /// `validate_name` accepts.
        #[test]
        fn the_stated_pattern_is_the_rule(name in "[A-Za-z0-9._ /\\-]{0,70}|\\PC{0,5}") {
            let re = regex::Regex::new(NAME_PATTERN).unwrap();
            let stated = re.is_match(&name) && (1..=MAX_NAME_LEN).contains(&name.chars().count());
            proptest::prop_assert_eq!(validate_name("VM", &name).is_ok(), stated, "{:?}", name);
        }
    }

    #[test]
    fn rejects_bad_names() {
        for n in ["", "-a", ".a", "a b", "a/b", "ü", &"a".repeat(64), "a\n"] {
            assert!(validate_name("VM", n).is_err(), "{n:?}");
        }
    }
}
