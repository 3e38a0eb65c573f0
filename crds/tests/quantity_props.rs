//! Property tests: quantity parsing is exact and total, and the schema's patterns agree
//! with the Rust checks (so what the API server accepts, the operator and agent accept).

use proptest::prelude::*;
use scale_agent_crds::{
    BYTE_QUANTITY_PATTERN, ConfigError, DNS_LABEL_MAX_LEN, DNS_LABEL_PATTERN, HUB_ADDRESS_MAX_LEN,
    HUB_ADDRESS_PATTERN, QuantityProblem, format_quantity_bytes, parse_quantity_bytes,
    validate_account_name, validate_hub_address,
};

const BINARY: [(&str, u32); 6] = [
    ("Ki", 10),
    ("Mi", 20),
    ("Gi", 30),
    ("Ti", 40),
    ("Pi", 50),
    ("Ei", 60),
];
const DECIMAL: [(&str, u32); 6] = [
    ("k", 3),
    ("M", 6),
    ("G", 9),
    ("T", 12),
    ("P", 15),
    ("E", 18),
];

fn problem(value: &str) -> Option<QuantityProblem> {
    match parse_quantity_bytes(value) {
        Ok(_) => None,
        Err(ConfigError::InvalidQuantity { problem, .. }) => Some(problem),
        Err(other) => panic!("unexpected error for {value:?}: {other}"),
    }
}

fn regex(pattern: &str) -> regex::Regex {
    regex::Regex::new(pattern).expect("the pattern compiles")
}

proptest! {
    #[test]
    fn plain_integers_read_as_themselves(n: u64) {
        prop_assert_eq!(parse_quantity_bytes(&n.to_string()).ok(), Some(n));
        prop_assert_eq!(parse_quantity_bytes(&format!("+{n}")).ok(), Some(n));
    }

    #[test]
    fn binary_suffixes_multiply_by_powers_of_1024(n in 0u64..1 << 20, i in 0usize..6) {
        let (suffix, shift) = BINARY[i];
        let expected = u64::try_from(u128::from(n) << shift).ok();
        let got = parse_quantity_bytes(&format!("{n}{suffix}")).ok();
        prop_assert_eq!(got, expected);
        if expected.is_none() {
            prop_assert_eq!(problem(&format!("{n}{suffix}")), Some(QuantityProblem::Overflow));
        }
    }

    #[test]
    fn decimal_suffixes_multiply_by_powers_of_1000(n in 0u64..1 << 24, i in 0usize..6) {
        let (suffix, exp) = DECIMAL[i];
        let expected = u64::try_from(u128::from(n) * 10u128.pow(exp)).ok();
        prop_assert_eq!(parse_quantity_bytes(&format!("{n}{suffix}")).ok(), expected);
        prop_assert_eq!(parse_quantity_bytes(&format!("{n}e{exp}")).ok(), expected);
    }

    #[test]
    fn fractions_are_exact(whole in 0u64..1 << 30, frac in 0u64..1000, i in 0usize..3) {
        // whole.frac (three digits) of a binary unit: whole bytes iff frac/1000 * 2^shift is.
        let (suffix, shift) = BINARY[i];
        let value = format!("{whole}.{frac:03}{suffix}");
        let numerator = (u128::from(whole) * 1000 + u128::from(frac)) << shift;
        let expected = numerator.is_multiple_of(1000).then_some(numerator / 1000);
        match expected {
            Some(bytes) => prop_assert_eq!(parse_quantity_bytes(&value).ok(), u64::try_from(bytes).ok()),
            None => prop_assert_eq!(problem(&value), Some(QuantityProblem::NotWholeBytes)),
        }
    }

    #[test]
    fn negatives_are_refused(value in "-[0-9.]{0,8}(Ki|Mi|k|M|)") {
        prop_assert_eq!(problem(&value), Some(QuantityProblem::Negative));
    }

    #[test]
    fn formatting_round_trips(n: u64) {
        let text = format_quantity_bytes(n);
        prop_assert_eq!(parse_quantity_bytes(&text).ok(), Some(n));
        prop_assert!(regex(BYTE_QUANTITY_PATTERN).is_match(&text));
    }

    #[test]
    fn never_panics(value in "\\PC{0,24}") {
        let _ = parse_quantity_bytes(&value);
    }

    #[test]
    fn the_schema_pattern_accepts_exactly_the_syntax(
        value in "[-+]?[0-9]{0,4}\\.?[0-9]{0,3}(Ki|Mi|Ei|K|k|m|M|E|e|e-|E\\+|i|B| |)[0-9]{0,2}"
    ) {
        // The API server can only check the syntax; value problems (fractions of a byte,
        // overflow) are for the operator to report.
        let syntax_ok = !matches!(
            problem(&value),
            Some(QuantityProblem::Empty | QuantityProblem::Negative | QuantityProblem::Syntax | QuantityProblem::UnknownSuffix)
        );
        prop_assert_eq!(regex(BYTE_QUANTITY_PATTERN).is_match(&value), syntax_ok, "{:?}", value);
    }

    #[test]
    fn account_name_pattern_agrees_with_the_rust_check(name in "[a-z0-9-]{0,66}|[a-zA-Z0-9_.-]{0,8}") {
        let schema_ok = (1..=DNS_LABEL_MAX_LEN).contains(&name.len())
            && regex(DNS_LABEL_PATTERN).is_match(&name);
        prop_assert_eq!(validate_account_name(&name).is_ok(), schema_ok, "{:?}", name);
    }

    #[test]
    fn hub_address_pattern_agrees_with_the_rust_check(
        address in "[a-z0-9.-]{0,12}:[0-9]{0,6}|\\[[0-9a-f:.]{0,6}\\]:[0-9]{1,5}|[a-zA-Z0-9:.\\[\\]-]{0,12}"
    ) {
        let schema_ok = (3..=HUB_ADDRESS_MAX_LEN).contains(&address.len())
            && regex(HUB_ADDRESS_PATTERN).is_match(&address);
        // The Rust check also wants a port in 1..=65535, which a pattern cannot say.
        let port_ok = address
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse::<u32>().ok())
            .is_some_and(|p| (1..=65535).contains(&p));
        prop_assert_eq!(validate_hub_address(&address).is_ok(), schema_ok && port_ok, "{:?}", address);
    }
}
