//! Reports. One run's evaluation: [`regression`] (CE, entropy, KL, coverage against the number
//! of points) and [`rl`] (regret, return, entropy, KL over time against the reference
//! policies); [`training`] draws the curves of every metric logged during training. And
//! `lvrnn report`, which gathers every result folder under a directory
//! ([`collect`]), groups the results and takes 99% t-intervals over seeds ([`aggregate`]),
//! re-simulates the RL reference curves ([`mod@reference`]), checks per-seed bounds where asked
//! ([`targets`]), and writes tables, figures and one `report.md` ([`study`]).

pub mod aggregate;
pub mod collect;
pub mod reference;
pub mod regression;
pub mod rl;
pub mod study;
pub mod targets;
pub mod training;

pub use regression::{EVAL_HEADER, format_table, slug, write_regression_report};
pub use study::{ReportOptions, run_report};

/// A table cell: six decimals, or `nan`.
pub(crate) fn fmt(v: f64) -> String {
    if v.is_nan() {
        "nan".into()
    } else {
        format!("{v:.6}")
    }
}
