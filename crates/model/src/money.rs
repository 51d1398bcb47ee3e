//! Money: exact decimals with two fractional digits, never through a float.

use rust_decimal::Decimal;

/// A money amount: exact, at most two decimals, stored as `Decimal(18,2)`.
pub type Money = Decimal;

/// Precision of money columns (Arrow `Decimal128`, ClickHouse `Decimal(18,2)`).
pub const MONEY_PRECISION: u8 = 18;
/// Precision of line amounts and sums (Arrow `Decimal128(38,2)`, ClickHouse
/// `Decimal(38,2)`, the type ClickHouse gives `sum` over `Decimal(18,2)`): `quantity × price`
/// reaches 1e6 × 1e12 = 1e18, past the 1e16 that `Decimal(18,2)` holds.
pub const AMOUNT_PRECISION: u8 = 38;
/// Scale of money columns.
pub const MONEY_SCALE: i8 = 2;
/// Largest accepted unit price: 1e12.
pub const MAX_PRICE: Decimal = Decimal::from_parts(3_567_587_328, 232, 0, false, 0);

/// A JSON number literal read exactly, however many digits it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Number {
    /// The value, held exactly (normalized: no trailing fractional zeros).
    Exact(Decimal),
    /// Beyond a `Decimal`: more than 28 significant digits or decimals, or 1e28 and more.
    Beyond {
        /// Below zero.
        negative: bool,
        /// Digits before the decimal point (zero or less below 0.1: `0.001` has -2).
        integer_digits: i64,
        /// Whether the value is a whole number.
        integral: bool,
    },
}

/// Reads the text of a JSON number exactly, in one pass and without allocating. `None` for
/// anything that is not a JSON number literal (`-`? digits, optional fraction and exponent).
///
/// `0.07` is seven hundredths, `1e400` is beyond any decimal (not infinity) and `1e-400` is
/// a tiny non-zero value (not zero): never the nearest `f64`.
pub fn read_number(text: &str) -> Option<Number> {
    let bytes = text.as_bytes();
    let (negative, bytes) = match bytes.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, bytes),
    };
    let (mantissa, exponent) = match bytes.iter().position(|b| matches!(b, b'e' | b'E')) {
        Some(i) => (&bytes[..i], Some(&bytes[i + 1..])),
        None => (bytes, None),
    };
    let (int, frac) = match mantissa.iter().position(|&b| b == b'.') {
        Some(i) => (&mantissa[..i], Some(&mantissa[i + 1..])),
        None => (mantissa, None),
    };
    let all_digits = |d: &[u8]| !d.is_empty() && d.iter().all(u8::is_ascii_digit);
    if !all_digits(int) || frac.is_some_and(|f| !all_digits(f)) {
        return None;
    }
    let frac = frac.unwrap_or_default();
    // Exponents are saturated far beyond anything a decimal holds.
    const EXP_CAP: i64 = 1 << 40;
    let exponent = match exponent {
        None => 0,
        Some(e) => {
            let (minus, digits) = match e.split_first() {
                Some((b'-', rest)) => (true, rest),
                Some((b'+', rest)) => (false, rest),
                _ => (false, e),
            };
            if !all_digits(digits) {
                return None;
            }
            let magnitude = digits.iter().fold(0_i64, |acc, d| {
                (acc * 10 + i64::from(d - b'0')).min(EXP_CAP)
            });
            if minus {
                -magnitude
            } else {
                magnitude
            }
        }
    };
    let digits = || int.iter().chain(frac.iter());
    let Some(first) = digits().position(|&b| b != b'0') else {
        return Some(Number::Exact(Decimal::ZERO));
    };
    let len = int.len() + frac.len();
    let last = len - 1 - digits().rev().position(|&b| b != b'0').unwrap_or(0);
    let count = (last - first + 1) as i64;
    // value = ±D × 10^scale_exp, D the `count` significant digits as an integer.
    let scale_exp = int.len() as i64 - 1 - last as i64 + exponent;
    let integer_digits = count + scale_exp;
    if count > 28 || scale_exp < -28 || integer_digits > 28 {
        return Some(Number::Beyond {
            negative,
            integer_digits,
            integral: scale_exp >= 0,
        });
    }
    let d = digits()
        .skip(first)
        .take(count as usize)
        .fold(0_i128, |acc, b| acc * 10 + i128::from(b - b'0'));
    // Both stay below 10^28: `count` and `integer_digits` are at most 28.
    let (unscaled, scale) = if scale_exp >= 0 {
        (d * 10_i128.pow(scale_exp as u32), 0)
    } else {
        (d, (-scale_exp) as u32)
    };
    let signed = if negative { -unscaled } else { unscaled };
    Some(match Decimal::try_from_i128_with_scale(signed, scale) {
        Ok(v) => Number::Exact(v),
        Err(_) => Number::Beyond {
            negative,
            integer_digits,
            integral: scale_exp >= 0,
        },
    })
}

/// Parses the text of a JSON number exactly. Returns `None` for anything that is not a JSON
/// number literal, or one a `Decimal` cannot hold (see [`read_number`]).
pub fn parse_decimal(text: &str) -> Option<Decimal> {
    match read_number(text)? {
        Number::Exact(d) => Some(d),
        Number::Beyond { .. } => None,
    }
}

/// Number of significant fractional digits (`49.90` has 1, `49.99` has 2).
pub fn significant_scale(d: Decimal) -> u32 {
    d.normalize().scale()
}

/// The money value as the unscaled `i128` of a `Decimal(18,2)` column.
///
/// Values with more than two decimals are rounded half-even; validation rejects those
/// before they get here.
pub fn to_decimal128(d: Decimal) -> i128 {
    let mut v = d;
    v.rescale(MONEY_SCALE as u32);
    v.mantissa()
}

/// The inverse of [`to_decimal128`].
pub fn from_decimal128(unscaled: i128) -> Decimal {
    Decimal::from_i128_with_scale(unscaled, MONEY_SCALE as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_price_is_one_trillion() {
        assert_eq!(MAX_PRICE, Decimal::from(1_000_000_000_000_i64));
    }

    #[test]
    fn reads_numbers_beyond_a_decimal() {
        let beyond = |text: &str| match read_number(text) {
            Some(Number::Beyond {
                negative,
                integer_digits,
                integral,
            }) => Some((negative, integer_digits, integral)),
            _ => None,
        };
        assert_eq!(beyond("1e400"), Some((false, 401, true)));
        assert_eq!(beyond("-1e400"), Some((true, 401, true)));
        assert_eq!(beyond("1e-400"), Some((false, -399, false)));
        assert_eq!(
            beyond("1.0000000000000000000000000000001"),
            Some((false, 1, false))
        );
        assert_eq!(
            beyond("123456789012345678901234567890"),
            Some((false, 30, true))
        );
        assert_eq!(
            beyond("1e99999999999999999999999"),
            Some((false, (1 << 40) + 1, true))
        );
        assert_eq!(
            read_number("1e28"),
            Some(Number::Beyond {
                negative: false,
                integer_digits: 29,
                integral: true
            })
        );
        assert!(matches!(
            read_number("9999999999999999999999999999"),
            Some(Number::Exact(_))
        ));
    }

    #[test]
    fn parses_exactly() {
        assert_eq!(
            parse_decimal("49.99").map(|d| d.to_string()),
            Some("49.99".into())
        );
        assert_eq!(parse_decimal("0.1").map(to_decimal128), Some(10));
        assert_eq!(parse_decimal("1e2").map(to_decimal128), Some(10_000));
        assert_eq!(parse_decimal("-0.0"), Some(Decimal::ZERO));
        assert_eq!(
            parse_decimal(&format!("0.{}", "0".repeat(40))),
            Some(Decimal::ZERO)
        );
        assert_eq!(
            parse_decimal(&format!("1.{}", "0".repeat(40))),
            Some(Decimal::ONE)
        );
        assert_eq!(
            parse_decimal("1.5E+1").map(|d| d.to_string()),
            Some("15".into())
        );
        assert_eq!(
            parse_decimal("-12.340e-1").map(|d| d.to_string()),
            Some("-1.234".into())
        );
        assert_eq!(parse_decimal("\"1\""), None);
        assert_eq!(parse_decimal("1."), None);
        assert_eq!(parse_decimal(".5"), None);
        assert_eq!(parse_decimal("1e"), None);
        assert_eq!(parse_decimal("true"), None);
        assert_eq!(significant_scale(Decimal::new(4990, 2)), 1);
        assert_eq!(significant_scale(Decimal::new(49_999, 3)), 3);
        assert_eq!(from_decimal128(4999).to_string(), "49.99");
    }
}
