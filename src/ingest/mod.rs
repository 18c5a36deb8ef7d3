//! Reading what editors hand us: subscriber CSV files, the subscriber TOML file,
//! and paper lists (Hugging Face daily_papers JSON, plain text, our own JSON).
//! Everything is validated into domain types here; a bad record is reported as
//! `FILE:LINE: reason` and nothing is stored.

pub mod fetch;
pub mod papers;
pub mod subscriber_csv;
pub mod subscriber_file;

use std::{
    fmt,
    io::{self, Read},
    path::Path,
};

/// Bad input at a known place. Displays as `FILE:LINE: reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InputError {
    pub file: String,
    pub line: u64,
    pub reason: String,
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.reason)
    }
}

impl InputError {
    pub fn new(file: &Path, line: u64, reason: impl Into<String>) -> Self {
        Self {
            file: file.display().to_string(),
            line,
            reason: reason.into(),
        }
    }
}

/// The message carried by the I/O error [`LineLimit`] raises.
#[derive(Debug)]
pub struct LineTooLong {
    pub line: u64,
    pub limit: usize,
}

impl fmt::Display for LineTooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line is longer than {} KiB", self.limit / 1024)
    }
}

impl std::error::Error for LineTooLong {}

/// A reader that fails as soon as one physical line grows past `limit` bytes,
/// so a file with one enormous line cannot make a parser buffer all of it.
pub struct LineLimit<R> {
    inner: R,
    limit: usize,
    line: u64,
    current: usize,
}

impl<R: Read> LineLimit<R> {
    pub fn new(inner: R, limit: usize) -> Self {
        Self {
            inner,
            limit,
            line: 1,
            current: 0,
        }
    }
}

impl<R: Read> Read for LineLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        for &b in &buf[..n] {
            if b == b'\n' {
                self.line += 1;
                self.current = 0;
            } else {
                self.current += 1;
                if self.current > self.limit {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        LineTooLong {
                            line: self.line,
                            limit: self.limit,
                        },
                    ));
                }
            }
        }
        Ok(n)
    }
}

/// If `e` was raised by [`LineLimit`], its line and message.
pub fn line_too_long(e: &io::Error) -> Option<&LineTooLong> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<LineTooLong>())
}
