//! gRPC over HTTP/2, the parts the gateway needs: status codes, message framing, deadlines,
//! and bodies that end with trailers.
//!
//! Unary calls only carry one length-prefixed message (`[compressed: u8][length: u32 BE]`),
//! so bodies here are a few `Bytes` chunks and, for responses, a trailer block.

use std::io::Read;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};

/// Header names the gateway reads or writes, parsed once.
pub mod names {
    use http::HeaderName;
    pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
    pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
    pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
    pub const GRPC_ENCODING: HeaderName = HeaderName::from_static("grpc-encoding");
    pub const SHOAL_VIEW: HeaderName = HeaderName::from_static("shoal-view");
    pub const SHOAL_RETRY: HeaderName = HeaderName::from_static("shoal-retry");
}

/// The gRPC status codes (numbering and names as in grpc's `status.proto`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    pub const ALL: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    /// The code for a `grpc-status` value; anything unknown is UNKNOWN (as grpc does).
    pub fn from_u32(value: u32) -> Code {
        Code::ALL
            .get(value as usize)
            .copied()
            .unwrap_or(Code::Unknown)
    }

    /// The upper-case name clients print (`grpc.StatusCode.X.name`).
    pub fn name(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::OutOfRange => "OUT_OF_RANGE",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::DataLoss => "DATA_LOSS",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    /// The gRPC code for a non-200 HTTP status of a peer (gRPC's "HTTP to gRPC" mapping).
    pub fn from_http(status: u16) -> Code {
        match status {
            400 => Code::Internal,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::Unimplemented,
            429 | 502..=504 => Code::Unavailable,
            _ => Code::Unknown,
        }
    }
}

/// A status with its message, as sent in `grpc-status` / `grpc-message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    pub message: String,
}

impl Status {
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        Status {
            code,
            message: message.into(),
        }
    }

    /// The status as trailers (or as the headers of a trailers-only response).
    pub fn to_headers(&self, map: &mut HeaderMap) {
        map.insert(names::GRPC_STATUS, HeaderValue::from(self.code as u16));
        if !self.message.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&percent_encode(&self.message)) {
                map.insert(names::GRPC_MESSAGE, v);
            }
        }
    }

    /// Read a peer's status from trailers (or trailers-only headers); None if absent.
    pub fn from_headers(map: &HeaderMap) -> Option<Status> {
        let code = map
            .get(names::GRPC_STATUS)?
            .to_str()
            .ok()?
            .trim()
            .parse::<u32>()
            .ok()?;
        let message = map
            .get(names::GRPC_MESSAGE)
            .map(|v| percent_decode(v.as_bytes()))
            .unwrap_or_default();
        Some(Status::new(Code::from_u32(code), message))
    }
}

/// Percent-encode a status message as the gRPC spec asks: bytes outside 0x20..=0x7E, and
/// `%` itself, become `%XX` (of the UTF-8 encoding).
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if (0x20..=0x7E).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decode a percent-encoded `grpc-message` (invalid escapes are kept as they are).
pub fn percent_decode(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' && i + 2 < raw.len() {
            let hex = std::str::from_utf8(&raw[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(b) = hex {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why a request body is not one well-formed gRPC message.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("request body is shorter than its gRPC frame header")]
    Short,
    #[error("request body does not hold exactly one gRPC message")]
    Length,
    #[error("compressed request without a grpc-encoding")]
    NoEncoding,
    #[error("unsupported grpc-encoding {0}")]
    Encoding(String),
    #[error("compressed request does not decompress: {0}")]
    Corrupt(String),
    #[error("request of {0} bytes is over the limit of {1}")]
    TooLarge(usize, usize),
}

/// The one message of a unary call's body, decompressed (gzip/deflate) when flagged.
///
/// `encoding` is the request's `grpc-encoding` header; `max` bounds the decompressed size.
pub fn unary_message(
    body: &Bytes,
    encoding: Option<&str>,
    max: usize,
) -> Result<Bytes, FrameError> {
    if body.len() < 5 {
        return Err(FrameError::Short);
    }
    let compressed = body[0] == 1;
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if body.len() - 5 != len {
        return Err(FrameError::Length);
    }
    let msg = body.slice(5..);
    if !compressed {
        return Ok(msg);
    }
    let mut out = Vec::new();
    let limit = (max as u64).saturating_add(1);
    let read = match encoding.map(str::trim) {
        None | Some("identity") | Some("") => return Err(FrameError::NoEncoding),
        Some("gzip") => flate2::read::GzDecoder::new(&msg[..])
            .take(limit)
            .read_to_end(&mut out),
        Some("deflate") => flate2::read::ZlibDecoder::new(&msg[..])
            .take(limit)
            .read_to_end(&mut out),
        Some(other) => return Err(FrameError::Encoding(other.to_string())),
    };
    read.map_err(|e| FrameError::Corrupt(e.to_string()))?;
    if out.len() > max {
        return Err(FrameError::TooLarge(out.len(), max));
    }
    Ok(Bytes::from(out))
}

/// The 5-byte header of an uncompressed message of `len` bytes.
pub fn frame_header(len: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(5);
    b.put_u8(0);
    b.put_u32(len as u32);
    b.freeze()
}

/// One message framed in a single buffer (small messages the gateway builds itself).
pub fn frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.put_u8(0);
    b.put_u32(msg.len() as u32);
    b.put_slice(msg);
    b.freeze()
}

/// Parse a `grpc-timeout` value (`1-8 digits` + `H M S m u n`).
pub fn parse_timeout(value: &str) -> Option<Duration> {
    let value = value.trim();
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A `grpc-timeout` value for `d` (at most 8 digits, in the finest unit that fits).
pub fn format_timeout(d: Duration) -> String {
    let micros = d.as_micros();
    if micros < 100_000_000 {
        return format!("{}u", micros.max(1));
    }
    let millis = d.as_millis();
    if millis < 100_000_000 {
        return format!("{millis}m");
    }
    format!("{}S", d.as_secs().min(99_999_999))
}

/// Read a whole body, giving its flow-control window back as it goes. `Ok(None)` when it is
/// longer than `limit` bytes (reading stops there). One chunk is returned without a copy.
pub async fn collect(body: &mut h2::RecvStream, limit: usize) -> Result<Option<Bytes>, h2::Error> {
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        let have = first.as_ref().map_or(0, Bytes::len) + rest.len();
        if have + chunk.len() > limit {
            return Ok(None);
        }
        match &first {
            None => first = Some(chunk),
            Some(f) => {
                if rest.is_empty() {
                    rest.extend_from_slice(f);
                }
                rest.extend_from_slice(&chunk);
            }
        }
    }
    Ok(Some(if rest.is_empty() {
        first.unwrap_or_default()
    } else {
        rest.freeze()
    }))
}

/// The response headers every gRPC answer starts with.
pub fn response_headers(map: &mut HeaderMap) {
    map.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_values_are_unknown() {
        for c in Code::ALL {
            assert_eq!(Code::from_u32(c as u32), c);
        }
        assert_eq!(Code::from_u32(99), Code::Unknown);
        assert_eq!(Code::Unauthenticated.name(), "UNAUTHENTICATED");
    }

    #[test]
    fn messages_are_percent_encoded_and_decoded() {
        let text = "model acme/churn has no alias 'x%y' — über\n";
        let enc = percent_encode(text);
        assert!(enc.bytes().all(|b| (0x20..=0x7E).contains(&b)));
        assert!(enc.contains("%25"));
        assert_eq!(percent_decode(enc.as_bytes()), text);
        assert_eq!(percent_decode(b"50%"), "50%");
        assert_eq!(percent_decode(b"%zz"), "%zz");
    }

    #[test]
    fn status_survives_headers() {
        let s = Status::new(Code::NotFound, "unknown model a/b");
        let mut h = HeaderMap::new();
        s.to_headers(&mut h);
        assert_eq!(Status::from_headers(&h), Some(s));
        assert_eq!(Status::from_headers(&HeaderMap::new()), None);
    }

    #[test]
    fn one_message_is_unframed() {
        let body = frame(b"hello");
        assert_eq!(
            unary_message(&body, None, 100).unwrap(),
            Bytes::from_static(b"hello")
        );
        assert_eq!(
            unary_message(&Bytes::from_static(b"\0\0"), None, 100),
            Err(FrameError::Short)
        );
        let mut two = BytesMut::from(&body[..]);
        two.extend_from_slice(&body);
        assert_eq!(
            unary_message(&two.freeze(), None, 100),
            Err(FrameError::Length)
        );
    }

    #[test]
    fn gzip_messages_are_decompressed_within_the_limit() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&[7u8; 1000]).unwrap();
        let z = enc.finish().unwrap();
        let mut body = BytesMut::new();
        body.put_u8(1);
        body.put_u32(z.len() as u32);
        body.put_slice(&z);
        let body = body.freeze();
        assert_eq!(
            unary_message(&body, Some("gzip"), 1000).unwrap().len(),
            1000
        );
        assert_eq!(
            unary_message(&body, Some("gzip"), 999),
            Err(FrameError::TooLarge(1000, 999))
        );
        assert_eq!(
            unary_message(&body, None, 1000),
            Err(FrameError::NoEncoding)
        );
        assert!(matches!(
            unary_message(&body, Some("snappy"), 1000),
            Err(FrameError::Encoding(_))
        ));
    }

    #[test]
    fn timeouts_parse_and_format() {
        assert_eq!(parse_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout("5"), None);
        assert_eq!(parse_timeout("123456789S"), None);
        assert_eq!(parse_timeout("-1S"), None);
        for d in [
            Duration::from_micros(1),
            Duration::from_millis(1500),
            Duration::from_secs(30),
            Duration::from_secs(86400 * 365),
        ] {
            let back = parse_timeout(&format_timeout(d)).unwrap();
            assert!(
                back <= d && d - back < Duration::from_secs(1),
                "{d:?} -> {back:?}"
            );
        }
    }
}
