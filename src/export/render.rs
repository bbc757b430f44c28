//! The /metrics text of the anomaly families, produced in chunks from a snapshot of the rows,
//! so a reader never makes the whole body exist at once (at 100k series it is ~150 MB).

use super::{format_float_into, push_row_labels, AnomalyRow, FAMILIES};
use hyper::body::Bytes;
use std::sync::Arc;

/// Chunk size a rendering aims for: big enough that per-frame overhead is noise.
const CHUNK: usize = 64 << 10;

/// One reader's walk over a snapshot: family by family, row by row, then the self metrics.
pub struct Rendering {
    rows: Arc<[AnomalyRow]>,
    family: usize,
    next_row: usize,
    tail: Option<Bytes>,
}

impl Rendering {
    pub(super) fn new(rows: Arc<[AnomalyRow]>, tail: Bytes) -> Self {
        Self {
            rows,
            family: 0,
            next_row: 0,
            tail: Some(tail),
        }
    }

    /// True once every chunk has been handed out.
    pub fn is_done(&self) -> bool {
        self.family >= FAMILIES.len() && self.tail.is_none()
    }

    /// The next chunk of text, None when the body is complete.
    pub fn next_chunk(&mut self) -> Option<Bytes> {
        if self.family >= FAMILIES.len() {
            return self.tail.take().filter(|t| !t.is_empty());
        }
        let mut out = String::with_capacity(CHUNK + 512);
        while self.family < FAMILIES.len() && out.len() < CHUNK {
            let (name, help, index) = FAMILIES[self.family];
            if self.next_row == 0 {
                out.push_str("# HELP ");
                out.push_str(name);
                out.push(' ');
                out.push_str(help);
                out.push_str("\n# TYPE ");
                out.push_str(name);
                out.push_str(" gauge\n");
            }
            while out.len() < CHUNK {
                let Some(row) = self.rows.get(self.next_row) else {
                    break;
                };
                self.next_row += 1;
                if let Some(v) = row.get(index) {
                    out.push_str(name);
                    out.push('{');
                    push_row_labels(&mut out, row);
                    out.push_str("} ");
                    format_float_into(&mut out, v);
                    out.push('\n');
                }
            }
            if self.next_row >= self.rows.len() {
                self.family += 1;
                self.next_row = 0;
            }
        }
        Some(Bytes::from(out))
    }
}

impl Iterator for Rendering {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        self.next_chunk()
    }
}
