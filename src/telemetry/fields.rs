//! [`PlainFields`]: how span and event fields are written when the log is not
//! coloured. The same text as tracing-subscriber's `DefaultFields` with ANSI
//! off (`name=value` separated by spaces, the message first and unnamed, the
//! message's ANSI and C1 control characters escaped), with one difference:
//! other fields have every control character escaped, newlines included, where
//! `DefaultFields` writes a `%` field raw. And without its styling
//! layer: `DefaultFields` paints every field name through `nu_ansi_term` even
//! when the styles are empty, about 2k instructions per request for the
//! request span's five fields.

use std::fmt::{self, Write as _};
use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::FormatFields;

/// Fields as `name=value`, for logs without colour.
#[derive(Debug, Default, Clone, Copy)]
pub struct PlainFields;

impl<'writer> FormatFields<'writer> for PlainFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        // Written into one buffer first and then in one piece: the span's
        // stored text would otherwise grow, and be reallocated, field by field
        // (about 1.5k instructions per request).
        let mut visitor = PlainVisitor {
            writer: String::with_capacity(256),
            is_empty: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result?;
        writer.write_str(&visitor.writer)
    }
}

struct PlainVisitor {
    writer: String,
    is_empty: bool,
    result: fmt::Result,
}

impl Visit for PlainVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"))
        } else if value
            .bytes()
            .all(|b| matches!(b, b' '..=b'~') && b != b'"' && b != b'\\')
        {
            // What `{:?}` writes for such a string, without going through
            // its per-character escaping.
            self.separate();
            let w = &mut self.writer;
            w.push_str(plain_name(field));
            w.push_str("=\"");
            w.push_str(value);
            w.push('"');
        } else {
            self.record_debug(field, &value)
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // As DefaultFields: the error, then its causes as `name.sources=[..]`.
        let mut text = String::new();
        let _ = write!(Escaping(&mut text), "{value}");
        if value.source().is_some() {
            let _ = write!(text, " {}.sources=[", field.name());
            let mut source = value.source();
            let mut first = true;
            while let Some(s) = source {
                if !first {
                    text.push_str(", ");
                }
                first = false;
                let _ = write!(Escaping(&mut text), "{s}");
                source = s.source();
            }
            text.push(']');
        }
        self.record_debug(field, &format_args!("{text}"))
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        self.separate();
        let name = field.name();
        self.result = if name == "message" {
            // A message can carry client text; escape what a terminal acts on.
            write!(Escaping(&mut self.writer), "{value:?}")
        } else {
            self.writer.push_str(plain_name(field));
            self.writer.push('=');
            // Fields recorded with `%` (paths, model names) are the client's
            // text as sent: a newline in them would forge a log line.
            write!(ControlEscaping(&mut self.writer), "{value:?}")
        };
    }
}

/// A field's name as written: a raw identifier (`r#type`) without its `r#`.
fn plain_name(field: &Field) -> &'static str {
    let name = field.name();
    name.strip_prefix("r#").unwrap_or(name)
}

impl PlainVisitor {
    fn separate(&mut self) {
        if self.is_empty {
            self.is_empty = false;
        } else {
            self.writer.push(' ');
        }
    }
}

/// Writes through to `W`, escaping ANSI/C1 control characters as
/// tracing-subscriber's own sanitiser does.
struct Escaping<W>(W);

impl<W: fmt::Write> fmt::Write for Escaping<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while let Some(at) = rest.find(|c: char| escaped(c)) {
            self.0.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            match c {
                '\x1b' => self.0.write_str("\\x1b")?,
                '\x07' => self.0.write_str("\\x07")?,
                '\x08' => self.0.write_str("\\x08")?,
                '\x0c' => self.0.write_str("\\x0c")?,
                '\x7f' => self.0.write_str("\\x7f")?,
                c => write!(self.0, "\\u{{{:x}}}", c as u32)?,
            }
            rest = &rest[at + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

/// Writes through to `W`, escaping every control character (C0, DEL, C1): the
/// line breaks that [`Escaping`] leaves to a message too.
struct ControlEscaping<W>(W);

impl<W: fmt::Write> fmt::Write for ControlEscaping<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Every control character is an ASCII byte or, for C1, starts with
        // 0xC2: one byte scan for the common case of none.
        if !s.bytes().any(|b| b < 0x20 || b == 0x7f || b == 0xc2) {
            return self.0.write_str(s);
        }
        for c in s.chars() {
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' => {
                    write!(self.0, "\\x{:02x}", c as u32)?
                }
                c if c.is_control() => write!(self.0, "\\u{{{:x}}}", c as u32)?,
                c => self.0.write_char(c)?,
            }
        }
        Ok(())
    }
}

fn escaped(c: char) -> bool {
    matches!(
        c,
        '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' | '\u{80}'..='\u{9f}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("outer \x1b[31m")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    /// Logs the same spans and events through `fields` and returns the text.
    fn log_with<F>(fields: F) -> String
    where
        F: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        let out = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .with_ansi(false)
            .without_time()
            .fmt_fields(fields)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "request",
                request_id = %"0193-abc",
                method = %http::Method::POST,
                path = %"/v1/chat/completions",
                reseller = tracing::field::Empty,
                tenant = tracing::field::Empty,
                r#type = "x",
            );
            span.record("reseller", "acme");
            span.record("tenant", "dental \"one\"\n");
            let _in = span.enter();
            tracing::info!(
                count = 3,
                ok = true,
                ratio = 0.5,
                "evil \x1b[2J \u{85} text {}",
                7
            );
            tracing::warn!(name = "tab\there", "message with an \x07 bell");
            let err = Outer(std::io::Error::other("inner \x1b]0;x\x07"));
            tracing::error!(error = &err as &(dyn std::error::Error + 'static), "failed");
            let plain = std::io::Error::other("no source");
            tracing::error!(error = &plain as &(dyn std::error::Error + 'static));
        });
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn plain_fields_write_what_default_fields_write_without_colour() {
        let ours = log_with(PlainFields);
        let theirs = log_with(tracing_subscriber::fmt::format::DefaultFields::new());
        assert_eq!(ours, theirs);
        // And the escaping really happened (the comparison alone would pass if
        // neither escaped).
        assert!(ours.contains("evil \\x1b[2J \\u{85} text 7"), "{ours}");
        assert!(
            ours.contains("outer \\x1b[31m error.sources=[inner \\x1b]0;x\\x07]"),
            "{ours}"
        );
        assert!(!ours.contains('\x1b'));
        assert!(
            ours.contains("reseller=\"acme\" tenant=\"dental \\\"one\\\"\\n\""),
            "{ours}"
        );
    }

    /// Fields written with `%` (the client's path or model name) cannot break
    /// the line or reach the terminal: DefaultFields writes them raw.
    #[test]
    fn display_fields_escape_control_characters() {
        let out = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .with_ansi(false)
            .without_time()
            .fmt_fields(PlainFields)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let path = "/v1/x\n2026-01-01 ERROR forged\r\x1b[2J\u{9b}31m\x00 ok \u{e9}";
            tracing::info!(path = %path, model = %"gpt\t4o", "request");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.contains(
                "path=/v1/x\\n2026-01-01 ERROR forged\\r\\x1b[2J\\u{9b}31m\\u{0} ok \u{e9} model=gpt\\t4o"
            ),
            "{text}"
        );
        assert!(
            !text.contains(['\x1b', '\r', '\u{9b}', '\0', '\t']),
            "{text}"
        );
    }
}
