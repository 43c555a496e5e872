//! Writing events: one line each, flushed at once so a log shipper sees it immediately.
use std::io::Write;

use bytes::{BufMut, BytesMut};
use serde_json::Value;

use crate::{cli::Format, diagnosis::Diagnosis};

pub struct Output {
    format: Format,
    buf: BytesMut,
    /// Standard output went away (a closed pipe): stop writing, keep counting.
    pub closed: bool,
}

impl Output {
    pub fn new(format: Format) -> Self {
        Self {
            format,
            buf: BytesMut::with_capacity(4096),
            closed: false,
        }
    }

    pub fn diagnosis(&mut self, d: &Diagnosis) {
        match self.format {
            Format::Json => self.json(&d.to_json()),
            Format::Text => self.line(&d.to_text()),
        }
    }

    /// Agent-level records (start, statistics): JSON as is, or a text rendering.
    pub fn record(&mut self, v: &Value, text: impl FnOnce() -> String) {
        match self.format {
            Format::Json => self.json(v),
            Format::Text => self.line(&text()),
        }
    }

    fn json(&mut self, v: &Value) {
        self.buf.clear();
        if serde_json::to_writer((&mut self.buf).writer(), v).is_ok() {
            self.buf.put_u8(b'\n');
            self.flush();
        }
    }

    fn line(&mut self, s: &str) {
        self.buf.clear();
        self.buf.put_slice(s.as_bytes());
        self.buf.put_u8(b'\n');
        self.flush();
    }

    fn flush(&mut self) {
        if self.closed {
            return;
        }
        let mut out = std::io::stdout().lock();
        if out.write_all(&self.buf).and_then(|()| out.flush()).is_err() {
            self.closed = true;
        }
    }
}
