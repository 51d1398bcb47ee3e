//! Secrets in a type whose `Debug` and `Display` mask them, so a config struct can derive
//! `Debug` and be logged without leaking passwords (after Arroyo's `Sensitive`).

use serde::Deserialize;
use std::fmt;

/// A secret value: prints as `***` (or as nothing when it is empty, so "no password set" is
/// still visible), deserializes as the bare value, and is read only through [`expose`].
///
/// It does not implement `Serialize`: writing a config back out must not write its secrets.
///
/// [`expose`]: Sensitive::expose
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Sensitive<T>(T);

impl<T> Sensitive<T> {
    /// Wraps `value`.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The secret itself, for the one place that hands it to a client.
    pub fn expose(&self) -> &T {
        &self.0
    }

    /// Unwraps the secret.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> From<T> for Sensitive<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

/// Whether a secret is empty (printed as `""` rather than `***`).
pub trait Blank {
    /// True when there is no secret to hide.
    fn is_blank(&self) -> bool;
}

impl Blank for String {
    fn is_blank(&self) -> bool {
        self.is_empty()
    }
}

impl Blank for Box<str> {
    fn is_blank(&self) -> bool {
        self.is_empty()
    }
}

impl Blank for Vec<u8> {
    fn is_blank(&self) -> bool {
        self.is_empty()
    }
}

impl<T: Blank> Blank for Option<T> {
    fn is_blank(&self) -> bool {
        self.as_ref().is_none_or(Blank::is_blank)
    }
}

impl<T: Blank> Sensitive<T> {
    fn mask(&self) -> &'static str {
        if self.0.is_blank() {
            ""
        } else {
            "***"
        }
    }
}

impl<T: Blank> fmt::Debug for Sensitive<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Quoted like a string's Debug, so `{:?}` of a struct keeps its shape.
        write!(f, "\"{}\"", self.mask())
    }
}

impl<T: Blank> fmt::Display for Sensitive<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.mask())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Conn {
        user: String,
        password: Sensitive<String>,
    }

    #[test]
    fn debug_and_display_hide_the_value() {
        let s = Sensitive::new("hunter2".to_string());
        assert_eq!(format!("{s:?}"), "\"***\"");
        assert_eq!(format!("{s:#?}"), "\"***\"");
        assert_eq!(s.to_string(), "***");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn empty_secret_prints_empty() {
        let s = Sensitive::new(String::new());
        assert_eq!(format!("{s:?}"), "\"\"");
        assert_eq!(s.to_string(), "");
        assert_eq!(format!("{:?}", Sensitive::new(None::<String>)), "\"\"");
        assert_eq!(
            format!("{:?}", Sensitive::new(Some("x".to_string()))),
            "\"***\""
        );
    }

    #[test]
    fn deserializes_transparently_and_a_derived_debug_hides_it() -> serde_json::Result<()> {
        let c: Conn = serde_json::from_str(r#"{"user":"shop","password":"hunter2"}"#)?;
        assert_eq!(c.user, "shop");
        assert_eq!(c.password.expose(), "hunter2");
        let printed = format!("{c:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("password: \"***\""), "{printed}");
        assert!(printed.contains("user: \"shop\""), "{printed}");
        Ok(())
    }
}
