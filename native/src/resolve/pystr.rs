//! The few Python `str` semantics that version resolution depends on, exactly as CPython
//! 3.11 has them: `str.isspace` / `str.strip()`, `str.isdigit`, `int(str)` and `repr(str)`.
//! Character classes come from `unicode_tables` (generated from CPython's own `str` methods;
//! `tests/vectors/resolve.json` and `tests/native` check them against Python).

use std::fmt::Write;

use super::unicode_tables::{DECIMAL_ZEROS, DIGITS_NOT_DECIMAL, NOT_PRINTABLE, SPACES};

/// CPython's default limit on the digits `int()` converts (`sys.get_int_max_str_digits()`).
pub(super) const INT_MAX_STR_DIGITS: usize = 4300;

/// Python's `str.isspace()` for one character.
fn is_space(c: char) -> bool {
    if c.is_ascii() {
        return matches!(c, '\t'..='\r' | '\x1c'..=' ');
    }
    SPACES.binary_search(&u32::from(c)).is_ok()
}

/// Python's `s.strip()` (no argument): drops `str.isspace()` characters at both ends.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(is_space)
}

/// Python's line boundaries (`str.splitlines()`): `\n`, `\r`, `\v`, `\f`, `\x1c`-`\x1e`,
/// `\x85`, U+2028 and U+2029.
fn is_line_break(c: char) -> bool {
    matches!(
        c,
        '\n' | '\r'
            | '\x0b'
            | '\x0c'
            | '\x1c'
            | '\x1d'
            | '\x1e'
            | '\u{85}'
            | '\u{2028}'
            | '\u{2029}'
    )
}

/// `s.splitlines()[0]` for a non-empty `s` (`""` for an empty one): the text before the first
/// line boundary.
pub fn py_first_line(s: &str) -> &str {
    s.split(is_line_break).next().unwrap_or("")
}

/// Python's `str.isdecimal()` for one character: what `\d` matches in a `str` pattern.
pub fn py_is_decimal(c: char) -> bool {
    decimal_value(c).is_some()
}

/// The value of a Unicode decimal digit (Python's `str.isdecimal()`; what `int()` reads).
fn decimal_value(c: char) -> Option<u64> {
    if c.is_ascii_digit() {
        return Some(u64::from(c) - u64::from('0'));
    }
    let c = u32::from(c);
    // Decimal digits come in runs of ten, 0 to 9 (a Unicode stability policy).
    let i = DECIMAL_ZEROS.partition_point(|&zero| zero <= c);
    let zero = DECIMAL_ZEROS[..i].last()?;
    let d = c - zero;
    (d < 10).then_some(u64::from(d))
}

/// Python's `s.isdigit()`: non-empty and every character a digit (decimal digits and the
/// other `Numeric_Type=Digit` characters such as `²` or `①`).
pub(super) fn is_digits(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| {
            decimal_value(c).is_some() || DIGITS_NOT_DECIMAL.binary_search(&u32::from(c)).is_ok()
        })
}

/// Why `int(s)` fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IntError {
    /// A character is not a decimal digit (and the digits before it are within the limit).
    InvalidLiteral,
    /// The leading run of decimal digits is longer than [`INT_MAX_STR_DIGITS`].
    TooManyDigits(usize),
}

/// Python's `int(s)` for a string of digits (`s.isdigit()`): its value, `None` when it
/// exceeds `u64` (no version can have it). CPython counts the leading decimal digits first
/// and refuses more than 4,300 of them even when a non-decimal character follows.
pub(super) fn parse_int(s: &str) -> Result<Option<u64>, IntError> {
    let mut value = Some(0u64);
    let mut digits = 0usize;
    let mut complete = true;
    for c in s.chars() {
        let Some(d) = decimal_value(c) else {
            complete = false;
            break;
        };
        digits += 1;
        value = value
            .and_then(|v| v.checked_mul(10))
            .and_then(|v| v.checked_add(d));
    }
    if digits > INT_MAX_STR_DIGITS {
        return Err(IntError::TooManyDigits(digits));
    }
    if !complete {
        return Err(IntError::InvalidLiteral);
    }
    Ok(value)
}

/// Python's `str.isprintable()` for one character (what `repr` leaves unescaped): all but
/// the categories Cc, Cf, Cs, Co, Cn, Zl, Zp and Zs, with the ASCII space printable.
fn is_printable(c: char) -> bool {
    if c.is_ascii() {
        return (' '..='~').contains(&c);
    }
    let c = u32::from(c);
    let i = NOT_PRINTABLE.partition_point(|&(lo, _)| lo <= c);
    !matches!(NOT_PRINTABLE[..i].last(), Some(&(_, hi)) if c <= hi)
}

/// Python's `repr(s)` for a `str`: single quotes unless the text holds a single quote and no
/// double quote; `\\`, the quote, `\t`, `\n`, `\r` escaped; other control characters and
/// non-printable characters as `\xhh`, `\uhhhh` or `\Uhhhhhhhh` (lowercase hex).
pub fn py_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if is_printable(c) => out.push(c),
            // Writing to a String cannot fail.
            c if u32::from(c) <= 0xff => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if u32::from(c) <= 0xffff => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => {
                let _ = write!(out, "\\U{:08x}", u32::from(c));
            }
        }
    }
    out.push(quote);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repr_quotes_and_escapes() {
        assert_eq!(py_repr("beta"), "'beta'");
        assert_eq!(py_repr("it's"), "\"it's\"");
        assert_eq!(py_repr("it's \"x\""), "'it\\'s \"x\"'");
        assert_eq!(py_repr("a\\b\t\n\r\x00\x7f"), "'a\\\\b\\t\\n\\r\\x00\\x7f'");
        assert_eq!(
            py_repr("é\u{a0}\u{ad}\u{200b}😀\u{e0001}"),
            "'é\\xa0\\xad\\u200b😀\\U000e0001'"
        );
    }

    #[test]
    fn strip_digits_and_int() {
        assert_eq!(py_strip("\x1c\u{3000} 7\t\u{85}"), "7");
        assert_eq!(py_strip("\u{180e}7"), "\u{180e}7");
        assert!(is_digits("\u{663}2") && is_digits("²") && !is_digits("") && !is_digits("1a"));
        assert_eq!(parse_int("\u{663}2"), Ok(Some(32)));
        assert_eq!(parse_int("007"), Ok(Some(7)));
        assert_eq!(parse_int("18446744073709551616"), Ok(None));
        assert_eq!(parse_int("18446744073709551615"), Ok(Some(u64::MAX)));
        assert_eq!(parse_int("1²"), Err(IntError::InvalidLiteral));
        let long = "1".repeat(4301);
        assert_eq!(parse_int(&long), Err(IntError::TooManyDigits(4301)));
        assert_eq!(parse_int(&(long + "²")), Err(IntError::TooManyDigits(4301)));
        assert_eq!(parse_int(&"1".repeat(4300)), Ok(None));
    }
}
