//! SQL identifiers from the command line: checked, then always quoted.
//!
//! Table and column names reach SQL text (they cannot be bound as
//! parameters), so only plain identifiers are accepted and every use quotes
//! them: `users`, `app.users`, `email`.

use std::fmt;

/// PostgreSQL truncates identifiers longer than this (NAMEDATALEN - 1).
pub const MAX_LEN: usize = 63;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentError {
    #[error(
        "{0:?} is not a plain SQL identifier (letters, digits and _, not starting with a digit, \
         at most 63 bytes)"
    )]
    Invalid(String),
}

/// One identifier, e.g. a column.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ident(String);

impl Ident {
    pub fn new(s: &str) -> Result<Ident, IdentError> {
        let ok = !s.is_empty()
            && s.len() <= MAX_LEN
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !s.as_bytes()[0].is_ascii_digit();
        if ok {
            Ok(Ident(s.to_owned()))
        } else {
            Err(IdentError::Invalid(s.to_owned()))
        }
    }

    /// The name as the catalog stores it (unquoted).
    pub fn name(&self) -> &str {
        &self.0
    }

    /// A name derived from this one (`email` → `email_enc`).
    pub fn with_suffix(&self, suffix: &str) -> Result<Ident, IdentError> {
        Ident::new(&format!("{}{suffix}", self.0))
    }
}

impl fmt::Display for Ident {
    /// Quoted: safe in SQL text whatever the name (it holds no `"`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0)
    }
}

/// A table, optionally schema-qualified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub schema: Option<Ident>,
    pub name: Ident,
}

impl Table {
    pub fn parse(s: &str) -> Result<Table, IdentError> {
        match s.split_once('.') {
            Some((schema, name)) => Ok(Table {
                schema: Some(Ident::new(schema)?),
                name: Ident::new(name)?,
            }),
            None => Ok(Table {
                schema: None,
                name: Ident::new(s)?,
            }),
        }
    }

    /// `schema.table` as typed, unquoted: for messages and job names.
    pub fn label(&self) -> String {
        match &self.schema {
            Some(s) => format!("{}.{}", s.name(), self.name.name()),
            None => self.name.name().to_owned(),
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.name),
            None => write!(f, "{}", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_quoted_and_anything_else_is_refused() {
        assert_eq!(Table::parse("users").expect("ok").to_string(), "\"users\"");
        assert_eq!(
            Table::parse("app.users").expect("ok").to_string(),
            "\"app\".\"users\""
        );
        for bad in [
            "",
            "1users",
            "users; DROP TABLE x",
            "us\"ers",
            "a.b.c",
            "émail",
            &"x".repeat(64),
        ] {
            assert!(Table::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            Ident::new("email")
                .and_then(|i| i.with_suffix("_enc"))
                .expect("ok")
                .name(),
            "email_enc"
        );
    }
}
