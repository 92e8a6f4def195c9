//! Python's text formatting where status messages use it: `repr()` of a string and the `g`
//! format of a float. Messages are part of the contract (the native path answers what the
//! Python path answered), so these follow CPython's rules.

/// `repr()` of a string, exactly as CPython 3.11 writes it (see `resolve::py_repr`).
pub use crate::resolve::py_repr as repr;

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
