//! Bad input a new user ran into (issue 8, part 3): each case must fail with a message that
//! names the key, row or column and says what to change, or (for defaults) resolve to the
//! documented value.

use lvrnn::inspect::read_history;

fn history_error(csv: &str, columns: usize) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.csv");
    std::fs::write(&path, csv).unwrap();
    format!("{:#}", read_history(&path, columns).unwrap_err())
}

#[test]
fn a_nan_in_a_history_with_a_header_names_the_line_and_the_column() {
    let e = history_error("x,y\n0.1,0.2\n0.3,NaN\n", 2);
    assert!(e.contains("line 3, column 2 (`y`)"), "{e}");
    assert!(e.contains("NaN is not a finite number"), "{e}");
    assert!(
        e.contains("replace it with a number or drop the row"),
        "{e}"
    );
}

#[test]
fn an_infinity_in_a_history_without_a_header_names_the_line_and_the_column_index() {
    // Blank lines still count: line numbers are those an editor shows.
    let e = history_error("0.1,0.2\n\n-inf,0.5\n", 2);
    assert!(e.contains("line 3, column 1:"), "{e}");
    assert!(e.contains("-inf is not a finite number"), "{e}");
}

#[test]
fn an_rl_history_with_an_infinite_reward_names_the_reward_column() {
    let e = history_error("obs,prev_action,prev_reward\n0,-1,0\n0,2,inf\n", 3);
    assert!(e.contains("line 3, column 3 (`prev_reward`)"), "{e}");
}

#[test]
fn a_finite_history_still_reads_with_and_without_a_header() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.csv");
    std::fs::write(&path, "x,y\n0.5,1e3\n-2,0\n").unwrap();
    assert_eq!(
        read_history(&path, 2).unwrap(),
        vec![vec![0.5, 1000.0], vec![-2.0, 0.0]]
    );
    std::fs::write(&path, "\n0.5,1\n").unwrap();
    assert_eq!(read_history(&path, 2).unwrap(), vec![vec![0.5, 1.0]]);
}
