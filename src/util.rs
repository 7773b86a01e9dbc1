//! Crash-safe file output: atomic writes (temp file + fsync + rename), pretty JSON, simple CSV,
//! and an append-only JSON-lines log for metrics that grow during a run.

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The temporary sibling `dir/.<file><suffix>` used while writing `path` atomically.
pub(crate) fn temp_sibling(path: &Path, suffix: &str) -> Result<PathBuf> {
    let name = path
        .file_name()
        .with_context(|| format!("{}: path has no file name", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(suffix);
    Ok(path.with_file_name(tmp_name))
}

/// Creates the parent directory of `path` if it does not exist yet.
pub(crate) fn ensure_parent(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        fs::create_dir_all(parent)
            .with_context(|| format!("creating directory {}", parent.display()))?;
    }
    Ok(())
}

/// fsyncs the directory holding `path` so that a rename into it is durable (best effort:
/// not every platform lets a directory be opened).
fn sync_parent_dir(path: &Path) {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(dir) = File::open(parent) {
        let _ = dir.sync_all();
    }
}

/// Moves the finished temporary file `tmp` over `path`: fsyncs `tmp`, renames it, fsyncs the
/// directory. On failure `tmp` is removed.
pub(crate) fn commit_temp(tmp: &Path, path: &Path) -> Result<()> {
    let res = (|| -> Result<()> {
        File::open(tmp)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("syncing {}", tmp.display()))?;
        fs::rename(tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        Ok(())
    })();
    if res.is_err() {
        let _ = fs::remove_file(tmp);
    } else {
        sync_parent_dir(path);
    }
    res
}

/// Writes `bytes` to `path` atomically: the data goes to `dir/.<file>.tmp`, is fsynced, and the
/// temp file is renamed over `path`, so readers see either the old or the new content, never a
/// torn file. Creates the parent directory if needed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = write_temp(path, bytes)?;
    rename_temp(&tmp, path)
}

/// The first half of [`write_atomic`]: `bytes` written and fsynced into the temporary sibling
/// `dir/.<file>.tmp` of `path` (returned); `path` itself is untouched.
pub(crate) fn write_temp(path: &Path, bytes: &[u8]) -> Result<PathBuf> {
    ensure_parent(path)?;
    let tmp = temp_sibling(path, ".tmp")?;
    let written = (|| -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e)
            .with_context(|| format!("writing {} (via {})", path.display(), tmp.display()));
    }
    Ok(tmp)
}

/// The second half of [`write_atomic`]: the finished `tmp` renamed over `path`, then the
/// directory fsynced. On failure `tmp` is removed.
pub(crate) fn rename_temp(tmp: &Path, path: &Path) -> Result<()> {
    fs::rename(tmp, path).map_err(|e| {
        let _ = fs::remove_file(tmp);
        anyhow::Error::new(e).context(format!("renaming {} to {}", tmp.display(), path.display()))
    })?;
    sync_parent_dir(path);
    Ok(())
}

/// Writes `value` as pretty-printed JSON (with a trailing newline) atomically.
pub fn write_json_atomic<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value)
        .with_context(|| format!("serialising JSON for {}", path.display()))?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Quotes a CSV field if it contains a comma, a double quote, or a line break (RFC 4180).
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Writes a CSV file (header line, then one line per row, `\n` line endings) atomically.
/// Every row must have as many fields as the header.
pub fn write_csv_atomic(path: &Path, header: &[&str], rows: &[Vec<String>]) -> Result<()> {
    let mut out = String::new();
    let join = |fields: &mut dyn Iterator<Item = &str>, out: &mut String| {
        let line: Vec<String> = fields.map(csv_field).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    };
    join(&mut header.iter().copied(), &mut out);
    for (i, row) in rows.iter().enumerate() {
        if row.len() != header.len() {
            bail!(
                "{}: CSV row {i} has {} fields but the header has {}",
                path.display(),
                row.len(),
                header.len()
            );
        }
        join(&mut row.iter().map(String::as_str), &mut out);
    }
    write_atomic(path, out.as_bytes())
}

/// Appends one JSON object per line to a file, writing each line with a single `write` call on
/// an unbuffered append-mode file, so every record is on disk (in the OS cache) as soon as
/// [`JsonlAppender::write`] returns.
///
/// On open, a torn last line (no trailing newline, e.g. after a crash mid-write) is cut off so
/// that new records start on a fresh line.
pub struct JsonlAppender {
    file: File,
    path: PathBuf,
}

impl JsonlAppender {
    /// Opens `path` for appending, creating it (and its parent directory) if needed.
    pub fn open(path: &Path) -> Result<Self> {
        ensure_parent(path)?;
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .with_context(|| format!("opening {} for appending", path.display()))?;
        repair_torn_tail(&mut file).with_context(|| format!("repairing {}", path.display()))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The file being appended to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `v` as one line of compact JSON and flushes it.
    pub fn write<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<()> {
        let mut line = serde_json::to_vec(v)
            .with_context(|| format!("serialising a record for {}", self.path.display()))?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|_| self.file.flush())
            .with_context(|| format!("appending to {}", self.path.display()))
    }

    /// fsyncs the file (e.g. right before writing a checkpoint).
    pub fn sync(&mut self) -> Result<()> {
        self.file
            .sync_data()
            .with_context(|| format!("syncing {}", self.path.display()))
    }
}

/// Truncates `file` after its last newline if it does not end with one.
fn repair_torn_tail(file: &mut File) -> std::io::Result<()> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    // Scan backwards in chunks for the last '\n'.
    let mut end = len;
    let mut buf = vec![0u8; 4096];
    let mut first = true;
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf[..n])?;
        if first && buf[n - 1] == b'\n' {
            return Ok(());
        }
        first = false;
        if let Some(pos) = buf[..n].iter().rposition(|&b| b == b'\n') {
            return file.set_len(start + pos as u64 + 1);
        }
        end = start;
    }
    file.set_len(0)
}

/// Splits JSONL text into (1-based line number, line) pairs, skipping blank lines and a torn
/// final line (one without a trailing newline that does not parse as JSON).
fn jsonl_lines(text: &str) -> Vec<(usize, &str)> {
    let complete = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let n = lines.len();
    lines
        .into_iter()
        .enumerate()
        .filter(|&(i, l)| {
            if l.trim().is_empty() {
                return false;
            }
            let torn_candidate = i + 1 == n && !complete;
            !(torn_candidate && serde_json::from_str::<serde_json::Value>(l).is_err())
        })
        .map(|(i, l)| (i + 1, l))
        .collect()
}

/// Reads every record of a JSONL file. Blank lines and a torn final line are ignored; any
/// other malformed line is an error naming the file and line.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    jsonl_lines(&text)
        .into_iter()
        .map(|(no, line)| {
            serde_json::from_str(line)
                .with_context(|| format!("{}:{no}: malformed JSONL record", path.display()))
        })
        .collect()
}

/// Rewrites a JSONL file atomically, keeping only the records for which `keep` returns true
/// (e.g. `|v| v["step"].as_u64() <= Some(checkpoint_step)` when a run resumes). A missing file
/// is left missing. Do not call this while a [`JsonlAppender`] on the same file is open.
pub fn truncate_jsonl(path: &Path, keep: impl Fn(&serde_json::Value) -> bool) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = String::with_capacity(text.len());
    for (no, line) in jsonl_lines(&text) {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{no}: malformed JSONL record", path.display()))?;
        if keep(&v) {
            out.push_str(line);
            out.push('\n');
        }
    }
    write_atomic(path, out.as_bytes())
}

/// A progress bar on stderr, `NAME [elapsed<eta] ━━━ done/total UNIT  message`, starting at
/// `done` (a resumed run or a restarted sweep).
pub fn progress_bar(total: usize, done: usize, name: &str, unit: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total as u64);
    let template = format!(
        "{{prefix}} [{{elapsed_precise}}<{{eta_precise}}] {{bar:30}} {{pos}}/{{len}} {unit}  {{msg}}"
    );
    bar.set_style(indicatif::ProgressStyle::with_template(&template).expect("valid template"));
    bar.set_prefix(name.to_string());
    bar.set_position(done as u64);
    bar
}

/// Whether `pid` is a live (not zombie) process whose command line contains `needle`
/// (guards against a reused pid). Always false where `/proc` is missing.
pub(crate) fn alive_with(pid: u32, needle: &str) -> bool {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let Ok(stat) = std::fs::read_to_string(proc.join("stat")) else {
        return false;
    };
    let zombie = stat
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']));
    let cmdline = std::fs::read(proc.join("cmdline")).unwrap_or_default();
    !zombie
        && cmdline
            .windows(needle.len().max(1))
            .any(|w| w == needle.as_bytes())
}

/// A lock file holding this process's pid, removed on drop (`sweep.lock`, a run's
/// `<runs>/<name>.lock`). A lock whose process is gone (a killed sweep or run), or whose pid now
/// belongs to a process without `needle` on its command line, is stale and taken over; a live
/// one is refused with `busy(pid, path)`.
pub struct PidLock(PathBuf);

impl PidLock {
    pub fn acquire(path: &Path, needle: &str, busy: impl Fn(u32, &Path) -> String) -> Result<Self> {
        ensure_parent(path)?;
        for _ in 0..2 {
            match OpenOptions::new().write(true).create_new(true).open(path) {
                Ok(mut f) => {
                    writeln!(f, "{}", std::process::id())?;
                    return Ok(Self(path.to_path_buf()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let text = std::fs::read_to_string(path).unwrap_or_default();
                    if let Ok(pid) = text.trim().parse::<u32>()
                        && pid != std::process::id()
                        && alive_with(pid, needle)
                    {
                        bail!("{}", busy(pid, path));
                    }
                    std::fs::remove_file(path)
                        .with_context(|| format!("removing stale {}", path.display()))?;
                }
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        }
        bail!("could not take {}", path.display())
    }
}

impl Drop for PidLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A value from a user's file as an error message may quote it: at most 40 characters, with
/// the full length said when it is cut (a 10 MB field must not become a 10 MB message).
pub fn excerpt(s: &str) -> String {
    const MAX: usize = 40;
    match s.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}… ({} characters)", &s[..end], s.chars().count()),
        None => s.to_string(),
    }
}
