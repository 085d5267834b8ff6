//! Access logs of HTTP listeners (Envoy's `access_log` on the `HttpConnectionManager`, with the
//! file or stdout logger, a JSON or text format, and status and sampling filters), and of TCP
//! listeners (the `tcp_proxy` filter's: one line per connection, sampled, no status filter).
//!
//! ```yaml
//! http:
//!   route_table: main
//!   access_log:
//!     path: stdout           # stdout, stderr or a file (appended to, created if missing)
//!     format: json           # json (default), text (Envoy's default line), or { template: "…" }
//!     min_status: 400        # log only responses with this status or higher (default: all)
//!     sample: 0.1            # and of those, this fraction (default 1: every one)
//! ```
//!
//! A template uses Envoy's command operators (`%START_TIME%`, `%REQ(:METHOD)%`,
//! `%RESPONSE_CODE%`, …; [`Operator`] lists them); `%%` is a literal `%`.

use serde::{Deserialize, Serialize};

/// Where and how a listener logs its requests (HTTP) or connections (TCP).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    /// `stdout` (default), `stderr`, or a file path, opened for appending (created if missing).
    #[serde(default = "default_path")]
    pub path: String,
    /// The line's format. Default `json`.
    #[serde(default)]
    pub format: AccessLogFormat,
    /// Log only responses with at least this status (`400`: errors only). Default 0: all.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min_status: u16,
    /// The fraction of requests (passing `min_status`) logged, from 0 to 1. Default 1.
    #[serde(default = "default_sample")]
    pub sample: f64,
}

fn is_zero(n: &u16) -> bool {
    *n == 0
}

fn default_path() -> String {
    "stdout".into()
}

fn default_sample() -> f64 {
    1.0
}

impl Default for AccessLog {
    fn default() -> Self {
        AccessLog {
            path: default_path(),
            format: AccessLogFormat::default(),
            min_status: 0,
            sample: default_sample(),
        }
    }
}

/// An access log line's format: `json`, `text`, or `{ template: "…" }`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// One JSON object per line with every field (docs/operations.md lists them).
    #[default]
    Json,
    /// Envoy's default text line ([`ENVOY_DEFAULT_FORMAT`]).
    Text,
    /// A text line from a template of Envoy command operators.
    Template(String),
}

const FORMAT_FORMS: &str = "`json`, `text` or `{ template: \"…\" }`";

impl Serialize for AccessLogFormat {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            AccessLogFormat::Json => s.serialize_str("json"),
            AccessLogFormat::Text => s.serialize_str("text"),
            AccessLogFormat::Template(t) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("template", t)?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for AccessLogFormat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = AccessLogFormat;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(FORMAT_FORMS)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "json" => Ok(AccessLogFormat::Json),
                    "text" => Ok(AccessLogFormat::Text),
                    other => Err(E::custom(format!(
                        "unknown format `{other}`: expected {FORMAT_FORMS}"
                    ))),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut template = None;
                while let Some(k) = map.next_key::<String>()? {
                    if k != "template" || template.is_some() {
                        return Err(serde::de::Error::custom(format!(
                            "unexpected key `{k}`: expected {FORMAT_FORMS}"
                        )));
                    }
                    template = Some(map.next_value::<String>()?);
                }
                template
                    .map(AccessLogFormat::Template)
                    .ok_or_else(|| serde::de::Error::custom(format!("expected {FORMAT_FORMS}")))
            }
        }
        d.deserialize_any(V)
    }
}

/// Envoy's default access log format.
pub const ENVOY_DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"";

/// A piece of a compiled text template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Text copied as is.
    Literal(String),
    /// A value, truncated to `max` characters when set.
    Value {
        /// Which value.
        op: Operator,
        /// `%OP%:N` truncation.
        max: Option<usize>,
    },
}

/// The command operators a template may use (Envoy's names and meanings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operator {
    /// `%START_TIME%`: when the request head arrived (RFC 3339, milliseconds, UTC).
    StartTime,
    /// `%DURATION%`: milliseconds from the request head to the response's end.
    Duration,
    /// `%REQ(NAME)%` or `%REQ(NAME?ALT)%`: a request header (the first found), or a
    /// pseudo-header: `:method`, `:path`, `:authority`, `:scheme`. Names are lower case.
    Request(Vec<String>),
    /// `%RESP(NAME)%`: a response header (only what Sluice keeps: empty unless it is one the
    /// log records; kept for Envoy templates).
    Response(String),
    /// `%PROTOCOL%`: `HTTP/1.1`, `HTTP/2`.
    Protocol,
    /// `%RESPONSE_CODE%`.
    ResponseCode,
    /// `%RESPONSE_FLAGS%`: Envoy's short flags (`UF`, `UT`, `NR`, …; `-` for none).
    ResponseFlags,
    /// `%GRPC_STATUS_NUMBER%`: the gRPC status the response ended with.
    GrpcStatus,
    /// `%BYTES_RECEIVED%`: request body bytes.
    BytesReceived,
    /// `%BYTES_SENT%`: response body bytes.
    BytesSent,
    /// `%UPSTREAM_HOST%`: the endpoint that answered.
    UpstreamHost,
    /// `%UPSTREAM_CLUSTER%`.
    UpstreamCluster,
    /// `%UPSTREAM_REQUEST_ATTEMPT_COUNT%`.
    Attempts,
    /// `%ROUTE_NAME%`.
    RouteName,
    /// `%VIRTUAL_HOST%` (Sluice's).
    VirtualHost,
    /// `%DOWNSTREAM_REMOTE_ADDRESS%`.
    DownstreamRemoteAddress,
    /// `%DOWNSTREAM_LOCAL_ADDRESS%`.
    DownstreamLocalAddress,
    /// `%DOWNSTREAM_PEER_URI_SAN%`: the client certificate's SPIFFE ID.
    DownstreamPeerUriSan,
    /// `%TRACE_ID%`: the W3C trace id of the request.
    TraceId,
    /// `%LISTENER%` (Sluice's): the listener's name.
    Listener,
}

impl Operator {
    fn parse(name: &str, arg: Option<&str>) -> Result<Operator, String> {
        let no_arg = |op: Operator| match arg {
            None => Ok(op),
            Some(_) => Err(format!("`%{name}%` takes no argument")),
        };
        match name {
            "REQ" => {
                let Some(a) = arg.filter(|a| !a.is_empty()) else {
                    return Err("`%REQ(…)%` needs a header name".into());
                };
                let names: Vec<String> = a.split('?').map(|n| n.to_ascii_lowercase()).collect();
                for n in &names {
                    let pseudo = [":method", ":path", ":authority", ":scheme"];
                    if n.starts_with(':') && !pseudo.contains(&n.as_str()) {
                        return Err(format!(
                            "unknown pseudo-header `{n}` (use :method, :path, :authority or :scheme)"
                        ));
                    }
                    if !n.starts_with(':') && !crate::validate::is_token(n) {
                        return Err(format!("`{n}` is not a valid header name"));
                    }
                }
                Ok(Operator::Request(names))
            }
            "RESP" => match arg.filter(|a| !a.is_empty()) {
                Some(a) => Ok(Operator::Response(a.to_ascii_lowercase())),
                None => Err("`%RESP(…)%` needs a header name".into()),
            },
            "START_TIME" => no_arg(Operator::StartTime),
            "DURATION" => no_arg(Operator::Duration),
            "PROTOCOL" => no_arg(Operator::Protocol),
            "RESPONSE_CODE" => no_arg(Operator::ResponseCode),
            "RESPONSE_FLAGS" => no_arg(Operator::ResponseFlags),
            "GRPC_STATUS_NUMBER" | "GRPC_STATUS" => no_arg(Operator::GrpcStatus),
            "BYTES_RECEIVED" => no_arg(Operator::BytesReceived),
            "BYTES_SENT" => no_arg(Operator::BytesSent),
            "UPSTREAM_HOST" | "UPSTREAM_REMOTE_ADDRESS" => no_arg(Operator::UpstreamHost),
            "UPSTREAM_CLUSTER" => no_arg(Operator::UpstreamCluster),
            "UPSTREAM_REQUEST_ATTEMPT_COUNT" => no_arg(Operator::Attempts),
            "ROUTE_NAME" => no_arg(Operator::RouteName),
            "VIRTUAL_HOST" => no_arg(Operator::VirtualHost),
            "DOWNSTREAM_REMOTE_ADDRESS" => no_arg(Operator::DownstreamRemoteAddress),
            "DOWNSTREAM_LOCAL_ADDRESS" => no_arg(Operator::DownstreamLocalAddress),
            "DOWNSTREAM_PEER_URI_SAN" => no_arg(Operator::DownstreamPeerUriSan),
            "TRACE_ID" => no_arg(Operator::TraceId),
            "LISTENER" => no_arg(Operator::Listener),
            _ => Err(format!("unknown command operator `%{name}%`")),
        }
    }
}

impl AccessLogFormat {
    /// The compiled template of a text format (`None` for JSON).
    pub fn template(&self) -> Option<Result<Vec<Piece>, String>> {
        match self {
            AccessLogFormat::Json => None,
            AccessLogFormat::Text => Some(parse_template(ENVOY_DEFAULT_FORMAT)),
            AccessLogFormat::Template(t) => Some(parse_template(t)),
        }
    }
}

/// Compiles a template: literal text and `%OPERATOR%`, `%OPERATOR(ARG)%`, `%OPERATOR(ARG)%:N`
/// (at most N characters); `%%` is a literal `%`.
pub fn parse_template(t: &str) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut lit = String::new();
    let mut rest = t;
    while let Some(i) = rest.find('%') {
        lit.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('%') {
            lit.push('%');
            rest = r;
            continue;
        }
        let Some(end) = rest.find('%') else {
            return Err(format!(
                "unclosed `%` at `%{}` (write `%%` for a literal `%`)",
                rest.chars().take(20).collect::<String>()
            ));
        };
        let body = &rest[..end];
        rest = &rest[end + 1..];
        let (name, arg) = match body.split_once('(') {
            Some((n, a)) => match a.strip_suffix(')') {
                Some(a) => (n, Some(a)),
                None => return Err(format!("`%{body}%`: missing `)`")),
            },
            None => (body, None),
        };
        let op = Operator::parse(name, arg)?;
        let mut max = None;
        if let Some(r) = rest.strip_prefix(':') {
            let digits = r.len() - r.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            if digits > 0 {
                max = r[..digits].parse().ok();
                rest = &r[digits..];
            }
        }
        if !lit.is_empty() {
            out.push(Piece::Literal(std::mem::take(&mut lit)));
        }
        out.push(Piece::Value { op, max });
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        out.push(Piece::Literal(lit));
    }
    Ok(out)
}

/// Checks an access log's settings; errors carry the field under `p`.
pub(crate) fn check(p: &str, a: &AccessLog, out: &mut Vec<(String, String)>) {
    if a.path.is_empty() {
        out.push((
            format!("{p}.path"),
            "must be `stdout`, `stderr` or a file path".into(),
        ));
    }
    if !(0.0..=1.0).contains(&a.sample) || a.sample.is_nan() {
        out.push((
            format!("{p}.sample"),
            "must be between 0 and 1 (a fraction: 0.1 logs one request in ten)".into(),
        ));
    }
    if a.min_status > 599 {
        out.push((
            format!("{p}.min_status"),
            "must be a status code (at most 599)".into(),
        ));
    }
    if let Some(Err(e)) = a.format.template() {
        out.push((format!("{p}.format.template"), e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_compile_to_pieces_and_bad_ones_say_why() {
        let p = parse_template("%REQ(:METHOD)% %REQ(X-A?X-B)%:5 100%% %DURATION%ms").unwrap();
        assert_eq!(
            p,
            vec![
                Piece::Value {
                    op: Operator::Request(vec![":method".into()]),
                    max: None
                },
                Piece::Literal(" ".into()),
                Piece::Value {
                    op: Operator::Request(vec!["x-a".into(), "x-b".into()]),
                    max: Some(5)
                },
                Piece::Literal(" 100% ".into()),
                Piece::Value {
                    op: Operator::Duration,
                    max: None
                },
                Piece::Literal("ms".into()),
            ]
        );
        assert!(parse_template(ENVOY_DEFAULT_FORMAT).is_ok());
        for (bad, why) in [
            ("%NOPE%", "unknown command operator `%NOPE%`"),
            ("%REQ()%", "needs a header name"),
            ("%DURATION", "unclosed `%`"),
            ("%REQ(:bogus)%", "unknown pseudo-header"),
            ("%DURATION(x)%", "takes no argument"),
            ("%REQ(x-a%", "missing `)`"),
        ] {
            let e = parse_template(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
