//! Numbers exactly as JavaScript reads and writes them.
//!
//! Etsy statsd validates values with `Number(str)` and writes them to Graphite with
//! `String(number)`. To be a drop-in replacement we accept the same strings and print the same
//! digits, so dashboards and the differential test see identical output. No crate implements
//! ECMAScript's `StringToNumber` / `Number::toString`, hence this small module.

use std::fmt::Write as _;

/// True for the characters JavaScript's `String.prototype.trim` and `\s` treat as white space.
pub fn is_js_space(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n' | '\u{b}' | '\u{c}' | '\r' | ' ' | '\u{a0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200a}' | '\u{2028}' | '\u{2029}' | '\u{202f}' | '\u{205f}' | '\u{3000}' | '\u{feff}'
    )
}

/// Trims JavaScript white space from both ends of a byte string (invalid UTF-8 is not space).
pub fn js_trim(s: &[u8]) -> &[u8] {
    let mut start = 0;
    let mut end = s.len();
    while start < end {
        match leading_space_len(&s[start..end]) {
            0 => break,
            n => start += n,
        }
    }
    while end > start {
        match trailing_space_len(&s[start..end]) {
            0 => break,
            n => end -= n,
        }
    }
    &s[start..end]
}

/// Length in bytes of the JavaScript white-space character at the start of `s`, or 0.
pub fn leading_space_len(s: &[u8]) -> usize {
    match s.first() {
        None => 0,
        Some(&b) if b < 0x80 => usize::from(matches!(b, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ')),
        Some(_) => {
            let n = utf8_len(s[0]).min(s.len());
            match std::str::from_utf8(&s[..n]).ok().and_then(|c| c.chars().next()) {
                Some(c) if is_js_space(c) => n,
                _ => 0,
            }
        }
    }
}

fn trailing_space_len(s: &[u8]) -> usize {
    let Some(&last) = s.last() else { return 0 };
    if last < 0x80 {
        return usize::from(matches!(last, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' '));
    }
    // Walk back over at most three continuation bytes to the start of the character.
    let mut start = s.len() - 1;
    while start > 0 && s.len() - start < 4 && s[start] & 0xc0 == 0x80 {
        start -= 1;
    }
    match std::str::from_utf8(&s[start..]).ok().and_then(|c| c.chars().next()) {
        Some(c) if is_js_space(c) => s.len() - start,
        _ => 0,
    }
}

/// Length of a UTF-8 sequence from its first byte (1 for invalid lead bytes).
pub fn utf8_len(lead: u8) -> usize {
    match lead {
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf7 => 4,
        _ => 1,
    }
}

/// JavaScript's `Number(str)`: `None` where JavaScript gives `NaN`.
///
/// Accepts surrounding white space, an empty string (0), `0x`/`0o`/`0b` integers, signed
/// decimals with optional fraction and exponent, and `Infinity`.
pub fn parse_js_number(s: &[u8]) -> Option<f64> {
    // Fastest path: a small non-negative integer, the overwhelmingly common value.
    if !s.is_empty() && s.len() <= 15 && s.iter().all(u8::is_ascii_digit) {
        return Some(s.iter().fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0')) as f64);
    }
    // Fast path: plain decimal.
    let s = if s.first().is_some_and(|b| b.is_ascii_digit() || *b == b'-' || *b == b'.')
        && s.last().is_some_and(u8::is_ascii_digit)
    {
        s
    } else {
        js_trim(s)
    };
    if s.is_empty() {
        return Some(0.0);
    }
    if s.len() > 2 && s[0] == b'0' {
        let radix = match s[1] {
            b'x' | b'X' => 16,
            b'o' | b'O' => 8,
            b'b' | b'B' => 2,
            _ => 0,
        };
        if radix != 0 {
            return parse_radix(&s[2..], radix);
        }
    }
    let (neg, body) = match s[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if body == b"Infinity" {
        return Some(if neg { f64::NEG_INFINITY } else { f64::INFINITY });
    }
    if !is_decimal_literal(body) {
        return None;
    }
    // The grammar is checked above, so Rust's parser (a superset) gives the same value.
    let text = std::str::from_utf8(s).ok()?;
    text.parse::<f64>().ok()
}

/// `digits [. digits?] [exp]` or `. digits [exp]`, with `exp = [eE] [+-]? digits`.
fn is_decimal_literal(s: &[u8]) -> bool {
    let mut i = 0;
    let int_digits = count_digits(&s[i..]);
    i += int_digits;
    let mut frac_digits = 0;
    if s.get(i) == Some(&b'.') {
        i += 1;
        frac_digits = count_digits(&s[i..]);
        i += frac_digits;
    }
    if int_digits == 0 && frac_digits == 0 {
        return false;
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(s.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exp_digits = count_digits(&s[i..]);
        if exp_digits == 0 {
            return false;
        }
        i += exp_digits;
    }
    i == s.len()
}

fn count_digits(s: &[u8]) -> usize {
    s.iter().take_while(|b| b.is_ascii_digit()).count()
}

fn parse_radix(digits: &[u8], radix: u32) -> Option<f64> {
    let mut value = 0f64;
    let mut exact: Option<u128> = Some(0);
    for &b in digits {
        let d = (b as char).to_digit(radix)?;
        exact = exact.and_then(|v| v.checked_mul(u128::from(radix))).and_then(|v| v.checked_add(u128::from(d)));
        value = value * f64::from(radix) + f64::from(d);
    }
    Some(exact.map_or(value, |v| v as f64))
}

/// Etsy statsd's `isNumber`: `Boolean(str && !isNaN(str))` — a non-empty string that
/// `Number()` reads as a number (so `" "` counts, as 0).
pub fn is_js_number(s: &[u8]) -> bool {
    !s.is_empty() && parse_js_number(s).is_some()
}

/// Appends `String(v)` as JavaScript writes it (shortest round-trip digits, exponent form
/// outside 1e-7..1e21, `NaN`, `Infinity`).
pub fn write_js_number(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
        return;
    }
    if v == 0.0 {
        out.push('0');
        return;
    }
    if v.is_infinite() {
        out.push_str(if v < 0.0 { "-Infinity" } else { "Infinity" });
        return;
    }
    if v.fract() == 0.0 && v.abs() < 1e15 {
        // Integers: the common case for counters, bins and counts.
        let _ = write!(out, "{}", v as i64);
        return;
    }
    // Rust's `{:e}` gives the shortest round-trip digits, like JavaScript: "d.ddde±x".
    let mut sci = String::with_capacity(32);
    let _ = write!(sci, "{:e}", v.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let k = digits.len() as i32;
    let n = exp + 1; // value = 0.digits × 10^n
    if v < 0.0 {
        out.push('-');
    }
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        out.push_str(&digits[..n as usize]);
        out.push('.');
        out.push_str(&digits[n as usize..]);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(&digits);
    } else {
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if n - 1 < 0 { '-' } else { '+' });
        let _ = write!(out, "{}", (n - 1).abs());
    }
}

/// `String(v)` as a new string.
pub fn js_number(v: f64) -> String {
    let mut s = String::new();
    write_js_number(&mut s, v);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_javascript() {
        let cases: &[(&str, Option<f64>)] = &[
            ("1", Some(1.0)),
            ("-1.5", Some(-1.5)),
            ("+2", Some(2.0)),
            (".5", Some(0.5)),
            ("5.", Some(5.0)),
            ("1e3", Some(1000.0)),
            ("1E-2", Some(0.01)),
            (" 12 ", Some(12.0)),
            ("\t7\r", Some(7.0)),
            ("", Some(0.0)),
            ("  ", Some(0.0)),
            ("0x10", Some(16.0)),
            ("0b101", Some(5.0)),
            ("0o17", Some(15.0)),
            ("Infinity", Some(f64::INFINITY)),
            ("-Infinity", Some(f64::NEG_INFINITY)),
            ("inf", None),
            ("NaN", None),
            ("nan", None),
            ("1_000", None),
            ("-0x10", None),
            ("1e", None),
            (".", None),
            ("1.2.3", None),
            ("abc", None),
            ("1 2", None),
            ("\u{a0}3\u{feff}", Some(3.0)),
        ];
        for (s, want) in cases {
            assert_eq!(parse_js_number(s.as_bytes()), *want, "Number({s:?})");
        }
        assert!(!is_js_number(b""));
        assert!(is_js_number(b" "));
    }

    #[test]
    fn formats_like_javascript() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0"),
            (-0.0, "0"),
            (1.0, "1"),
            (-3.0, "-3"),
            (0.1, "0.1"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1.0 / 3.0, "0.3333333333333333"),
            (123.456, "123.456"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (123456789012345680000.0, "123456789012345680000"),
            (1e-6, "0.000001"),
            (1e-7, "1e-7"),
            (1.5e-7, "1.5e-7"),
            (2.5e25, "2.5e+25"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "Infinity"),
            (f64::NEG_INFINITY, "-Infinity"),
            (1e15, "1000000000000000"),
            (4.35, "4.35"),
            (-0.000123, "-0.000123"),
        ];
        for (v, want) in cases {
            assert_eq!(js_number(*v), *want, "String({v:e})");
        }
    }

    proptest::proptest! {
        #[test]
        fn formatted_numbers_read_back(v in proptest::num::f64::ANY) {
            let s = js_number(v);
            match parse_js_number(s.as_bytes()) {
                Some(back) => proptest::prop_assert!(back == v || (v == 0.0 && back == 0.0)),
                None => proptest::prop_assert!(v.is_nan()),
            }
        }

        #[test]
        fn never_panics(s in proptest::collection::vec(proptest::num::u8::ANY, 0..40)) {
            let _ = parse_js_number(&s);
            let _ = js_trim(&s);
        }
    }
}
