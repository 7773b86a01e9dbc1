//! Reports: the per-run regression tables and figures ([`regression`]), and `lvrnn report`,
//! which gathers every result folder under a directory ([`collect`]), groups the results and
//! takes 99% t-intervals over seeds ([`aggregate`]), re-simulates the RL reference curves
//! ([`reference`]), and writes tables, figures and one
//! `report.md` ([`study`]).

pub mod aggregate;
pub mod collect;
pub mod reference;
pub mod regression;
pub mod study;

pub use regression::{EVAL_HEADER, format_table, slug, write_regression_report};
pub use study::{ReportOptions, run_report};
