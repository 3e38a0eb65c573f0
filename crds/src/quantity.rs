//! Kubernetes quantities of bytes (`64Mi`, `1G`, `67108864`), read exactly.

use crate::{ConfigError, QuantityProblem};

/// Reads a Kubernetes quantity as a whole number of bytes.
///
/// Accepts what a Kubernetes `resource.Quantity` accepts, without a sign or with `+`:
/// a number (`1024`, `1.5`, `.5`), optionally followed by a binary suffix (`Ki Mi Gi Ti
/// Pi Ei`, powers of 1024), a decimal suffix (`m k M G T P E`, powers of 1000; `m` is a
/// thousandth) or a decimal exponent (`e6`, `E-3`). The value is computed exactly, with
/// no floating point: `1.5Ki` is 1536, and `1500m` (1.5 bytes) is refused.
///
/// Refuses (with [`ConfigError::InvalidQuantity`]) an empty string, a negative number,
/// anything else after the number, a value that is not a whole number of bytes, and a
/// value above `u64::MAX`.
pub fn parse_quantity_bytes(value: &str) -> Result<u64, ConfigError> {
    parse(value).map_err(|problem| ConfigError::InvalidQuantity {
        value: value.to_owned(),
        problem,
    })
}

/// Writes `bytes` in the shortest exact form: with the largest binary suffix that divides
/// it (`67108864` → `64Mi`), else as a plain integer. [`parse_quantity_bytes`] reads it back.
pub fn format_quantity_bytes(bytes: u64) -> String {
    const SUFFIXES: [&str; 6] = ["Ei", "Pi", "Ti", "Gi", "Mi", "Ki"];
    if bytes != 0 {
        for (i, suffix) in SUFFIXES.iter().enumerate() {
            let shift = 10 * (SUFFIXES.len() - i);
            if bytes.trailing_zeros() as usize >= shift {
                return format!("{}{suffix}", bytes >> shift);
            }
        }
    }
    bytes.to_string()
}

/// The scale a suffix applies: `value * 2^binary * 10^decimal`.
#[derive(Clone, Copy)]
struct Scale {
    binary: u32,
    decimal: i64,
}

fn parse(value: &str) -> Result<u64, QuantityProblem> {
    if value.is_empty() {
        return Err(QuantityProblem::Empty);
    }
    let unsigned = match value.as_bytes()[0] {
        b'-' => return Err(QuantityProblem::Negative),
        b'+' => &value[1..],
        _ => value,
    };

    // The number: digits, optionally a '.' and more digits; at least one digit in all.
    let int_len = unsigned.bytes().take_while(u8::is_ascii_digit).count();
    let (int_digits, rest) = unsigned.split_at(int_len);
    let (frac_digits, suffix) = match rest.strip_prefix('.') {
        Some(after_dot) => {
            let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            after_dot.split_at(frac_len)
        }
        None => ("", rest),
    };
    if int_digits.is_empty() && frac_digits.is_empty() {
        return Err(QuantityProblem::Syntax);
    }
    let scale = parse_suffix(suffix)?;

    // mantissa / 10^frac_len is the number, exactly. Fraction zeros carry no value, and
    // dropping them keeps the mantissa small.
    let frac_digits = frac_digits.trim_end_matches('0');
    let mut mantissa: u128 = 0;
    for digit in int_digits.bytes().chain(frac_digits.bytes()) {
        mantissa = mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add(u128::from(digit - b'0')))
            .ok_or(QuantityProblem::Overflow)?;
    }
    if mantissa == 0 {
        return Ok(0);
    }
    let frac_len = i64::try_from(frac_digits.len()).map_err(|_| QuantityProblem::Overflow)?;
    scale_exactly(mantissa, scale.binary, scale.decimal - frac_len)
}

fn parse_suffix(suffix: &str) -> Result<Scale, QuantityProblem> {
    let binary = |power: u32| {
        Ok(Scale {
            binary: 10 * power,
            decimal: 0,
        })
    };
    let decimal = |exponent: i64| {
        Ok(Scale {
            binary: 0,
            decimal: exponent,
        })
    };
    match suffix {
        "" => decimal(0),
        "Ki" => binary(1),
        "Mi" => binary(2),
        "Gi" => binary(3),
        "Ti" => binary(4),
        "Pi" => binary(5),
        "Ei" => binary(6),
        "m" => decimal(-3),
        "k" => decimal(3),
        "M" => decimal(6),
        "G" => decimal(9),
        "T" => decimal(12),
        "P" => decimal(15),
        "E" => decimal(18),
        _ => match suffix.strip_prefix(['e', 'E']) {
            Some(exponent) => decimal(parse_exponent(exponent)?),
            None => Err(QuantityProblem::UnknownSuffix),
        },
    }
}

fn parse_exponent(exponent: &str) -> Result<i64, QuantityProblem> {
    let (negative, digits) = match exponent.as_bytes().first() {
        Some(b'-') => (true, &exponent[1..]),
        Some(b'+') => (false, &exponent[1..]),
        _ => (false, exponent),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(QuantityProblem::Syntax);
    }
    // Past this any non-zero number over- or underflows anyway (the mantissa has at most
    // 39 digits); saturating keeps the arithmetic bounded and lets zero stay zero.
    const LIMIT: i64 = 10_000;
    let significant = digits.trim_start_matches('0');
    let magnitude = if significant.len() > 5 {
        LIMIT
    } else {
        significant.parse::<i64>().unwrap_or(0).min(LIMIT)
    };
    Ok(if negative { -magnitude } else { magnitude })
}

/// `mantissa * 2^binary * 10^decimal` as a u64, if it is a whole number that fits.
/// `mantissa` is not zero.
fn scale_exactly(
    mut mantissa: u128,
    binary: u32,
    mut decimal: i64,
) -> Result<u64, QuantityProblem> {
    // A negative decimal exponent divides by 2^k * 5^k. Take out the factors of 10 first
    // (exact), then the 5s from the mantissa and the 2s from the binary scale or the
    // mantissa; a factor left over means a fraction of a byte.
    while decimal < 0 && mantissa.is_multiple_of(10) {
        mantissa /= 10;
        decimal += 1;
    }
    let mut binary = i64::from(binary);
    if decimal < 0 {
        let k = -decimal;
        for _ in 0..k {
            if !mantissa.is_multiple_of(5) {
                return Err(QuantityProblem::NotWholeBytes);
            }
            mantissa /= 5;
        }
        binary -= k;
        decimal = 0;
        while binary < 0 {
            if !mantissa.is_multiple_of(2) {
                return Err(QuantityProblem::NotWholeBytes);
            }
            mantissa /= 2;
            binary += 1;
        }
    }

    // Now mantissa * 2^binary * 10^decimal with both exponents >= 0: only overflow is left.
    let mut value = mantissa;
    for _ in 0..decimal {
        value = value.checked_mul(10).ok_or(QuantityProblem::Overflow)?;
        if value > u128::from(u64::MAX) {
            return Err(QuantityProblem::Overflow);
        }
    }
    let shift = u32::try_from(binary).map_err(|_| QuantityProblem::Overflow)?;
    if shift >= 64 || value.leading_zeros() < 64 + shift {
        // value << shift would need more than 64 bits (value is not zero).
        return Err(QuantityProblem::Overflow);
    }
    u64::try_from(value << shift).map_err(|_| QuantityProblem::Overflow)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(s: &str) -> Result<u64, QuantityProblem> {
        parse(s)
    }

    #[test]
    fn plain_integers() {
        assert_eq!(bytes("0"), Ok(0));
        assert_eq!(bytes("1"), Ok(1));
        assert_eq!(bytes("+42"), Ok(42));
        assert_eq!(bytes("0042"), Ok(42));
        assert_eq!(bytes("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(
            bytes("18446744073709551616"),
            Err(QuantityProblem::Overflow)
        );
    }

    #[test]
    fn binary_suffixes() {
        assert_eq!(bytes("1Ki"), Ok(1024));
        assert_eq!(bytes("64Mi"), Ok(64 << 20));
        assert_eq!(bytes("2Gi"), Ok(2 << 30));
        assert_eq!(bytes("3Ti"), Ok(3 << 40));
        assert_eq!(bytes("1Pi"), Ok(1 << 50));
        assert_eq!(bytes("15Ei"), Ok(15 << 60));
        assert_eq!(bytes("16Ei"), Err(QuantityProblem::Overflow));
        assert_eq!(bytes("1.5Ki"), Ok(1536));
        assert_eq!(bytes(".5Mi"), Ok(512 << 10));
        assert_eq!(bytes("1.Ki"), Ok(1024));
    }

    #[test]
    fn decimal_suffixes_and_exponents() {
        assert_eq!(bytes("1k"), Ok(1000));
        assert_eq!(bytes("5M"), Ok(5_000_000));
        assert_eq!(bytes("1G"), Ok(1_000_000_000));
        assert_eq!(bytes("2T"), Ok(2_000_000_000_000));
        assert_eq!(bytes("1P"), Ok(10u64.pow(15)));
        assert_eq!(bytes("18E"), Ok(18 * 10u64.pow(18)));
        assert_eq!(bytes("19E"), Err(QuantityProblem::Overflow));
        assert_eq!(bytes("1.5k"), Ok(1500));
        assert_eq!(bytes("1e3"), Ok(1000));
        assert_eq!(bytes("1E+6"), Ok(1_000_000));
        assert_eq!(bytes("1000e-3"), Ok(1));
        assert_eq!(bytes("1500e-3"), Err(QuantityProblem::NotWholeBytes));
        assert_eq!(bytes("2000m"), Ok(2));
        assert_eq!(bytes("1e19"), Ok(10u64.pow(19)));
        assert_eq!(bytes("1e20"), Err(QuantityProblem::Overflow));
        assert_eq!(bytes("0e99999999999999999999"), Ok(0));
        assert_eq!(
            bytes("1e99999999999999999999"),
            Err(QuantityProblem::Overflow)
        );
        assert_eq!(
            bytes("1e-99999999999999999999"),
            Err(QuantityProblem::NotWholeBytes)
        );
    }

    #[test]
    fn fractions_of_a_byte_are_refused() {
        assert_eq!(bytes("0.5"), Err(QuantityProblem::NotWholeBytes));
        assert_eq!(bytes("1.1k"), Ok(1100));
        assert_eq!(bytes("1.0001k"), Err(QuantityProblem::NotWholeBytes));
        assert_eq!(bytes("1m"), Err(QuantityProblem::NotWholeBytes));
        assert_eq!(bytes("1500m"), Err(QuantityProblem::NotWholeBytes));
        assert_eq!(bytes("0.0009765625Ki"), Ok(1));
        assert_eq!(
            bytes("0.00048828125Ki"),
            Err(QuantityProblem::NotWholeBytes)
        );
        assert_eq!(bytes("1.50"), Err(QuantityProblem::NotWholeBytes));
        assert_eq!(bytes("2.000"), Ok(2));
        assert_eq!(bytes("0.000"), Ok(0));
    }

    #[test]
    fn malformed_values_are_refused() {
        assert_eq!(bytes(""), Err(QuantityProblem::Empty));
        assert_eq!(bytes("-1"), Err(QuantityProblem::Negative));
        assert_eq!(bytes("-0"), Err(QuantityProblem::Negative));
        assert_eq!(bytes("+"), Err(QuantityProblem::Syntax));
        assert_eq!(bytes("."), Err(QuantityProblem::Syntax));
        assert_eq!(bytes("Mi"), Err(QuantityProblem::Syntax));
        assert_eq!(bytes(" 1"), Err(QuantityProblem::Syntax));
        assert_eq!(bytes("1 "), Err(QuantityProblem::UnknownSuffix));
        assert_eq!(bytes("1KB"), Err(QuantityProblem::UnknownSuffix));
        assert_eq!(bytes("1K"), Err(QuantityProblem::UnknownSuffix));
        assert_eq!(bytes("1mi"), Err(QuantityProblem::UnknownSuffix));
        assert_eq!(bytes("1.2.3"), Err(QuantityProblem::UnknownSuffix));
        assert_eq!(bytes("1e"), Err(QuantityProblem::Syntax));
        assert_eq!(bytes("1e+"), Err(QuantityProblem::Syntax));
        assert_eq!(bytes("1e1.5"), Err(QuantityProblem::Syntax));
        assert_eq!(bytes("١"), Err(QuantityProblem::Syntax));
    }

    #[test]
    fn huge_mantissas_overflow_instead_of_panicking() {
        let long = "9".repeat(60);
        assert_eq!(bytes(&long), Err(QuantityProblem::Overflow));
        let tiny = format!("0.{}1", "0".repeat(60));
        assert_eq!(bytes(&tiny), Err(QuantityProblem::NotWholeBytes));
    }

    #[test]
    fn formatting_picks_the_largest_exact_binary_suffix() {
        assert_eq!(format_quantity_bytes(0), "0");
        assert_eq!(format_quantity_bytes(1000), "1000");
        assert_eq!(format_quantity_bytes(1024), "1Ki");
        assert_eq!(format_quantity_bytes(1536), "1536");
        assert_eq!(format_quantity_bytes(64 << 20), "64Mi");
        assert_eq!(format_quantity_bytes(1 << 63), "8Ei");
        assert_eq!(format_quantity_bytes(u64::MAX), u64::MAX.to_string());
    }

    #[test]
    fn errors_name_the_value() {
        let err = parse_quantity_bytes("12Q").expect_err("Q is no suffix");
        assert!(err.to_string().contains("\"12Q\""), "{err}");
        assert_eq!(err.label(), "InvalidQuantity");
    }
}
