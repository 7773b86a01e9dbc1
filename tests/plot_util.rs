//! Tests for `lvrnn::util` (atomic writes, JSON/CSV, JSONL) and `lvrnn::plot` (PNG + SVG figures).

use lvrnn::plot::{
    LinePlot, PALETTE, Pixels, Series, grid_plot, grid_plot_noted, grid_plot_pixels, line_plot,
    line_plot_pixels,
};
use lvrnn::util::{
    JsonlAppender, read_jsonl, truncate_jsonl, write_atomic, write_csv_atomic, write_json_atomic,
};
use plotters::style::RGBColor;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::Path;

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn write_atomic_replaces_content_and_leaves_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/deeper/out.txt");
    write_atomic(&path, b"first version, rather long").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"first version, rather long");
    write_atomic(&path, b"second").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"second");
    assert_eq!(names_in(&dir.path().join("sub/deeper")), vec!["out.txt"]);
}

#[test]
fn write_atomic_error_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the file should be: the rename must fail.
    let path = dir.path().join("target_is_dir");
    fs::create_dir_all(path.join("x")).unwrap();
    let err = write_atomic(&path, b"data").unwrap_err();
    assert!(format!("{err:#}").contains("target_is_dir"), "{err:#}");
    assert_eq!(names_in(dir.path()), vec!["target_is_dir"]);
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Rec {
    step: u64,
    loss: f64,
    tag: String,
}

#[test]
fn json_atomic_is_pretty_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cfg.json");
    let r = Rec {
        step: 3,
        loss: 0.25,
        tag: "a".into(),
    };
    write_json_atomic(&path, &r).unwrap();
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.contains("\n  \"step\": 3"), "{text}");
    let back: Rec = serde_json::from_str(&text).unwrap();
    assert_eq!(back, r);
}

#[test]
fn jsonl_round_trip_append_and_truncate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics/train.jsonl");
    let recs: Vec<Rec> = (0..10)
        .map(|i| Rec {
            step: i * 100,
            loss: 1.0 / (i as f64 + 1.0),
            tag: format!("t{i}, \"q\""),
        })
        .collect();
    {
        let mut app = JsonlAppender::open(&path).unwrap();
        for r in &recs[..6] {
            app.write(r).unwrap();
        }
        // Visible immediately (flushed per line).
        assert_eq!(read_jsonl::<Rec>(&path).unwrap(), recs[..6]);
    }
    {
        // Re-open appends.
        let mut app = JsonlAppender::open(&path).unwrap();
        for r in &recs[6..] {
            app.write(r).unwrap();
        }
    }
    assert_eq!(read_jsonl::<Rec>(&path).unwrap(), recs);
    assert_eq!(fs::read_to_string(&path).unwrap().lines().count(), 10);

    // Resume from the checkpoint at step 400: drop later records.
    truncate_jsonl(&path, |v| v["step"].as_u64().unwrap() <= 400).unwrap();
    assert_eq!(read_jsonl::<Rec>(&path).unwrap(), recs[..5]);
    assert_eq!(names_in(&dir.path().join("metrics")), vec!["train.jsonl"]);

    // Appending after truncation continues the file.
    let mut app = JsonlAppender::open(&path).unwrap();
    app.write(&recs[9]).unwrap();
    let got = read_jsonl::<Rec>(&path).unwrap();
    assert_eq!(got.len(), 6);
    assert_eq!(got[5], recs[9]);
}

#[test]
fn jsonl_torn_last_line_is_ignored_and_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.jsonl");
    fs::write(
        &path,
        "{\"step\":1,\"loss\":0.5,\"tag\":\"x\"}\n{\"step\":2,\"lo",
    )
    .unwrap();
    let got = read_jsonl::<serde_json::Value>(&path).unwrap();
    assert_eq!(got.len(), 1);
    let mut app = JsonlAppender::open(&path).unwrap();
    app.write(&serde_json::json!({"step": 2, "loss": 0.25, "tag": "y"}))
        .unwrap();
    let got = read_jsonl::<Rec>(&path).unwrap();
    assert_eq!(got.iter().map(|r| r.step).collect::<Vec<_>>(), vec![1, 2]);

    // A malformed line in the middle is an error naming the line.
    fs::write(&path, "{\"a\":1}\nnot json\n{\"a\":2}\n").unwrap();
    let err = read_jsonl::<serde_json::Value>(&path).unwrap_err();
    assert!(format!("{err:#}").contains("m.jsonl:2"), "{err:#}");
}

#[test]
fn csv_quotes_fields_with_commas_and_quotes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table.csv");
    let rows = vec![
        vec!["plain".to_string(), "1.5".to_string()],
        vec!["a,b".to_string(), "say \"hi\"".to_string()],
        vec!["line\nbreak".to_string(), String::new()],
    ];
    write_csv_atomic(&path, &["method", "return, mean"], &rows).unwrap();
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(
        text,
        "method,\"return, mean\"\nplain,1.5\n\"a,b\",\"say \"\"hi\"\"\"\n\"line\nbreak\",\n"
    );
    // Ragged rows are rejected.
    let bad = vec![vec!["only one".to_string()]];
    assert!(write_csv_atomic(&path, &["a", "b"], &bad).is_err());
    assert_eq!(fs::read_to_string(&path).unwrap(), text);
}

/// Checks the PNG signature and returns (width, height) from the IHDR chunk.
fn png_dims(path: &Path) -> (u32, u32) {
    let bytes = fs::read(path).unwrap();
    assert!(
        bytes.len() > 2000,
        "PNG suspiciously small: {} bytes",
        bytes.len()
    );
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "bad PNG signature");
    assert_eq!(&bytes[12..16], b"IHDR");
    let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    (w, h)
}

fn demo_plot(log_x: bool) -> LinePlot {
    let x: Vec<f64> = (1..=60).map(|i| i as f64).collect();
    let mean: Vec<f64> = x.iter().map(|x| (x / 10.0).sin()).collect();
    let hw: Vec<f64> = x.iter().map(|x| 0.1 + 0.01 * x).collect();
    LinePlot {
        title: "Posterior entropy".into(),
        x_label: "observed points".into(),
        y_label: "entropy (nats)".into(),
        log_x,
        series: vec![
            Series::new("LVRNN", x.clone(), mean.clone()).with_halfwidth(&hw),
            Series::new(
                "RNN baseline",
                x.clone(),
                mean.iter().map(|m| m * 0.5).collect(),
            )
            .dashed(),
        ],
        vline: Some(20.0),
        x_ticks: vec![],
    }
}

#[test]
fn line_plot_writes_png_and_svg() {
    let dir = tempfile::tempdir().unwrap();
    let stem = dir.path().join("figs/entropy");
    line_plot(&stem, &demo_plot(false)).unwrap();
    assert_eq!(png_dims(&dir.path().join("figs/entropy.png")), (800, 500));
    let svg = fs::read_to_string(dir.path().join("figs/entropy.svg")).unwrap();
    assert!(svg.starts_with("<svg") || svg.contains("<svg"));
    for s in [
        "Posterior entropy",
        "LVRNN",
        "RNN baseline",
        "observed points",
    ] {
        assert!(svg.contains(s), "SVG lacks {s:?}");
    }
    assert_eq!(
        names_in(&dir.path().join("figs")),
        vec!["entropy.png", "entropy.svg"]
    );

    // Rewriting replaces the files and leaves no temp files.
    line_plot(&stem, &demo_plot(true)).unwrap();
    assert_eq!(png_dims(&dir.path().join("figs/entropy.png")), (800, 500));
    assert_eq!(
        names_in(&dir.path().join("figs")),
        vec!["entropy.png", "entropy.svg"]
    );
}

#[test]
fn line_plot_survives_nan_inf_empty_and_constant_data() {
    let dir = tempfile::tempdir().unwrap();
    let nan = f64::NAN;
    let inf = f64::INFINITY;
    let cases = [
        // NaN / inf scattered in lines and bands.
        LinePlot {
            title: "nan".into(),
            series: vec![
                Series::new(
                    "a",
                    vec![0.0, 1.0, nan, 3.0, 4.0, 5.0],
                    vec![1.0, nan, 2.0, inf, 3.0, 2.5],
                )
                .with_band(
                    vec![0.5, 0.5, 0.5, nan, 2.0, 2.0],
                    vec![1.5, 1.5, nan, 9.0, 4.0, 3.0],
                ),
            ],
            ..LinePlot::default()
        },
        // Everything non-finite, empty series, log axis with only non-positive x.
        LinePlot {
            title: "empty".into(),
            log_x: true,
            series: vec![
                Series::new("all nan", vec![nan; 3], vec![nan; 3]),
                Series::new("empty", vec![], vec![]),
                Series::new("nonpositive", vec![0.0, -1.0], vec![1.0, 2.0]),
            ],
            vline: Some(-3.0),
            ..LinePlot::default()
        },
        // No series at all.
        LinePlot::default(),
        // Constant values and a single point.
        LinePlot {
            series: vec![
                Series::new("const", vec![2.0, 2.0, 2.0], vec![5.0, 5.0, 5.0]),
                Series::new("", vec![2.0], vec![5.0]),
            ],
            vline: Some(nan),
            ..LinePlot::default()
        },
        // Mismatched lengths and more series than palette colours.
        LinePlot {
            log_x: true,
            series: (0..13)
                .map(|i| {
                    Series::new(format!("s{i}"), vec![1.0, 10.0, 100.0], vec![i as f64; 2])
                        .with_band(vec![0.0], vec![1.0, 2.0])
                })
                .collect(),
            ..LinePlot::default()
        },
    ];
    for (i, p) in cases.iter().enumerate() {
        let stem = dir.path().join(format!("case{i}"));
        line_plot(&stem, p).unwrap();
        let (w, h) = png_dims(&stem.with_extension("png"));
        let named = p.series.iter().filter(|s| !s.name.is_empty()).count();
        if named > lvrnn::plot::LEGEND_INSIDE_MAX {
            // The legend is listed beside the 800×500 chart.
            assert!(w > 800 && h == 500, "case {i}: {w}×{h}");
        } else {
            assert_eq!((w, h), (800, 500), "case {i}");
        }
    }
}

#[test]
fn a_long_legend_is_listed_beside_the_chart_and_grows_the_figure() {
    let dir = tempfile::tempdir().unwrap();
    let plot = LinePlot {
        series: (0..30)
            .map(|i| Series::new(format!("series {i}"), vec![0.0, 1.0], vec![0.0, i as f64]))
            .collect(),
        ..LinePlot::default()
    };
    let stem = dir.path().join("long");
    line_plot(&stem, &plot).unwrap();
    let (w, h) = png_dims(&stem.with_extension("png"));
    // 30 entries of 20 px below a 40 px top margin: taller than the 500 px chart.
    assert!(w > 800, "{w}");
    assert_eq!(h, 40 + 30 * 20);
    let svg = std::fs::read_to_string(stem.with_extension("svg")).unwrap();
    for i in 0..30 {
        let name = format!("series {i}");
        assert!(svg.lines().any(|l| l.trim() == name), "legend lacks {name}");
    }
}

fn sine_panels() -> Vec<LinePlot> {
    (0..4)
        .map(|t| {
            let x: Vec<f64> = (0..100).map(|i| -5.0 + i as f64 * 0.1).collect();
            let truth: Vec<f64> = x
                .iter()
                .map(|x| (x + t as f64).sin() * (t + 1) as f64)
                .collect();
            let mean: Vec<f64> = truth.iter().map(|y| y * 0.9).collect();
            let sd: Vec<f64> = x.iter().map(|x| 0.2 + 0.1 * x.abs()).collect();
            let two_sd: Vec<f64> = sd.iter().map(|s| 2.0 * s).collect();
            LinePlot {
                title: format!("task {t}"),
                x_label: "x".into(),
                y_label: "y".into(),
                series: vec![
                    Series::new("predictive mean ± 2σ", x.clone(), mean).with_halfwidth(&two_sd),
                    Series::new("true function", x, truth).dashed(),
                ],
                ..LinePlot::default()
            }
        })
        .collect()
}

#[test]
fn grid_plot_writes_all_panels() {
    let dir = tempfile::tempdir().unwrap();
    let panels = sine_panels();
    let stem = dir.path().join("sine_tasks");
    grid_plot(&stem, "Predictive distribution", &panels, 2).unwrap();
    let (w, h) = png_dims(&dir.path().join("sine_tasks.png"));
    assert!(w >= 800 && h >= 500, "{w}x{h}");
    let svg = fs::read_to_string(dir.path().join("sine_tasks.svg")).unwrap();
    for s in [
        "Predictive distribution",
        "task 0",
        "task 3",
        "true function",
    ] {
        assert!(svg.contains(s), "SVG lacks {s:?}");
    }
    // Columns beyond the panel count and an odd count are fine.
    grid_plot(&dir.path().join("three"), "", &panels[..3], 5).unwrap();
    grid_plot(&dir.path().join("odd"), "t", &panels[..3], 2).unwrap();
    assert!(grid_plot(&dir.path().join("none"), "t", &[], 2).is_err());
}

/// How far (pixels) a 2-pixel line may reach past its plotting area: half its width times √2
/// at a corner, rounded up, plus a pixel for rounding the coordinates.
const LINE_REACH: i32 = 3;

/// 500 updates of a 0/1 metric that flips for single updates (`clip_norm_frac` of the
/// quickstart, issue 28): isolated spikes up, a stretch flipping at every update, isolated
/// dips; and, when `tall`, a few spikes 50 times the rest (a gradient norm).
fn spiky(tall: bool) -> (Vec<f64>, Vec<f64>) {
    let x: Vec<f64> = (1..=500).map(f64::from).collect();
    let y = (1..=500usize)
        .map(|u| {
            let flip = match u {
                ..280 => u % 17 == 0,
                280..380 => u % 2 == 0,
                _ => u % 23 != 0,
            };
            let v = f64::from(u8::from(flip));
            if tall && u % 97 == 0 { 50.0 } else { v }
        })
        .collect();
    (x, y)
}

/// Every pixel of `colour` in `pixels` lies within `area` (give or take [`LINE_REACH`]), and
/// there are some.
fn colour_stays_inside(
    pixels: &Pixels,
    colour: RGBColor,
    area: &lvrnn::plot::PlotArea,
    what: &str,
) {
    let (xs, ys) = area;
    let mut inside = 0;
    for y in 0..pixels.height {
        for x in 0..pixels.width {
            if pixels.at(x, y) != colour {
                continue;
            }
            let (px, py) = (x as i32, y as i32);
            assert!(
                px >= xs.start - LINE_REACH
                    && px < xs.end + LINE_REACH
                    && py >= ys.start - LINE_REACH
                    && py < ys.end + LINE_REACH,
                "{what}: a pixel of the series at ({px}, {py}) lies outside its plotting area {xs:?} × {ys:?}"
            );
            inside += 1;
        }
    }
    assert!(
        inside > 500,
        "{what}: only {inside} pixels of the series drawn"
    );
}

#[test]
fn a_spiky_series_stays_inside_its_panel() {
    // Panel k draws its spiky series in colour k (k all-NaN series before it take colours
    // 0..k and draw nothing), so a pixel of colour k anywhere else is that series leaving
    // its panel: into the title above, a neighbouring panel, or the one below.
    let panels: Vec<LinePlot> = (0..4)
        .map(|k| {
            let (x, y) = spiky(k % 2 == 1);
            let mut series: Vec<Series> = (0..k)
                .map(|_| Series::new("", vec![1.0], vec![f64::NAN]))
                .collect();
            let spikes = Series::new("", x, y);
            series.push(if k == 3 { spikes.dashed() } else { spikes });
            LinePlot {
                title: format!("panel {k}"),
                x_label: "update".into(),
                series,
                ..LinePlot::default()
            }
        })
        .collect();
    let pixels = grid_plot_pixels("Training metrics per update", "", &panels, 2).unwrap();
    assert_eq!(pixels.plot_areas.len(), 4);
    for (k, area) in pixels.plot_areas.iter().enumerate() {
        colour_stays_inside(&pixels, PALETTE[k], area, &format!("panel {k}"));
    }

    // The same in a single chart, with a legend and a band.
    let (x, y) = spiky(true);
    let hw = vec![0.5; x.len()];
    let plot = LinePlot {
        title: "spikes".into(),
        series: vec![Series::new("per update", x, y).with_halfwidth(&hw)],
        ..LinePlot::default()
    };
    let pixels = line_plot_pixels(&plot).unwrap();
    colour_stays_inside(&pixels, PALETTE[0], &pixels.plot_areas[0], "line plot");
}

#[test]
fn a_grid_note_takes_room_under_the_title_and_may_stand_alone() {
    let dir = tempfile::tempdir().unwrap();
    let panels = sine_panels();
    let note = "constant at every update: clip_element_frac = 0";
    let plain = grid_plot_pixels("t", "", &panels, 2).unwrap();
    let noted = grid_plot_pixels("t", note, &panels, 2).unwrap();
    assert_eq!(noted.width, plain.width);
    assert!(noted.height > plain.height);
    // The panels move down by the note's height.
    let shift = (noted.height - plain.height) as i32;
    assert_eq!(
        noted.plot_areas[0].1.start,
        plain.plot_areas[0].1.start + shift
    );
    grid_plot_noted(&dir.path().join("noted"), "t", note, &panels, 2).unwrap();
    let svg = fs::read_to_string(dir.path().join("noted.svg")).unwrap();
    assert!(svg.contains(note), "the SVG lacks the note");
    // Only a note: no panels to draw, still a figure.
    grid_plot_noted(&dir.path().join("alone"), "t", note, &[], 3).unwrap();
    assert!(png_dims(&dir.path().join("alone.png")).0 > 0);
}

/// Renders example figures to `$LVRNN_PLOT_EXAMPLE_DIR` for eyeballing (skipped if unset).
#[test]
fn render_examples_for_inspection() {
    let Ok(dir) = std::env::var("LVRNN_PLOT_EXAMPLE_DIR") else {
        return;
    };
    let dir = Path::new(&dir);
    line_plot(&dir.join("example_line"), &demo_plot(false)).unwrap();
    line_plot(&dir.join("example_logx"), &demo_plot(true)).unwrap();
    grid_plot(
        &dir.join("example_grid"),
        "Predictive distribution",
        &sine_panels(),
        2,
    )
    .unwrap();
}
