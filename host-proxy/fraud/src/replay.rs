//! `fraud replay`: a log file through the same parsing, features and rules
//! as the online ingest, one decision per key out.

use std::collections::HashMap;
use std::io::{self, BufRead, Write};

use crate::crawlers::CrawlerChecks;
use crate::pipeline::{Decision, Pipeline};
use crate::record::{parse_line, LogRecord, Reject, MAX_LINE};
use crate::rules::{Action, KeyType};
use crate::signal::DecisionLine;
use crate::tokenize::{TokenizeError, Tokenizer};

/// Lines parsed and tokenized together.
pub const BATCH: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("reading the log: {0}")]
    Read(io::Error),
    #[error("writing decisions: {0}")]
    Write(io::Error),
    #[error(transparent)]
    Tokenize(#[from] TokenizeError),
}

/// One line of input, read with a bound: a line longer than `max` is
/// skipped to its end without being buffered.
pub enum Line {
    Text,
    TooLong,
}

/// Reads the next line into `buf` (without the newline). None at the end.
pub fn read_line<R: BufRead>(r: &mut R, buf: &mut Vec<u8>, max: usize) -> io::Result<Option<Line>> {
    buf.clear();
    let mut too_long = false;
    let mut any = false;
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok(any.then_some(if too_long { Line::TooLong } else { Line::Text }));
        }
        any = true;
        let (part, done) = match memchr(chunk) {
            Some(i) => (&chunk[..i], Some(i + 1)),
            None => (chunk, None),
        };
        if !too_long {
            if buf.len() + part.len() > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(part);
            }
        }
        let used = done.unwrap_or(chunk.len());
        r.consume(used);
        if done.is_some() {
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(Some(if too_long { Line::TooLong } else { Line::Text }));
        }
    }
}

fn memchr(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

/// Runs parsed records through tokenization and the pipeline, in batches.
pub struct Feeder<'a> {
    pipeline: &'a mut Pipeline,
    tokenizer: &'a mut dyn Tokenizer,
    checks: Option<&'a mut dyn CrawlerChecks>,
    batch: Vec<LogRecord>,
}

impl<'a> Feeder<'a> {
    pub fn new(pipeline: &'a mut Pipeline, tokenizer: &'a mut dyn Tokenizer) -> Self {
        Feeder {
            pipeline,
            tokenizer,
            checks: None,
            batch: Vec::with_capacity(BATCH),
        }
    }

    /// Checks the batch's crawler claims by DNS before observing it.
    pub fn with_crawler_checks(mut self, checks: &'a mut dyn CrawlerChecks) -> Self {
        self.checks = Some(checks);
        self
    }

    /// Parses a line; bad lines are counted, never fatal.
    pub fn line(&mut self, line: &[u8], out: &mut Vec<Decision>) -> Result<(), TokenizeError> {
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        match parse_line(line) {
            Ok(r) => {
                self.batch.push(r);
                if self.batch.len() >= BATCH {
                    self.flush(out)?;
                }
            }
            Err(e) => self.pipeline.rejected(e),
        }
        Ok(())
    }

    pub fn rejected(&mut self, r: Reject) {
        self.pipeline.rejected(r);
    }

    /// Tokenizes the distinct subjects of the batch in one call, then observes it.
    pub fn flush(&mut self, out: &mut Vec<Decision>) -> Result<(), TokenizeError> {
        let mut distinct: Vec<&str> = self
            .batch
            .iter()
            .map(|r| r.jwt_sub.as_str())
            .filter(|s| !s.is_empty())
            .collect();
        distinct.sort_unstable();
        distinct.dedup();
        let tokens = if distinct.is_empty() {
            Vec::new()
        } else {
            self.tokenizer.tokenize(&distinct)?
        };
        if tokens.len() != distinct.len() {
            return Err(TokenizeError::Count {
                sent: distinct.len(),
                got: tokens.len(),
            });
        }
        if let (Some(c), Some(list)) = (self.checks.as_deref_mut(), self.pipeline.crawler_list()) {
            let now = self.batch.iter().map(|r| r.ts_ms).max().unwrap_or(0);
            let wanted = self.pipeline.crawler_checks(self.batch.iter(), now);
            if !wanted.is_empty() {
                let found = c.check(&list, &wanted);
                self.pipeline.crawler_checked(&found, now);
            }
        }
        let map: HashMap<&str, &str> = distinct
            .iter()
            .copied()
            .zip(tokens.iter().map(String::as_str))
            .collect();
        for r in &self.batch {
            let tok = map.get(r.jwt_sub.as_str()).copied();
            self.pipeline.observe(r, tok, out);
        }
        self.batch.clear();
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct ReplayReport {
    pub counters: crate::pipeline::Counters,
    /// Keys written (one decision each).
    pub keys: usize,
    pub blocked: usize,
    pub challenged: usize,
}

/// Reads NDJSON from `input`, writes one decision per key with an action
/// (its most severe, latest) to `output`, sorted by key type and key.
pub fn replay<R: BufRead, W: Write>(
    mut input: R,
    output: W,
    pipeline: &mut Pipeline,
    tokenizer: &mut dyn Tokenizer,
    checks: Option<&mut dyn CrawlerChecks>,
) -> Result<(ReplayReport, Vec<Decision>), ReplayError> {
    let mut best: HashMap<(KeyType, String), Decision> = HashMap::new();
    let mut out = Vec::new();
    let mut buf = Vec::new();
    let mut keep = |out: &mut Vec<Decision>| {
        for d in out.drain(..) {
            let k = (d.key_type, d.key.clone());
            match best.get(&k) {
                Some(prev) if prev.severity() > d.severity() => {}
                _ => {
                    best.insert(k, d);
                }
            }
        }
    };
    {
        let mut feeder = Feeder::new(pipeline, tokenizer);
        if let Some(c) = checks {
            feeder = feeder.with_crawler_checks(c);
        }
        while let Some(line) =
            read_line(&mut input, &mut buf, MAX_LINE).map_err(ReplayError::Read)?
        {
            match line {
                Line::TooLong => feeder.rejected(Reject::TooLong),
                Line::Text => feeder.line(&buf, &mut out)?,
            }
            if out.len() >= BATCH {
                keep(&mut out);
            }
        }
        feeder.flush(&mut out)?;
        keep(&mut out);
    }
    let mut decisions: Vec<Decision> = best.into_values().collect();
    decisions.sort_by(|a, b| (a.key_type, &a.key).cmp(&(b.key_type, &b.key)));
    let mut w = io::BufWriter::new(output);
    for d in &decisions {
        serde_json::to_writer(&mut w, &DecisionLine::from(d))
            .map_err(|e| ReplayError::Write(e.into()))?;
        w.write_all(b"\n").map_err(ReplayError::Write)?;
    }
    w.flush().map_err(ReplayError::Write)?;
    let report = ReplayReport {
        counters: pipeline.counters(),
        keys: decisions.len(),
        blocked: decisions
            .iter()
            .filter(|d| d.action == Action::Block)
            .count(),
        challenged: decisions
            .iter()
            .filter(|d| d.action == Action::Challenge)
            .count(),
    };
    Ok((report, decisions))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_lines() {
        let data = format!("a\r\n{}\nb\nlast", "x".repeat(100));
        let mut r = io::BufReader::with_capacity(8, data.as_bytes());
        let mut buf = Vec::new();
        let mut got = Vec::new();
        while let Some(l) = read_line(&mut r, &mut buf, 50).expect("read") {
            got.push(match l {
                Line::Text => String::from_utf8_lossy(&buf).into_owned(),
                Line::TooLong => "<too long>".into(),
            });
        }
        assert_eq!(got, ["a", "<too long>", "b", "last"]);
    }
}
