//! Formatting numbers for the judge's messages: significant digits, signed percentages, counts
//! and p-values.

pub(super) fn finite_or(value: f64, default: f64) -> f64 {
    if value.is_finite() { value } else { default }
}

/// `value` with `digits` significant digits, trailing zeros trimmed.
pub(super) fn significant(value: f64, digits: i32) -> String {
    if !value.is_finite() || value == 0.0 {
        return format!("{value}");
    }
    let magnitude = value.abs().log10().floor() as i32;
    let decimals = usize::try_from((digits - 1 - magnitude).clamp(0, 15)).unwrap_or(0);
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// A relative change as a percentage with 3 significant digits; `{:+}` adds the sign.
pub(super) struct RoundedPercent(pub(super) f64);

impl std::fmt::Display for RoundedPercent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let percent = self.0 * 100.0;
        if f.sign_plus() && percent >= 0.0 {
            f.write_str("+")?;
        }
        write!(f, "{}%", significant(percent, 3))
    }
}

/// A count, fractional ones rounded.
pub(super) fn count(value: f64) -> String {
    format!("{value:.0}")
}

/// `p=…`, small values in scientific notation; 0 is what the normal tail underflows to.
pub(super) fn p_text(p: f64) -> String {
    if p == 0.0 {
        "p<1e-300".to_string()
    } else if p < 0.001 {
        format!("p={p:.0e}")
    } else {
        format!("p={}", significant(p, 2))
    }
}
