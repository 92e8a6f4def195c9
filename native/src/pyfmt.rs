//! Python's text formatting where status messages use it: `repr()` of a string and the `g`
//! format of a float. Messages are part of the contract (the native path answers what the
//! Python path answered), so these follow CPython's rules.

/// `repr(s)` as CPython writes it (`unicode_repr`): single quotes unless the text holds a
/// single quote and no double quote; `\\`, the quote, `\t`, `\n`, `\r` escaped; other
/// unprintable characters as `\xhh`, `\uhhhh` or `\Uhhhhhhhh`.
///
/// Printability of non-ASCII characters follows `str.isprintable` for the categories that
/// matter in practice (controls, format characters, separators, private use); characters
/// unassigned in Unicode count as printable here, where CPython would escape them.
pub fn repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if printable(c) => out.push(c),
            c => {
                let n = c as u32;
                if n <= 0xff {
                    out.push_str(&format!("\\x{n:02x}"));
                } else if n <= 0xffff {
                    out.push_str(&format!("\\u{n:04x}"));
                } else {
                    out.push_str(&format!("\\U{n:08x}"));
                }
            }
        }
    }
    out.push(quote);
    out
}

/// `str.isprintable()` for one character (see `repr` for the approximation).
fn printable(c: char) -> bool {
    let n = c as u32;
    if n < 0x80 {
        return (0x20..0x7f).contains(&n);
    }
    // Noncharacters: the last two code points of every plane.
    if n & 0xfffe == 0xfffe {
        return false;
    }
    !matches!(
        n,
        // Cc
        0x80..=0xa0
        // Cf
        | 0xad
        | 0x600..=0x605
        | 0x61c
        | 0x6dd
        | 0x70f
        | 0x890..=0x891
        | 0x8e2
        | 0x180e
        | 0x200b..=0x200f
        | 0x202a..=0x202e
        | 0x2060..=0x2064
        | 0x2066..=0x206f
        | 0xfeff
        | 0xfff9..=0xfffb
        | 0x110bd
        | 0x110cd
        | 0x13430..=0x1343f
        | 0x1bca0..=0x1bca3
        | 0x1d173..=0x1d17a
        | 0xe0001
        | 0xe0020..=0xe007f
        // Zs (but ASCII space), Zl, Zp
        | 0x1680
        | 0x2000..=0x200a
        | 0x2028
        | 0x2029
        | 0x202f
        | 0x205f
        | 0x3000
        // Co
        | 0xe000..=0xf8ff
        | 0xf0000..=0xffffd
        | 0x100000..=0x10fffd
        // Noncharacters (Cn)
        | 0xfdd0..=0xfdef
    )
}

/// `format(x, "g")`: 6 significant digits, scientific when the exponent is below -4 or at
/// least 6, trailing zeros (and a trailing point) removed.
pub fn g(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() {
            "-0".into()
        } else {
            "0".into()
        };
    }
    let sci = format!("{x:.5e}");
    let (mantissa, exp) = match sci.split_once('e') {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (sci.as_str(), 0),
    };
    if (-4..6).contains(&exp) {
        let decimals = (5 - exp).max(0) as usize;
        strip_zeros(&format!("{x:.decimals$}"))
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", strip_zeros(mantissa), exp.abs())
    }
}

fn strip_zeros(s: &str) -> String {
    if !s.contains('.') {
        return s.to_string();
    }
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repr_matches_cpython() {
        let cases = [
            ("abc", "'abc'"),
            ("", "''"),
            ("it's", "\"it's\""),
            ("it's \"x\"", "'it\\'s \"x\"'"),
            ("a\\b", "'a\\\\b'"),
            ("tab\there\nnl\rcr", "'tab\\there\\nnl\\rcr'"),
            ("\x00\x1f\x7f", "'\\x00\\x1f\\x7f'"),
            ("über café", "'über café'"),
            ("\u{a0}\u{ad}\u{2028}", "'\\xa0\\xad\\u2028'"),
            ("\u{e000}", "'\\ue000'"),
            ("\u{10ffff}", "'\\U0010ffff'"),
            ("日本", "'日本'"),
        ];
        for (s, want) in cases {
            assert_eq!(repr(s), want, "repr of {s:?}");
        }
    }

    #[test]
    fn g_matches_cpython() {
        let cases = [
            (200.0, "200"),
            (0.5, "0.5"),
            (1.0, "1"),
            (12.25, "12.25"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (123456.0, "123456"),
            (1234567.0, "1.23457e+06"),
            (999999.5, "1e+06"),
            (2.5e10, "2.5e+10"),
            (1.0 / 3.0, "0.333333"),
            (-7.25, "-7.25"),
            (0.0, "0"),
            (f64::INFINITY, "inf"),
        ];
        for (x, want) in cases {
            assert_eq!(g(x), want, "g of {x}");
        }
    }
}
