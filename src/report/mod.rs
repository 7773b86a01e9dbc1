//! Tables and figures of one run's evaluation: [`regression`] (CE, entropy, KL, coverage against
//! the number of points) and [`rl`] (regret, return, entropy, KL over time against the
//! reference policies).

pub mod regression;
pub mod rl;

pub use regression::{EVAL_HEADER, format_table, slug, write_regression_report};

/// A table cell: six decimals, or `nan`.
pub(crate) fn fmt(v: f64) -> String {
    if v.is_nan() {
        "nan".into()
    } else {
        format!("{v:.6}")
    }
}
