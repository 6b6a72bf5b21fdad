//! The head of a request the hand-written HTTP/1.1 lane takes: parsed with
//! httparse into offsets of the read buffer ([`parse`]), turned into an
//! `http::Request` only when the service's fast lane passes on it
//! ([`Head::into_request`]), and offered to that lane as a
//! [`PlainRequest`] borrowing the bytes read.

use super::{MAX_BODY, MAX_HEAD, MAX_HEADERS};
use crate::http1_fields::{decimal, has_token};
use axum::body::Body;
use axum::extract::Request;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri, Version};
use std::ops::Range;

/// A request head this module takes, as offsets into the read buffer.
pub(super) struct Head {
    /// Bytes of the head, up to and including its blank line.
    pub(super) len: usize,
    method: Method,
    target: Range<usize>,
    /// Each header's name and value.
    headers: Vec<(Range<usize>, Range<usize>)>,
    pub(super) body_len: usize,
    /// The request asked to close the connection after its answer.
    pub(super) close: bool,
}

pub(super) enum Parse {
    Plain(Head),
    Partial,
    /// Malformed, or a request hyper must answer.
    Other,
}

pub(super) fn parse(buf: &[u8]) -> Parse {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut slots);
    let len = match request.parse(buf) {
        // A whole head larger than what is taken here (one read may bring
        // one in, after a large body) goes to hyper too, which refuses a
        // target or a name too long for `http` as before.
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => return Parse::Other,
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parse::Partial,
        Err(_) => return Parse::Other,
    };
    let offset = |part: &[u8]| {
        let start = part.as_ptr() as usize - buf.as_ptr() as usize;
        start..start + part.len()
    };
    let (Some(method), Some(target), Some(1)) = (request.method, request.path, request.version)
    else {
        return Parse::Other;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parse::Other;
    };
    if method == Method::HEAD || method == Method::CONNECT || !target.starts_with('/') {
        return Parse::Other;
    }
    let mut head = Head {
        len,
        method,
        target: offset(target.as_bytes()),
        headers: Vec::with_capacity(request.headers.len()),
        body_len: 0,
        close: false,
    };
    let mut length_seen = false;
    for h in request.headers.iter() {
        // The names that decide the framing, compared as bytes: a request
        // the fast lane takes never builds a `HeaderName` (httparse has
        // checked that names are tokens, which is what `HeaderName` takes).
        let name = h.name.as_bytes();
        let is = |lower: &str| name.eq_ignore_ascii_case(lower.as_bytes());
        match name.len() {
            14 if is("content-length") => {
                match decimal(h.value).and_then(|n| usize::try_from(n).ok()) {
                    Some(n) if !length_seen && n <= MAX_BODY => head.body_len = n,
                    _ => return Parse::Other,
                }
                length_seen = true;
            }
            17 if is("transfer-encoding") => return Parse::Other,
            6 if is("expect") => return Parse::Other,
            7 if is("upgrade") => return Parse::Other,
            10 if is("connection") => {
                if has_token(h.value, "upgrade") {
                    return Parse::Other;
                }
                head.close |= has_token(h.value, "close");
            }
            _ => {}
        }
        head.headers.push((offset(name), offset(h.value)));
    }
    Parse::Plain(head)
}

impl Head {
    /// The request made of its head and body (`taken`, split off the read
    /// buffer); or, when its target or a header is one `http` refuses, the
    /// bytes back.
    pub(super) fn into_request(self, taken: Bytes) -> Result<Request, Bytes> {
        let Ok(uri) = Uri::from_maybe_shared(taken.slice(self.target)) else {
            return Err(taken);
        };
        let mut headers = HeaderMap::with_capacity(self.headers.len());
        for (name, value) in self.headers {
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(&taken[name]),
                HeaderValue::from_maybe_shared(taken.slice(value)),
            ) else {
                return Err(taken);
            };
            headers.append(name, value);
        }
        let body = if self.body_len == 0 {
            Body::empty()
        } else {
            Body::from(taken.slice(self.len..))
        };
        let mut request = Request::new(body);
        *request.method_mut() = self.method;
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = headers;
        Ok(request)
    }
}

/// A plain request as read, offered to the service's [`FastLane`] before it
/// becomes an `http::Request`: its method, target, headers by name and its
/// whole body, all borrowed from the bytes read.
pub struct PlainRequest<'a> {
    pub(super) head: &'a Head,
    pub(super) bytes: &'a Bytes,
}

impl PlainRequest<'_> {
    /// The method (never `HEAD` or `CONNECT`).
    pub fn method(&self) -> &Method {
        &self.head.method
    }

    /// The request target, in origin form (it starts with `/`), as sent:
    /// bytes httparse accepts, which `http::Uri` may still refuse.
    pub fn target(&self) -> &[u8] {
        &self.bytes[self.head.target.clone()]
    }

    /// The first value of the header `lower` (a lowercase name), as sent:
    /// bytes `http::HeaderValue` accepts (httparse checked them).
    pub fn header(&self, lower: &str) -> Option<Bytes> {
        self.head
            .headers
            .iter()
            .find(|(name, _)| self.bytes[name.clone()].eq_ignore_ascii_case(lower.as_bytes()))
            .map(|(_, value)| self.bytes.slice(value.clone()))
    }

    /// The whole body (empty without `Content-Length`).
    pub fn body(&self) -> Bytes {
        self.bytes.slice(self.head.len..)
    }
}
