pub mod regression;
