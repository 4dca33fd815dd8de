//! A parser's message about configuration, without the configuration's own text: faults are
//! listed to anyone (`/healthz`, every `not-configured` answer), and a value may be something an
//! operator would not publish (a record's status `stolen-at-site-7`, a secret pasted in the
//! wrong setting). serde quotes what it found (``unknown variant `x` ``, `invalid type: string
//! "x"`) before what it expected; the found part is replaced, the expected part (the schema's
//! own names) and the position are kept.

/// `message` with every quoted span before `, expected` replaced by `(not shown)`.
pub fn unquoted(message: &str) -> String {
    let (found, expected) = match message.find(", expected") {
        Some(at) => message.split_at(at),
        None => (message, ""),
    };
    // A missing field is named by the schema, not by the document.
    if found.starts_with("missing field") {
        return message.to_owned();
    }
    let mut out = String::with_capacity(message.len());
    let mut rest = found;
    while let Some(open) = rest.find(['`', '"']) {
        let quote = rest.as_bytes()[open] as char;
        out.push_str(&rest[..open]);
        match rest[open + 1..].find(quote) {
            Some(close) => {
                out.push_str("(not shown)");
                rest = &rest[open + 1 + close + 1..];
            }
            None => {
                out.push_str("(not shown)");
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out.push_str(expected);
    out
}

#[cfg(test)]
mod tests {
    use super::unquoted;

    #[test]
    fn what_was_found_goes_and_what_was_expected_stays() {
        assert_eq!(
            unquoted("unknown variant `stolen-at-site-7`, expected `active` or `disabled` at line 1 column 30"),
            "unknown variant (not shown), expected `active` or `disabled` at line 1 column 30"
        );
        assert_eq!(
            unquoted("invalid type: string \"hunter2\", expected f64 at line 1 column 9"),
            "invalid type: string (not shown), expected f64 at line 1 column 9"
        );
        assert_eq!(
            unquoted("unknown field `gian`, expected one of `match`, `gain`"),
            "unknown field (not shown), expected one of `match`, `gain`"
        );
        assert_eq!(
            unquoted("missing field `version`"),
            "missing field `version`"
        );
        assert_eq!(
            unquoted("duplicate field `x` at line 1"),
            "duplicate field (not shown) at line 1"
        );
        assert_eq!(
            unquoted("expected value at line 1 column 1"),
            "expected value at line 1 column 1"
        );
        assert_eq!(unquoted("odd `unclosed"), "odd (not shown)");
    }
}
