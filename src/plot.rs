//! Line figures (optionally with shaded bands, dashed lines, log-scaled x axis), written as both
//! PNG and SVG with plotters.
//!
//! Text is rendered with the DejaVu Sans font embedded in the binary (`assets/DejaVuSans.ttf`,
//! registered with plotters' `ab_glyph` backend under the families "sans-serif", "serif" and
//! "monospace"), so no system font libraries are needed.
//!
//! Both files are written atomically: the SVG is rendered into memory, the PNG into a hidden
//! temp file `dir/.<name>.png.tmp.png` (the bitmap encoder picks the format from the extension),
//! then each is renamed over its target.

use crate::util::{commit_temp, ensure_parent, temp_sibling, write_atomic};
use anyhow::{Context, Result, anyhow, bail};
use plotters::coord::ranged1d::{AsRangedCoord, Ranged, ValueFormatter};
use plotters::prelude::*;
use plotters::style::text_anchor;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One curve: `y` against `x`, optionally with a shaded band `(lower, upper)` (same length as
/// `x`) and drawn dashed. Points with a non-finite coordinate are skipped (the line has a gap
/// there). An empty `name` keeps the series out of the legend.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    pub name: String,
    pub x: Vec<f64>,
    pub y: Vec<f64>,
    /// (lower, upper) edges of a shaded band, e.g. mean ± CI or predictive mean ± 2σ.
    pub band: Option<(Vec<f64>, Vec<f64>)>,
    pub dashed: bool,
    /// Draws each point as a dot and the band as vertical error bars, without connecting line.
    pub points: bool,
}

impl Series {
    /// A solid series without band.
    pub fn new(name: impl Into<String>, x: Vec<f64>, y: Vec<f64>) -> Self {
        Self {
            name: name.into(),
            x,
            y,
            band: None,
            dashed: false,
            points: false,
        }
    }

    /// Adds a shaded band between `lower` and `upper`.
    pub fn with_band(mut self, lower: Vec<f64>, upper: Vec<f64>) -> Self {
        self.band = Some((lower, upper));
        self
    }

    /// Adds the band `y ± halfwidth` (e.g. a confidence-interval half-width per point).
    pub fn with_halfwidth(self, halfwidth: &[f64]) -> Self {
        let lower = self.y.iter().zip(halfwidth).map(|(y, h)| y - h).collect();
        let upper = self.y.iter().zip(halfwidth).map(|(y, h)| y + h).collect();
        self.with_band(lower, upper)
    }

    /// Draws dots with error bars (from the band) instead of a line with a shaded band.
    pub fn as_points(mut self) -> Self {
        self.points = true;
        self
    }

    /// Draws the series dashed.
    pub fn dashed(mut self) -> Self {
        self.dashed = true;
        self
    }
}

/// A single line chart. Series get colours from a fixed 10-colour palette in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinePlot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Log-scaled x axis; points with x <= 0 are dropped.
    pub log_x: bool,
    pub series: Vec<Series>,
    /// Optional dashed vertical marker, e.g. the training cut-off.
    pub vline: Option<f64>,
    /// Categorical x axis: tick labels at these x values (other ticks are left blank).
    pub x_ticks: Vec<(f64, String)>,
}

impl LinePlot {
    /// An empty plot with the given title and axis labels.
    pub fn new(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
    ) -> Self {
        Self {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            ..Self::default()
        }
    }
}

/// Size of a [`line_plot`] figure in pixels.
pub const LINE_PLOT_SIZE: (u32, u32) = (800, 500);
/// Size of one panel of a [`grid_plot`] figure in pixels.
pub const GRID_PANEL_SIZE: (u32, u32) = (520, 360);
const GRID_TITLE_HEIGHT: u32 = 44;

/// Tableau-20 palette: the ten Tableau colours, then their light variants.
pub const PALETTE: [RGBColor; 20] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(174, 199, 232),
    RGBColor(255, 187, 120),
    RGBColor(152, 223, 138),
    RGBColor(255, 152, 150),
    RGBColor(197, 176, 213),
    RGBColor(196, 156, 148),
    RGBColor(247, 182, 210),
    RGBColor(199, 199, 199),
    RGBColor(219, 219, 141),
    RGBColor(158, 218, 229),
];

/// Above this many named series a [`line_plot`] lists them beside the chart, not inside it.
pub const LEGEND_INSIDE_MAX: usize = 8;
/// Height of one entry of a side legend, in pixels.
const SIDE_LEGEND_ROW: u32 = 20;

static FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Registers the embedded font with plotters once per process.
fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            for family in ["sans-serif", "serif", "monospace"] {
                // `InvalidFont` implements neither Debug nor Display.
                plotters::style::register_font(family, FontStyle::Normal, FONT_BYTES)
                    .map_err(|_| "assets/DejaVuSans.ttf is not a valid font".to_string())?;
            }
            Ok(())
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

fn draw_err<E: std::fmt::Display>(what: &str, stem: &Path) -> impl FnOnce(E) -> anyhow::Error {
    let msg = format!("{what} {}", stem.display());
    move |e| anyhow!("{msg}: {e}")
}

/// `stem` with `.ext` appended (keeps dots already in the stem, e.g. `lr1e-3.beta0.5`).
fn with_ext(stem: &Path, ext: &str) -> PathBuf {
    let mut s = stem.as_os_str().to_os_string();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

/// The pixel rectangle (x range, y range, in figure pixels) of one panel's plotting area: the
/// part inside its axes, where its series are drawn.
pub type PlotArea = (Range<i32>, Range<i32>);

/// Something that can draw itself onto any plotters backend; returns the plotting area of each
/// panel it drew.
trait Figure {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, plotters::coord::Shift>,
    ) -> Result<Vec<PlotArea>>;
}

/// A figure rendered into memory instead of a file (what [`line_plot`] and [`grid_plot`] write
/// as PNG), for checking what was drawn where.
pub struct Pixels {
    pub width: u32,
    pub height: u32,
    /// RGB bytes, row by row from the top left.
    pub rgb: Vec<u8>,
    /// The plotting area of each panel, in the order of the panels.
    pub plot_areas: Vec<PlotArea>,
}

impl Pixels {
    /// The colour of pixel (x, y).
    pub fn at(&self, x: u32, y: u32) -> RGBColor {
        let i = 3 * (y as usize * self.width as usize + x as usize);
        RGBColor(self.rgb[i], self.rgb[i + 1], self.rgb[i + 2])
    }
}

fn render_pixels<F: Figure>(size: (u32, u32), fig: &F) -> Result<Pixels> {
    ensure_font()?;
    let mut rgb = vec![0u8; 3 * size.0 as usize * size.1 as usize];
    let plot_areas = {
        let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
        let areas = fig.draw(&root)?;
        root.present()
            .map_err(|e| anyhow!("rendering into memory: {e}"))?;
        areas
    };
    Ok(Pixels {
        width: size.0,
        height: size.1,
        rgb,
        plot_areas,
    })
}

fn render<F: Figure>(stem: &Path, size: (u32, u32), fig: &F) -> Result<()> {
    ensure_font()?;
    let png = with_ext(stem, "png");
    let svg = with_ext(stem, "svg");
    ensure_parent(&png)?;

    // SVG: render to a string, then write atomically.
    let mut svg_text = String::new();
    {
        let root = SVGBackend::with_string(&mut svg_text, size).into_drawing_area();
        fig.draw(&root)
            .with_context(|| format!("drawing {}", svg.display()))?;
        root.present().map_err(draw_err("writing", &svg))?;
    }
    write_atomic(&svg, svg_text.as_bytes())?;

    // PNG: the encoder needs a file path ending in .png; draw to a temp sibling, then rename.
    let tmp = temp_sibling(&png, ".tmp.png")?;
    let drawn = (|| -> Result<()> {
        let root = BitMapBackend::new(&tmp, size).into_drawing_area();
        fig.draw(&root)
            .with_context(|| format!("drawing {}", png.display()))?;
        root.present().map_err(draw_err("writing", &tmp))?;
        Ok(())
    })();
    if let Err(e) = drawn {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    commit_temp(&tmp, &png)
}

/// Draws `plot` into `stem.png` (800×500) and `stem.svg`. With more than
/// [`LEGEND_INSIDE_MAX`] named series the legend becomes a list to the right of the chart (the
/// figure grows wider, and taller when the list needs it) so that it never covers the data.
pub fn line_plot(stem: &Path, plot: &LinePlot) -> Result<()> {
    let drawn = match line_figure(plot) {
        (size, LineFigure::Single(fig)) => render(stem, size, &fig),
        (size, LineFigure::SideLegend(fig)) => render(stem, size, &fig),
    };
    drawn.with_context(|| format!("line plot {}", stem.display()))
}

/// [`line_plot`]'s figure rendered into memory.
pub fn line_plot_pixels(plot: &LinePlot) -> Result<Pixels> {
    match line_figure(plot) {
        (size, LineFigure::Single(fig)) => render_pixels(size, &fig),
        (size, LineFigure::SideLegend(fig)) => render_pixels(size, &fig),
    }
}

enum LineFigure<'a> {
    Single(SingleFigure<'a>),
    SideLegend(SideLegendFigure<'a>),
}

/// The size and kind of [`line_plot`]'s figure: the legend inside the chart, or beside it.
fn line_figure(plot: &LinePlot) -> ((u32, u32), LineFigure<'_>) {
    let named = plot.series.iter().filter(|s| !s.name.is_empty()).count();
    if named <= LEGEND_INSIDE_MAX {
        return (LINE_PLOT_SIZE, LineFigure::Single(SingleFigure(plot)));
    }
    let longest = plot
        .series
        .iter()
        .map(|s| s.name.chars().count())
        .max()
        .unwrap_or(0) as u32;
    let width = (48 + 7 * longest).clamp(200, 1000);
    let height = LINE_PLOT_SIZE.1.max(40 + SIDE_LEGEND_ROW * named as u32);
    (
        (LINE_PLOT_SIZE.0 + width, height),
        LineFigure::SideLegend(SideLegendFigure(plot)),
    )
}

/// A chart of [`LINE_PLOT_SIZE`] with its legend listed to the right.
struct SideLegendFigure<'a>(&'a LinePlot);

impl Figure for SideLegendFigure<'_> {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, plotters::coord::Shift>,
    ) -> Result<Vec<PlotArea>> {
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e}");
        root.fill(&WHITE).map_err(e)?;
        let (left, right) = root.split_horizontally(LINE_PLOT_SIZE.0);
        let (chart, _) = left.split_vertically(LINE_PLOT_SIZE.1);
        // The same chart without names: no legend inside it. Colours follow the series index,
        // as in the list.
        let mut unnamed = self.0.clone();
        unnamed.series.iter_mut().for_each(|s| s.name.clear());
        let area = draw_panel(&chart, &unnamed, 22)?;
        let font = ("sans-serif", 13).into_font().color(&BLACK);
        let named = self
            .0
            .series
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.name.is_empty());
        for (row, (i, s)) in named.enumerate() {
            let y = 30 + (row as u32 * SIDE_LEGEND_ROW) as i32;
            let style = ShapeStyle::from(PALETTE[i % PALETTE.len()]).stroke_width(2);
            let segments: &[(i32, i32)] = if s.dashed {
                &[(6, 14), (18, 26)]
            } else {
                &[(6, 26)]
            };
            for (a, b) in segments {
                right
                    .draw(&PathElement::new(vec![(*a, y), (*b, y)], style))
                    .map_err(e)?;
            }
            right
                .draw(&Text::new(
                    s.name.clone(),
                    (34, y),
                    font.clone().pos(text_anchor::Pos::new(
                        text_anchor::HPos::Left,
                        text_anchor::VPos::Center,
                    )),
                ))
                .map_err(e)?;
        }
        Ok(vec![area])
    }
}

/// Draws `panels` in a grid with `cols` columns (rows as needed) under a common `title`, into
/// `stem.png` and `stem.svg`. Each panel is [`GRID_PANEL_SIZE`] pixels.
pub fn grid_plot(stem: &Path, title: &str, panels: &[LinePlot], cols: usize) -> Result<()> {
    grid_plot_noted(stem, title, "", panels, cols)
}

/// [`grid_plot`] with a `note` in smaller type under the title (wrapped to the figure's width),
/// e.g. the metrics that were constant and so got no panel. With a note, `panels` may be empty.
pub fn grid_plot_noted(
    stem: &Path,
    title: &str,
    note: &str,
    panels: &[LinePlot],
    cols: usize,
) -> Result<()> {
    let (size, fig) = grid_figure(title, note, panels, cols)
        .with_context(|| format!("grid plot {}", stem.display()))?;
    render(stem, size, &fig).with_context(|| format!("grid plot {}", stem.display()))
}

/// [`grid_plot_noted`]'s figure rendered into memory.
pub fn grid_plot_pixels(
    title: &str,
    note: &str,
    panels: &[LinePlot],
    cols: usize,
) -> Result<Pixels> {
    let (size, fig) = grid_figure(title, note, panels, cols)?;
    render_pixels(size, &fig)
}

fn grid_figure<'a>(
    title: &'a str,
    note: &str,
    panels: &'a [LinePlot],
    cols: usize,
) -> Result<((u32, u32), GridFigure<'a>)> {
    if panels.is_empty() && note.is_empty() {
        bail!("no panels");
    }
    let cols = cols.clamp(1, panels.len().max(1));
    let rows = panels.len().div_ceil(cols);
    let width = GRID_PANEL_SIZE.0 * cols as u32;
    let note = wrap(note, (width as usize - 40) / NOTE_CHAR_WIDTH);
    let head = if title.is_empty() {
        0
    } else {
        GRID_TITLE_HEIGHT
    } + NOTE_LINE_HEIGHT * note.len() as u32
        + if note.is_empty() { 0 } else { 8 };
    let size = (width, GRID_PANEL_SIZE.1 * rows as u32 + head);
    let fig = GridFigure {
        title,
        note,
        head,
        panels,
        rows,
        cols,
    };
    Ok((size, fig))
}

/// Height of one line of a grid figure's note, in pixels; the note's font size is 14.
const NOTE_LINE_HEIGHT: u32 = 20;
/// A generous width of one character of the note's font, in pixels (for wrapping).
const NOTE_CHAR_WIDTH: usize = 8;

/// `text` broken at spaces into lines of at most `width` characters (a longer word keeps a
/// line of its own).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = vec![];
    for word in text.split_whitespace() {
        match lines.last_mut() {
            Some(line) if line.chars().count() + 1 + word.chars().count() <= width => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    lines
}

struct SingleFigure<'a>(&'a LinePlot);

impl Figure for SingleFigure<'_> {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, plotters::coord::Shift>,
    ) -> Result<Vec<PlotArea>> {
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        Ok(vec![draw_panel(root, self.0, 22)?])
    }
}

struct GridFigure<'a> {
    title: &'a str,
    /// The note's lines, under the title.
    note: Vec<String>,
    /// Height of the title and note above the panels.
    head: u32,
    panels: &'a [LinePlot],
    rows: usize,
    cols: usize,
}

impl Figure for GridFigure<'_> {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, plotters::coord::Shift>,
    ) -> Result<Vec<PlotArea>> {
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e}");
        root.fill(&WHITE).map_err(e)?;
        let (top, area) = root.split_vertically(self.head);
        let (w, _) = top.dim_in_pixel();
        let centred = |size: u32| {
            ("sans-serif", size)
                .into_font()
                .color(&BLACK)
                .pos(text_anchor::Pos::new(
                    text_anchor::HPos::Center,
                    text_anchor::VPos::Center,
                ))
        };
        let mut y = 0;
        if !self.title.is_empty() {
            let text = Text::new(
                self.title.to_string(),
                (w as i32 / 2, GRID_TITLE_HEIGHT as i32 / 2),
                centred(24),
            );
            top.draw(&text).map_err(e)?;
            y = GRID_TITLE_HEIGHT as i32;
        }
        for line in &self.note {
            let text = Text::new(
                line.clone(),
                (w as i32 / 2, y + NOTE_LINE_HEIGHT as i32 / 2),
                centred(14),
            );
            top.draw(&text).map_err(e)?;
            y += NOTE_LINE_HEIGHT as i32;
        }
        let mut areas = vec![];
        if self.panels.is_empty() {
            return Ok(areas);
        }
        for (panel, sub) in self
            .panels
            .iter()
            .zip(area.split_evenly((self.rows, self.cols)))
        {
            areas.push(draw_panel(&sub, panel, 17)?);
        }
        Ok(areas)
    }
}

/// Finite points of a series after log-axis filtering.
fn keep_x(x: f64, log_x: bool) -> bool {
    x.is_finite() && (!log_x || x > 0.0)
}

/// Splits an iterator of optional points into maximal runs of valid points.
fn runs<T: Copy>(points: impl Iterator<Item = Option<T>>) -> Vec<Vec<T>> {
    let mut out = vec![];
    let mut cur = vec![];
    for p in points {
        match p {
            Some(p) => cur.push(p),
            None => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn line_runs(s: &Series, log_x: bool) -> Vec<Vec<(f64, f64)>> {
    runs(
        s.x.iter()
            .zip(&s.y)
            .map(|(&x, &y)| (keep_x(x, log_x) && y.is_finite()).then_some((x, y))),
    )
}

fn band_runs(s: &Series, log_x: bool) -> Vec<Vec<(f64, f64, f64)>> {
    let Some((lo, hi)) = &s.band else {
        return vec![];
    };
    runs(s.x.iter().zip(lo).zip(hi).map(|((&x, &l), &h)| {
        (keep_x(x, log_x) && l.is_finite() && h.is_finite()).then_some((x, l, h))
    }))
}

/// Range of finite values with margins; never empty or degenerate.
fn padded_range(lo: f64, hi: f64, frac: f64, default: (f64, f64)) -> (f64, f64) {
    if !(lo.is_finite() && hi.is_finite()) || lo > hi {
        return default;
    }
    if hi - lo <= 1e-12 * hi.abs().max(lo.abs()).max(1e-300) {
        let pad = if lo == 0.0 { 1.0 } else { 0.1 * lo.abs() };
        return (lo - pad, hi + pad);
    }
    let pad = frac * (hi - lo);
    (lo - pad, hi + pad)
}

struct Ranges {
    x: (f64, f64),
    y: (f64, f64),
}

fn data_ranges(plot: &LinePlot) -> Ranges {
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    let mut add = |x: f64, y: f64| {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    };
    let mut lines = (f64::INFINITY, f64::NEG_INFINITY);
    for s in &plot.series {
        for run in line_runs(s, plot.log_x) {
            for (x, y) in run {
                add(x, y);
                lines = (lines.0.min(y), lines.1.max(y));
            }
        }
    }
    // A band widens the axis by at most the lines' own span on each side (with two seeds a
    // 99% t-interval is 63.7 standard errors wide and would flatten every line); the drawing
    // clips it to the axis.
    let reach = match lines.1 - lines.0 {
        span if span.is_finite() && span > 0.0 => span,
        _ => f64::INFINITY,
    };
    for s in &plot.series {
        for run in band_runs(s, plot.log_x) {
            for (x, l, h) in run {
                add(x, l.max(lines.0 - reach));
                add(x, h.min(lines.1 + reach));
            }
        }
    }
    if let Some(v) = plot.vline
        && keep_x(v, plot.log_x)
    {
        x0 = x0.min(v);
        x1 = x1.max(v);
    }
    let x = if plot.log_x {
        let (l0, l1) = padded_range(x0.log10(), x1.log10(), 0.02, (0.0, 1.0));
        (10f64.powf(l0), 10f64.powf(l1))
    } else {
        padded_range(x0, x1, 0.02, (0.0, 1.0))
    };
    let y = padded_range(y0, y1, 0.06, (0.0, 1.0));
    Ranges { x, y }
}

/// `v`, or 0 if it is round-off noise relative to the axis span.
fn snap_zero(v: f64, span: f64) -> f64 {
    if v.abs() < 1e-9 * span { 0.0 } else { v }
}

/// Compact tick label: integers without decimals, otherwise up to 4 significant digits,
/// scientific notation for very large/small magnitudes.
fn fmt_tick(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{}", if v == 0.0 { 0.0 } else { v });
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        let s = format!("{v:.2e}");
        // 1.00e3 -> 1e3
        if let Some((m, e)) = s.split_once('e') {
            let m = m.trim_end_matches('0').trim_end_matches('.');
            return format!("{m}e{e}");
        }
        return s;
    }
    if (v - v.round()).abs() < 1e-9 * a.max(1.0) {
        return format!("{}", v.round() as i64);
    }
    let decimals = (3 - a.log10().floor() as i32).clamp(0, 8) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Pixel layout of one panel (font sizes, label areas, legend size estimate).
struct Layout {
    title_size: u32,
    label_size: u32,
    tick_size: u32,
    legend_size: u32,
    small: bool,
    x_label_area: u32,
    y_label_area: u32,
    margin: u32,
    margin_right: u32,
}

impl Layout {
    fn new(plot: &LinePlot, title_size: u32) -> Self {
        let small = title_size < 20;
        let tick_size = if small { 12 } else { 13 };
        Self {
            title_size,
            label_size: if small { 14 } else { 16 },
            tick_size,
            legend_size: tick_size + 1,
            small,
            x_label_area: if plot.x_label.is_empty() { 28 } else { 48 },
            y_label_area: if plot.y_label.is_empty() { 50 } else { 68 },
            margin: 10,
            margin_right: 20,
        }
    }

    /// Approximate size of the plotting area (inside the axes) in pixels.
    fn plot_area(&self, plot: &LinePlot, (w, h): (u32, u32)) -> (f64, f64) {
        let caption = if plot.title.is_empty() {
            0
        } else {
            self.title_size + 10
        };
        let pw = w.saturating_sub(self.margin + self.margin_right + self.y_label_area);
        let ph = h.saturating_sub(2 * self.margin + self.x_label_area + caption);
        (pw.max(1) as f64, ph.max(1) as f64)
    }

    /// Approximate legend box size in pixels (plus its offset from the corner).
    fn legend_box(&self, plot: &LinePlot) -> (f64, f64) {
        let named: Vec<&Series> = plot.series.iter().filter(|s| !s.name.is_empty()).collect();
        let chars = named
            .iter()
            .map(|s| s.name.chars().count())
            .max()
            .unwrap_or(0);
        let fs = self.legend_size as f64;
        let w = chars as f64 * 0.62 * fs + 50.0;
        let h = named.len() as f64 * (fs + 4.0) + 22.0;
        (w, h)
    }
}

/// Points along every line and band edge in normalised plot coordinates ([0, 1]², log-aware),
/// with segments subdivided so that a sparse line still registers where it passes.
fn normalised_trace(plot: &LinePlot, r: &Ranges) -> Vec<(f64, f64)> {
    let nx = |x: f64| {
        if plot.log_x {
            (x.log10() - r.x.0.log10()) / (r.x.1.log10() - r.x.0.log10())
        } else {
            (x - r.x.0) / (r.x.1 - r.x.0)
        }
    };
    let ny = |y: f64| (y - r.y.0) / (r.y.1 - r.y.0);
    let mut out = vec![];
    let mut trace = |run: Vec<(f64, f64)>| {
        let pts: Vec<(f64, f64)> = run.into_iter().map(|(x, y)| (nx(x), ny(y))).collect();
        if let Some(&p) = pts.first() {
            out.push(p);
        }
        for w in pts.windows(2) {
            let ((x0, y0), (x1, y1)) = (w[0], w[1]);
            let steps = (((x1 - x0).abs() + (y1 - y0).abs()) * 50.0)
                .ceil()
                .clamp(1.0, 50.0) as usize;
            for k in 1..=steps {
                let t = k as f64 / steps as f64;
                out.push((x0 + t * (x1 - x0), y0 + t * (y1 - y0)));
            }
        }
    };
    for s in &plot.series {
        for run in line_runs(s, plot.log_x) {
            trace(run);
        }
        for run in band_runs(s, plot.log_x) {
            trace(run.iter().map(|&(x, l, _)| (x, l)).collect());
            trace(run.iter().map(|&(x, _, h)| (x, h)).collect());
        }
    }
    out
}

/// Chooses the legend corner with the fewest data points under the legend box. If every
/// corner is occupied, the y range is extended upwards so that the legend fits above the data.
fn place_legend(
    plot: &LinePlot,
    r: &mut Ranges,
    (legend_w, legend_h): (f64, f64),
    (plot_w, plot_h): (f64, f64),
) -> SeriesLabelPosition {
    let wf = (legend_w / plot_w).min(1.0);
    let hf = (legend_h / plot_h).min(1.0);
    // counts: [upper right, upper left, lower right, lower left]
    let mut counts = [0usize; 4];
    for (u, v) in normalised_trace(plot, r) {
        let (right, left, upper, lower) = (u > 1.0 - wf, u < wf, v > 1.0 - hf, v < hf);
        counts[0] += (upper && right) as usize;
        counts[1] += (upper && left) as usize;
        counts[2] += (lower && right) as usize;
        counts[3] += (lower && left) as usize;
    }
    let order = [
        SeriesLabelPosition::UpperRight,
        SeriesLabelPosition::UpperLeft,
        SeriesLabelPosition::LowerRight,
        SeriesLabelPosition::LowerLeft,
    ];
    let best = (0..4).min_by_key(|&i| (counts[i], i)).unwrap_or(0);
    if counts[best] == 0 || hf > 0.45 {
        return order[best].clone();
    }
    // Make room above the data: the old range must end where the legend begins.
    r.y.1 = r.y.0 + (r.y.1 - r.y.0) / (1.0 - hf);
    if counts[1] < counts[0] {
        SeriesLabelPosition::UpperLeft
    } else {
        SeriesLabelPosition::UpperRight
    }
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    plot: &LinePlot,
    title_size: u32,
) -> Result<PlotArea> {
    let layout = Layout::new(plot, title_size);
    let mut r = data_ranges(plot);
    let legend = if plot.series.iter().any(|s| !s.name.is_empty()) {
        let plot_area = layout.plot_area(plot, area.dim_in_pixel());
        Some(place_legend(
            plot,
            &mut r,
            layout.legend_box(plot),
            plot_area,
        ))
    } else {
        None
    };
    let y: Range<f64> = r.y.0..r.y.1;
    if plot.log_x {
        let x = (r.x.0..r.x.1).log_scale();
        draw_chart(area, plot, &r, &layout, legend, x, y)
    } else {
        draw_chart(area, plot, &r, &layout, legend, r.x.0..r.x.1, y)
    }
}

fn draw_chart<DB, XS>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    plot: &LinePlot,
    r: &Ranges,
    layout: &Layout,
    legend: Option<SeriesLabelPosition>,
    x_spec: XS,
    y_spec: Range<f64>,
) -> Result<PlotArea>
where
    DB: DrawingBackend,
    XS: AsRangedCoord<Value = f64>,
    XS::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e}");
    let small = layout.small;
    let (label_size, tick_size) = (layout.label_size, layout.tick_size);

    let mut builder = ChartBuilder::on(area);
    builder
        .margin(layout.margin)
        .margin_right(layout.margin_right)
        .x_label_area_size(layout.x_label_area)
        .y_label_area_size(layout.y_label_area);
    if !plot.title.is_empty() {
        builder.caption(&plot.title, ("sans-serif", layout.title_size).into_font());
    }
    // Tick positions are computed in floating point: show ~1e-20 as 0.
    let x_span = if plot.log_x { 0.0 } else { r.x.1 - r.x.0 };
    let y_span = r.y.1 - r.y.0;
    let mut chart = builder.build_cartesian_2d(x_spec, y_spec).map_err(e)?;

    chart
        .configure_mesh()
        .x_desc(plot.x_label.as_str())
        .y_desc(plot.y_label.as_str())
        .axis_desc_style(("sans-serif", label_size))
        .label_style(("sans-serif", tick_size))
        .x_label_formatter(&|v| {
            if plot.x_ticks.is_empty() {
                return fmt_tick(snap_zero(*v, x_span));
            }
            let near = plot.x_ticks.iter().find(|(x, _)| (x - v).abs() < 1e-6);
            near.map_or(String::new(), |(_, label)| label.clone())
        })
        .y_label_formatter(&|v| fmt_tick(snap_zero(*v, y_span)))
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(210, 210, 210))
        .x_max_light_lines(if plot.log_x { 0 } else { 1 })
        .y_max_light_lines(1)
        .x_labels(if !plot.x_ticks.is_empty() {
            4 * plot.x_ticks.len() + 4
        } else if small {
            6
        } else {
            10
        })
        .y_labels(if small { 6 } else { 10 })
        .draw()
        .map_err(e)?;

    // Bands first so that every line is drawn on top of every band.
    for (i, s) in plot.series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        if s.points {
            let style = ShapeStyle::from(color).stroke_width(2);
            for (x, l, h) in band_runs(s, plot.log_x).into_iter().flatten() {
                let (l, h) = (l.clamp(r.y.0, r.y.1), h.clamp(r.y.0, r.y.1));
                let cap = 0.02 * (r.x.1 - r.x.0);
                let bar = [
                    vec![(x, l), (x, h)],
                    vec![(x - cap, l), (x + cap, l)],
                    vec![(x - cap, h), (x + cap, h)],
                ];
                chart
                    .draw_series(bar.into_iter().map(|p| PathElement::new(p, style)))
                    .map_err(e)?;
            }
            continue;
        }
        for run in band_runs(s, plot.log_x) {
            if run.len() < 2 {
                continue;
            }
            let clip = |v: f64| v.clamp(r.y.0, r.y.1);
            let poly: Vec<(f64, f64)> = run
                .iter()
                .map(|&(x, _, h)| (x, clip(h)))
                .chain(run.iter().rev().map(|&(x, l, _)| (x, clip(l))))
                .collect();
            chart
                .draw_series(std::iter::once(Polygon::new(poly, color.mix(0.2).filled())))
                .map_err(e)?;
        }
    }

    if let Some(v) = plot.vline
        && keep_x(v, plot.log_x)
    {
        let style = ShapeStyle::from(RGBColor(60, 60, 60)).stroke_width(1);
        chart
            .draw_series(DashedLineSeries::new(
                vec![(v, r.y.0), (v, r.y.1)],
                6,
                4,
                style,
            ))
            .map_err(e)?;
    }

    let mut any_label = false;
    for (i, s) in plot.series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let style = ShapeStyle::from(color).stroke_width(2);
        // Where the points land, worked out before the series' first drawing borrows `chart`.
        let runs: Vec<_> = line_runs(s, plot.log_x)
            .into_iter()
            .map(|run| {
                let pixels: Vec<Pixel> = run.iter().map(|p| chart.backend_coord(p)).collect();
                (run, pixels)
            })
            .collect();
        let mut last = None;
        for (run, pixels) in runs {
            if s.points {
                let dots = run.into_iter().map(|p| Circle::new(p, 4, style.filled()));
                last = Some(chart.draw_series(dots).map_err(e)?);
                continue;
            }
            if run.len() == 1 {
                // A lone point: draw a dot so it stays visible.
                let dot = Circle::new(run[0], 3, style.filled());
                last = Some(chart.draw_series(std::iter::once(dot)).map_err(e)?);
                continue;
            }
            for piece in gentle_pieces(&pixels) {
                let points = run[piece].to_vec();
                last = Some(if s.dashed {
                    chart
                        .draw_series(DashedLineSeries::new(points, 8, 5, style))
                        .map_err(e)?
                } else {
                    chart
                        .draw_series(LineSeries::new(points, style))
                        .map_err(e)?
                });
            }
        }
        if !s.name.is_empty() {
            any_label = true;
            let dashed = s.dashed;
            let legend = move |(x, y): (i32, i32)| {
                let (a, b) = if dashed {
                    ((0, 8), (12, 20))
                } else {
                    ((0, 10), (10, 20))
                };
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(a.0, 0), (a.1, 0)], style)
                    + PathElement::new(vec![(b.0, 0), (b.1, 0)], style)
            };
            match last {
                Some(ann) => {
                    ann.label(s.name.as_str()).legend(legend);
                }
                None => {
                    // No drawable point: still list the series in the legend.
                    chart
                        .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())
                        .map_err(e)?
                        .label(s.name.as_str())
                        .legend(legend);
                }
            }
        }
    }

    if let Some(position) = legend.filter(|_| any_label) {
        chart
            .configure_series_labels()
            .position(position)
            .label_font(("sans-serif", layout.legend_size))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .draw()
            .map_err(e)?;
    }
    Ok(chart.plotting_area().get_pixel_range())
}

/// A point on a backend, in pixels (plotters' `BackendCoord`).
type Pixel = (i32, i32);

/// Splits a line, given as the pixels its points land on, into pieces (index ranges into it,
/// each piece starting where the one before ends) that turn by at most 90° at any vertex.
///
/// Why: plotters draws a line wider than one pixel as one polygon whose corners are the
/// intersections of the line's edges, offset by d = half the width (a miter join). It caps the
/// miter on the outer side of a turn, but not on the inner side, where the edges meet
/// d / sin(θ/2) from the vertex (θ the angle between the two arms). A spike that goes up and
/// back down within a pixel or two (θ ≈ 0.3° for a 0 → 1 → 0 step of `clip_norm_frac` over
/// 500 updates) puts that corner hundreds of pixels away, through the figure's title and the
/// panel below (issue 28). With θ ≥ 90° it is at most d·√2 from the data; a sharper turn ends
/// one piece and starts the next at the same vertex.
fn gentle_pieces(pixels: &[Pixel]) -> Vec<std::ops::Range<usize>> {
    let mut pieces = vec![];
    let mut start = 0;
    // The last distinct pixel and its index, and the direction of the step into it.
    let mut last: Option<(Pixel, usize)> = None;
    let mut into: Option<(i64, i64)> = None;
    for (i, &p) in pixels.iter().enumerate() {
        let Some((q, j)) = last else {
            last = Some((p, i));
            continue;
        };
        if p == q {
            continue;
        }
        let step = (i64::from(p.0 - q.0), i64::from(p.1 - q.1));
        if let Some(u) = into
            && u.0 * step.0 + u.1 * step.1 < 0
        {
            pieces.push(start..j + 1);
            start = j;
        }
        last = Some((p, i));
        into = Some(step);
    }
    pieces.push(start..pixels.len());
    pieces
}
