//! The text log line's fields, written without tracing-subscriber's colour machinery when
//! colours are off.
//!
//! tracing-subscriber's `DefaultFields` paints every field name and every `=` through
//! `nu_ansi_term`, even with an empty style: about a third of what a request's log line
//! costs. [`PlainFields`] writes the same bytes directly when the writer has no colours, and
//! hands everything else to `DefaultFields` as it is: coloured output, the message (whose
//! ANSI escapes `DefaultFields` neutralises), errors (with their sources), raw `r#` names
//! and the `log.` metadata of records from the `log` crate. Its output is byte for byte
//! `DefaultFields`'s; a test holds it to that. Integers, booleans, plain strings and floats
//! in decimal notation (the latency) are written without `core::fmt`, which costs several
//! times what the bytes do.
//!
//! [`UtcMicros`] is tracing-subscriber's `SystemTime` timestamp (RFC 3339, UTC, microseconds),
//! its digits written directly rather than through seven `write!` calls.
//!
//! [`PlainFormat`] is tracing-subscriber's `Format<Full>` line (timestamp, level, spans,
//! target, fields) with its pieces written directly when colours are off: `Format<Full>`
//! writes the level and the target through `write!` and `nu_ansi_term`, about a quarter of
//! the line's cost. Its output is byte for byte `Format<Full>`'s; a test holds it to that.

use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::fmt::format::{self, DefaultFields, DefaultVisitor, Full, Writer};
use tracing_subscriber::fmt::time::{self, FormatTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// `Format<Full>` with the timer `T`, minus `write!` and painting with colours off (see the
/// module's documentation).
#[derive(Debug)]
pub struct PlainFormat<T = UtcMicros> {
    timer: T,
    full: format::Format<Full, T>,
}

impl<T: FormatTime + Clone> PlainFormat<T> {
    /// The line `Format::default().with_timer(timer)` writes.
    pub fn new(timer: T) -> Self {
        Self {
            full: format::Format::default().with_timer(timer.clone()),
            timer,
        }
    }
}

impl<S, N, T> FormatEvent<S, N> for PlainFormat<T>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    T: FormatTime,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        // Records from the `log` crate carry their target among their fields: `Format`
        // reads it from there.
        if writer.has_ansi_escapes() || meta.target() == "log" {
            return self.full.format_event(ctx, writer, event);
        }
        if self.timer.format_time(&mut writer).is_err() {
            writer.write_str("<unknown time>")?;
        }
        writer.write_str(level_text(*meta.level()))?;
        if let Some(scope) = ctx.event_scope() {
            let mut seen = false;
            for span in scope.from_root() {
                writer.write_str(span.metadata().name())?;
                seen = true;
                if let Some(fields) = span.extensions().get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    writer.write_char('{')?;
                    writer.write_str(fields)?;
                    writer.write_char('}')?;
                }
                writer.write_char(':')?;
            }
            if seen {
                writer.write_char(' ')?;
            }
        }
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        ctx.format_fields(writer.by_ref(), event)?;
        writer.write_char('\n')
    }
}

/// The space after the timestamp, the level as `Format` pads it, and the space after it.
fn level_text(level: Level) -> &'static str {
    match level {
        Level::TRACE => " TRACE ",
        Level::DEBUG => " DEBUG ",
        Level::INFO => "  INFO ",
        Level::WARN => "  WARN ",
        Level::ERROR => " ERROR ",
    }
}

/// `DefaultFields`, minus painting with colours off (see the module's documentation).
#[derive(Debug, Default)]
pub struct PlainFields;

impl<'writer> FormatFields<'writer> for PlainFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        if writer.has_ansi_escapes() {
            return DefaultFields::new().format_fields(writer, fields);
        }
        let mut visitor = PlainVisitor {
            writer,
            is_empty: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct PlainVisitor<'writer> {
    writer: Writer<'writer>,
    is_empty: bool,
    result: fmt::Result,
}

impl PlainVisitor<'_> {
    /// Whether `DefaultVisitor` must write this field itself: only it lists an error's
    /// sources, strips `r#` and skips `log.` metadata. A message given as a string or as
    /// `Debug` is written here; one of any other type is left to it as well.
    fn special(field: &Field) -> bool {
        let name = field.name();
        name == "message" || name.starts_with("r#") || name.starts_with("log.")
    }

    /// Lets `DefaultVisitor` write one field, at the place it would have had.
    fn delegate(&mut self, field: &Field, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        let mut visitor = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        record(&mut visitor);
        self.result = visitor.finish();
        // It writes the field (after a space if one came before), or skips `log.` metadata.
        self.is_empty &= field.name().starts_with("log.");
    }

    /// `name=value`, after a space if a field came before: `DefaultVisitor`'s bytes.
    fn write(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.result = self.pad().and_then(|()| {
            self.writer.write_str(field.name())?;
            self.writer.write_char('=')?;
            write!(self.writer, "{value:?}")
        });
    }

    /// `name=text`: `text` is already the bytes `Debug` would write.
    fn write_raw(&mut self, field: &Field, text: &str) {
        self.result = self.pad().and_then(|()| {
            self.writer.write_str(field.name())?;
            self.writer.write_char('=')?;
            self.writer.write_str(text)
        });
    }

    /// `name="value"` when `value`'s `Debug` escapes nothing: printable ASCII but `"` and `\`.
    fn write_str_field(&mut self, field: &Field, value: &str) {
        if !value
            .bytes()
            .all(|b| matches!(b, b' '..=b'~') && b != b'"' && b != b'\\')
        {
            return self.write(field, &value);
        }
        self.result = self.pad().and_then(|()| {
            self.writer.write_str(field.name())?;
            self.writer.write_str("=\"")?;
            self.writer.write_str(value)?;
            self.writer.write_char('"')
        });
    }

    /// The message, bare, its ANSI escapes neutralised as `DefaultVisitor` does.
    fn write_message(&mut self, value: &dyn fmt::Debug) {
        self.result = self.pad().and_then(|()| {
            if self.writer.sanitizes_ansi_escapes() {
                write!(Escaping(&mut self.writer), "{value:?}")
            } else {
                write!(self.writer, "{value:?}")
            }
        });
    }

    /// A message given as a `&str`: its bytes, as `DefaultVisitor` writes it, without
    /// `core::fmt`.
    fn write_message_str(&mut self, value: &str) {
        self.result = self.pad().and_then(|()| {
            if self.writer.sanitizes_ansi_escapes() {
                Escaping(&mut self.writer).write_str(value)
            } else {
                self.writer.write_str(value)
            }
        });
    }

    fn pad(&mut self) -> fmt::Result {
        if self.is_empty {
            self.is_empty = false;
            Ok(())
        } else {
            self.writer.write_char(' ')
        }
    }
}

impl Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        if field.name() == "message" {
            self.write_message_str(value);
        } else if Self::special(field) {
            self.delegate(field, |visitor| visitor.record_str(field, value));
        } else {
            self.write_str_field(field, value);
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.result.is_err() {
            return;
        }
        if Self::special(field) {
            self.delegate(field, |visitor| visitor.record_u64(field, value));
        } else {
            self.write_raw(field, itoa::Buffer::new().format(value));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.result.is_err() {
            return;
        }
        if Self::special(field) {
            self.delegate(field, |visitor| visitor.record_i64(field, value));
        } else {
            self.write_raw(field, itoa::Buffer::new().format(value));
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.result.is_err() {
            return;
        }
        if Self::special(field) || !debug_is_decimal(value) {
            self.record_debug(field, &value);
        } else {
            self.write_raw(field, ryu::Buffer::new().format_finite(value));
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.result.is_err() {
            return;
        }
        if Self::special(field) {
            self.delegate(field, |visitor| visitor.record_bool(field, value));
        } else {
            self.write_raw(field, if value { "true" } else { "false" });
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.result.is_err() {
            return;
        }
        self.delegate(field, |visitor| visitor.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        if field.name() == "message" {
            self.write_message(value);
        } else if Self::special(field) {
            self.delegate(field, |visitor| visitor.record_debug(field, value));
        } else {
            self.write(field, value);
        }
    }
}

/// tracing-subscriber's escaping of a message's terminal controls (ESC, BEL, BS, FF, DEL and
/// the C1 controls), with text that has none written at once rather than a character at a
/// time.
struct Escaping<'w, 'writer>(&'w mut Writer<'writer>);

impl fmt::Write for Escaping<'_, '_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        // 0xc2 leads the UTF-8 of U+0080 to U+00BF, the C1 controls among them.
        if !text
            .bytes()
            .any(|b| matches!(b, 0x1b | 0x07 | 0x08 | 0x0c | 0x7f | 0xc2))
        {
            return self.0.write_str(text);
        }
        for ch in text.chars() {
            match ch {
                '\x1b' => self.0.write_str("\\x1b")?,
                '\x07' => self.0.write_str("\\x07")?,
                '\x08' => self.0.write_str("\\x08")?,
                '\x0c' => self.0.write_str("\\x0c")?,
                '\x7f' => self.0.write_str("\\x7f")?,
                '\u{80}'..='\u{9f}' => write!(self.0, "\\u{{{:x}}}", u32::from(ch))?,
                _ => self.0.write_char(ch)?,
            }
        }
        Ok(())
    }
}

/// Whether `f64`'s `Debug` writes `value` in decimal notation (zero, or `1e-4 <= |value| <
/// 1e16`), where ryu's shortest digits, also in decimal there, are the same bytes. Outside
/// it (exponents, NaN, infinities) `Debug` writes it.
fn debug_is_decimal(value: f64) -> bool {
    value == 0.0 || (1e-4..1e16).contains(&value.abs())
}

/// tracing-subscriber's `SystemTime` timestamp, `2026-12-07T16:37:17.058410Z`, with its
/// digits written directly; a time before 1970 or after 9999 is left to `SystemTime`.
#[derive(Debug, Default, Clone, Copy)]
pub struct UtcMicros;

impl FormatTime for UtcMicros {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(since) => match rfc3339_micros(since.as_secs(), since.subsec_micros()) {
                Some(text) => w.write_str(text.as_str()),
                None => time::SystemTime.format_time(w),
            },
            Err(_) => time::SystemTime.format_time(w),
        }
    }
}

/// The 27 bytes of `YYYY-MM-DDTHH:MM:SS.ffffffZ` for `secs` after the epoch and `micros`;
/// `None` past the year 9999, where the format changes.
fn rfc3339_micros(secs: u64, micros: u32) -> Option<Stamp> {
    let days = i64::try_from(secs / 86_400).ok()?;
    let (year, month, day) = civil_from_days(days);
    if year > 9999 {
        return None;
    }
    let of_day = secs % 86_400;
    let mut stamp = Stamp(*b"0000-00-00T00:00:00.000000Z");
    let mut put = |at: usize, width: usize, mut value: u64| {
        for i in (at..at + width).rev() {
            stamp.0[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, u64::try_from(year).ok()?);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, of_day / 3600);
    put(14, 2, of_day / 60 % 60);
    put(17, 2, of_day % 60);
    put(20, 6, u64::from(micros));
    Some(stamp)
}

/// A timestamp's bytes, all ASCII digits and separators.
struct Stamp([u8; 27]);

impl Stamp {
    fn as_str(&self) -> &str {
        // Only ASCII is ever written into it.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

/// Year, month and day of the `days`th day after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, the proleptic Gregorian calendar).
fn civil_from_days(days: i64) -> (i64, u64, u64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month.unsigned_abs(), day.unsigned_abs())
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing::Level;
    use tracing_subscriber::fmt::MakeWriter;

    use super::{PlainFields, PlainFormat, UtcMicros, rfc3339_micros};
    use tracing_subscriber::fmt::format::Writer;
    use tracing_subscriber::fmt::time::{FormatTime, SystemTime};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;

        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    #[derive(Debug)]
    struct Failed(io::Error);

    impl std::fmt::Display for Failed {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("upstream \u{1b}[1mfailed")
        }
    }

    impl std::error::Error for Failed {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    /// Every kind of field timgate's lines carry, and the ones `DefaultFields` treats apart.
    fn events() {
        tracing::info!(spans = 0, "outside any span");
        let span = tracing::info_span!("drain", id = 7, name = "a b");
        let _entered = span.enter();
        tracing::info!(
            caller = "svc\u{1b}[31m \"x\"",
            app = 1_400_000_000_u64,
            api = %"v4/im_open_login_svc/account_import",
            outcome = "ok",
            status = Some(200_u16),
            error_code = -1_i64,
            request_id = Option::<&str>::None,
            attempts = 1_u32,
            reached_tencent = true,
            latency_ms = 0.123_456_f64,
            error = Some("bad\nline \u{85}"),
            "request"
        );
        tracing::warn!(r#type = "x", count = ?vec![1, 2], "a message with {} and \u{1b}[0m", 3);
        let failed = Failed(io::Error::other("reset by peer"));
        tracing::error!(
            error = &failed as &dyn std::error::Error,
            after = 1,
            "failed"
        );
        tracing::error!(
            first = 1.0e21_f64,
            error = &failed as &dyn std::error::Error
        );
        tracing::info!(log.target = "skipped", after = f64::NAN);
        tracing::debug!(alone = "no message");
        {
            let outer = tracing::debug_span!("outer");
            let _outer = outer.enter();
            let inner = tracing::trace_span!("inner", n = 2);
            let _inner = inner.enter();
            tracing::trace!(
                message = "as str \u{1b}[1m \u{9b} \u{7f}\u{7}\u{8}\u{c} é ©",
                n = 1
            );
            tracing::warn!("as {} \u{1b}[1m \u{85} é", "args");
        }
        tracing::info!(message = "explicit", x = 2.0_f64, y = ?'c');
        // Each side of where f64's `Debug` turns to exponents, and latencies as logged.
        tracing::info!(
            a = 1e-4_f64,
            b = 9.999e-5_f64,
            c = -0.0_f64,
            d = 9_999_999_999_999_998.0_f64,
            e = 1e16_f64,
            f = f64::NEG_INFINITY,
            g = 0.1_f64 + 0.2_f64,
            h = 12.345_678_f64,
            i = 60_000.0_f64,
            j = -1.5e-3_f64
        );
    }

    fn captured(plain: bool, ansi: bool) -> String {
        let buffer = Buffer::default();
        let builder = tracing_subscriber::fmt()
            .with_ansi(ansi)
            .with_writer(buffer.clone())
            .without_time()
            .with_max_level(Level::TRACE);
        if plain {
            tracing::subscriber::with_default(builder.fmt_fields(PlainFields).finish(), events);
        } else {
            tracing::subscriber::with_default(builder.finish(), events);
        }
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn plain_fields_write_what_default_fields_write() {
        for ansi in [false, true] {
            let (plain, default) = (captured(true, ansi), captured(false, ansi));
            assert_eq!(plain.lines().count(), 11, "{plain}");
            assert_eq!(plain, default, "colours {ansi}");
        }
        // The text log line as users and tests read it, to show what was compared.
        let line = captured(true, false);
        assert!(line.contains(" INFO drain{id=7 name=\"a b\"}: timgate::logfmt::tests: request caller=\"svc\\u{1b}[31m \\\"x\\\"\" app=1400000000 api=v4/im_open_login_svc/account_import outcome=\"ok\" status=200 error_code=-1 attempts=1 reached_tencent=true latency_ms=0.123456 error=\"bad\\nline \\u{85}\"\n"), "{line}");
    }

    /// A fixed timestamp, or a timer that fails.
    #[derive(Clone, Copy)]
    struct Fixed(bool);

    impl FormatTime for Fixed {
        fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
            if self.0 {
                w.write_str("2026-12-07T16:37:17.058410Z")
            } else {
                Err(std::fmt::Error)
            }
        }
    }

    /// The lines `events` leaves with `PlainFormat` and `PlainFields`, or with
    /// tracing-subscriber's `Format<Full>` and `DefaultFields`.
    fn lines(plain: bool, ansi: bool, timer: Fixed) -> String {
        let buffer = Buffer::default();
        let builder = tracing_subscriber::fmt()
            .with_ansi(ansi)
            .with_writer(buffer.clone())
            .with_timer(timer)
            .with_max_level(Level::TRACE);
        if plain {
            let builder = builder
                .fmt_fields(PlainFields)
                .event_format(PlainFormat::new(timer));
            tracing::subscriber::with_default(builder.finish(), events);
        } else {
            tracing::subscriber::with_default(builder.finish(), events);
        }
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn plain_format_writes_what_full_format_writes() {
        for ansi in [false, true] {
            for timer in [Fixed(true), Fixed(false)] {
                let (plain, full) = (lines(true, ansi, timer), lines(false, ansi, timer));
                assert_eq!(plain.lines().count(), 11, "{plain}");
                assert_eq!(plain, full, "colours {ansi}, timer {}", timer.0);
            }
        }
        // The text log line as users and tests read it, to show what was compared.
        let text = lines(true, false, Fixed(true));
        assert!(text.starts_with("2026-12-07T16:37:17.058410Z  INFO timgate::logfmt::tests: outside any span spans=0\n"), "{text}");
        assert!(text.contains("\n2026-12-07T16:37:17.058410Z  INFO drain{id=7 name=\"a b\"}: timgate::logfmt::tests: request caller="), "{text}");
        assert!(
            lines(true, false, Fixed(false))
                .starts_with("<unknown time>  INFO timgate::logfmt::tests: outside")
        );
        assert!(text.contains(" TRACE drain{id=7 name=\"a b\"}:outer:inner{n=2}: timgate::logfmt::tests: as str \\x1b[1m \\u{9b} \\x7f\\x07\\x08\\x0c é © n=1\n"), "{text}");
        assert!(
            text.contains(
                "  WARN drain{id=7 name=\"a b\"}:outer:inner{n=2}: timgate::logfmt::tests: as args \\x1b[1m \\u{85} é\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn timestamps_are_the_ones_system_time_writes() {
        let cases = [
            (0, 0, "1970-01-01T00:00:00.000000Z"),
            (951_782_400, 7, "2000-02-29T00:00:00.000007Z"),
            (1_796_000_000, 999_999, "2026-11-30T00:53:20.999999Z"),
            (4_107_542_399, 123_456, "2100-02-28T23:59:59.123456Z"),
            (253_402_300_799, 1, "9999-12-31T23:59:59.000001Z"),
        ];
        for (secs, micros, text) in cases {
            assert_eq!(rfc3339_micros(secs, micros).unwrap().as_str(), text);
        }
        assert!(rfc3339_micros(253_402_300_800, 0).is_none());
        // Against tracing-subscriber's own, now: equal up to the minute (both read the clock).
        let stamp = |timer: &dyn FormatTime| {
            let mut text = String::new();
            timer.format_time(&mut Writer::new(&mut text)).unwrap();
            text
        };
        let (theirs, ours) = (stamp(&SystemTime), stamp(&UtcMicros));
        assert_eq!(ours.len(), theirs.len(), "{ours} {theirs}");
        let minute = |t: &str| t[..16].to_owned();
        if minute(&ours) != minute(&theirs) {
            // The minute turned between the two readings: read again.
            let (theirs, ours) = (stamp(&SystemTime), stamp(&UtcMicros));
            assert_eq!(minute(&ours), minute(&theirs));
        }
    }
}
