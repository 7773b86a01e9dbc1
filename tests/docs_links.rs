//! The documentation holds together (issue 19, part 3): every relative link in README.md,
//! DESIGN.md, docs/*.md and results/*/README.md points to a file that exists, and every
//! `#anchor` to a heading of its target (GitHub's slugs); the README stays short and starts
//! with the two commands a newcomer runs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The markdown files whose links are checked.
fn documents() -> Vec<PathBuf> {
    let r = root();
    let mut out = vec![r.join("README.md"), r.join("DESIGN.md")];
    for dir in ["docs", "results"] {
        let mut stack = vec![r.join(dir)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "md")
                    && (dir == "docs" || p.file_name().is_some_and(|n| n == "README.md"))
                {
                    out.push(p);
                }
            }
        }
    }
    out.sort();
    out
}

/// Lines outside fenced code blocks, with their 1-based numbers.
fn prose(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push((i + 1, line));
        }
    }
    out
}

/// GitHub's anchor of a heading: lower case, punctuation dropped (letters, digits, `-`, `_`
/// and spaces kept), spaces to `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every anchor of `path`'s headings (a repeated heading also gets `-1`, `-2`, …).
fn anchors(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = BTreeSet::new();
    for (_, line) in prose(&text) {
        if let Some(h) = line.strip_prefix('#') {
            let s = slug(h.trim_start_matches('#'));
            let mut name = s.clone();
            let mut k = 0;
            while !out.insert(name.clone()) {
                k += 1;
                name = format!("{s}-{k}");
            }
        }
    }
    out
}

/// The `(target)` of every `[text](target)` on `line`, inline code spans left out.
fn links(line: &str) -> Vec<String> {
    let mut plain = String::new();
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
        } else if !in_code {
            plain.push(c);
        }
    }
    let mut out = vec![];
    let mut rest = plain.as_str();
    while let Some(i) = rest.find("](") {
        let after = &rest[i + 2..];
        match after.find(')') {
            Some(j) => {
                out.push(after[..j].trim().to_string());
                rest = &after[j + 1..];
            }
            None => break,
        }
    }
    out
}

#[test]
fn every_relative_link_and_anchor_in_the_documentation_resolves() {
    let mut broken = vec![];
    let docs = documents();
    assert!(docs.len() >= 8, "found only {docs:?}");
    for doc in &docs {
        let text = std::fs::read_to_string(doc).unwrap();
        let rel = doc.strip_prefix(root()).unwrap().display().to_string();
        for (n, line) in prose(&text) {
            for target in links(line) {
                if target.starts_with("http://")
                    || target.starts_with("https://")
                    || target.starts_with("mailto:")
                {
                    continue;
                }
                let (file, anchor) = match target.split_once('#') {
                    Some((f, a)) => (f, Some(a)),
                    None => (target.as_str(), None),
                };
                let path = if file.is_empty() {
                    doc.clone()
                } else {
                    doc.parent().unwrap().join(file)
                };
                if !path.exists() {
                    broken.push(format!("{rel}:{n}: `{target}`: no file {}", path.display()));
                    continue;
                }
                if let Some(a) = anchor {
                    let target_file = if path.is_dir() {
                        path.join("README.md")
                    } else {
                        path.clone()
                    };
                    if !anchors(&target_file).contains(a) {
                        broken.push(format!(
                            "{rel}:{n}: `{target}`: no heading with anchor `#{a}` in {}",
                            target_file.display()
                        ));
                    }
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_readme_is_short_and_starts_with_the_two_commands() {
    let text = std::fs::read_to_string(root().join("README.md")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.len() <= 200,
        "README.md has {} lines (at most 200; move reference material to docs/)",
        lines.len()
    );
    let head = lines[..lines.len().min(30)].join("\n");
    assert!(head.contains("quickstart"), "{head}");
    assert!(head.contains("cargo test --locked"), "{head}");
    // .ci/run runs exactly the README's test command.
    let ci = std::fs::read_to_string(root().join(".ci/run")).unwrap();
    assert!(ci.contains("cargo test --locked"), "{ci}");
}

#[test]
fn the_slugs_follow_githubs_rule() {
    assert_eq!(
        slug("The Laplace variants (paper Table 2)"),
        "the-laplace-variants-paper-table-2"
    );
    assert_eq!(
        slug("Post-hoc prior tuning, calibration, distribution shift"),
        "post-hoc-prior-tuning-calibration-distribution-shift"
    );
    assert_eq!(
        slug("Stages: pre-training, `eval`"),
        "stages-pre-training-eval"
    );
    assert_eq!(
        links("see [a](x.md#b) and `[c](d)` and [e](f)"),
        ["x.md#b", "f"]
    );
}
