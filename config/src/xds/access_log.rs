//! An HTTP listener's `access_log` ↔ the `HttpConnectionManager`'s `access_log`: Envoy's file
//! logger (`envoy.access_loggers.file`) or stdout/stderr loggers, a `SubstitutionFormatString`
//! (JSON or a text template), and a status-code filter and runtime sampling filter (`AndFilter`
//! when both).

use super::value::{any, unany};
use super::{FieldError, Fr};
use crate::{AccessLog, AccessLogFormat, ENVOY_DEFAULT_FORMAT};
use envoy_types::pb::envoy::config::accesslog::v3::{
    self as pb, AccessLogFilter, AndFilter, ComparisonFilter, RuntimeFilter, StatusCodeFilter,
    access_log_filter::FilterSpecifier, comparison_filter,
};
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, RuntimeUInt32, SubstitutionFormatString, data_source, substitution_format_string,
};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{
    FileAccessLog, file_access_log,
};
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::{
    StderrAccessLog, StdoutAccessLog, stderr_access_log, stdout_access_log,
};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};

const FILE: &str = "envoy.access_loggers.file";
const STDOUT: &str = "envoy.access_loggers.stdout";
const STDERR: &str = "envoy.access_loggers.stderr";

/// The JSON line's keys as Envoy command operators (what an Envoy would log under them).
const JSON_KEYS: [(&str, &str); 24] = [
    ("start_time", "%START_TIME%"),
    ("duration_ms", "%DURATION%"),
    ("listener", "%LISTENER%"),
    ("protocol", "%PROTOCOL%"),
    ("method", "%REQ(:METHOD)%"),
    ("scheme", "%REQ(:SCHEME)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("path", "%REQ(:PATH)%"),
    ("status", "%RESPONSE_CODE%"),
    ("grpc_status", "%GRPC_STATUS_NUMBER%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("virtual_host", "%VIRTUAL_HOST%"),
    ("route", "%ROUTE_NAME%"),
    ("cluster", "%UPSTREAM_CLUSTER%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("attempts", "%UPSTREAM_REQUEST_ATTEMPT_COUNT%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("trace_id", "%TRACE_ID%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_peer_identity", "%DOWNSTREAM_PEER_URI_SAN%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
];

/// The model's access log as Envoy's.
pub(crate) fn to_pb(a: &AccessLog) -> pb::AccessLog {
    let format = match &a.format {
        AccessLogFormat::Json => substitution_format_string::Format::JsonFormat(Struct {
            fields: JSON_KEYS
                .iter()
                .map(|(k, op)| {
                    (
                        k.to_string(),
                        Value {
                            kind: Some(Kind::StringValue(op.to_string())),
                        },
                    )
                })
                .collect(),
        }),
        AccessLogFormat::Text => text(ENVOY_DEFAULT_FORMAT),
        AccessLogFormat::Template(t) => text(t),
    };
    let log_format = SubstitutionFormatString {
        format: Some(format),
        ..Default::default()
    };
    let (name, config) = match a.path.as_str() {
        "stdout" | "/dev/stdout" => (
            STDOUT,
            any(&StdoutAccessLog {
                access_log_format: Some(stdout_access_log::AccessLogFormat::LogFormat(log_format)),
            }),
        ),
        "stderr" | "/dev/stderr" => (
            STDERR,
            any(&StderrAccessLog {
                access_log_format: Some(stderr_access_log::AccessLogFormat::LogFormat(log_format)),
            }),
        ),
        path => (
            FILE,
            any(&FileAccessLog {
                path: path.to_string(),
                access_log_format: Some(file_access_log::AccessLogFormat::LogFormat(log_format)),
            }),
        ),
    };
    let mut filters = Vec::new();
    if a.min_status > 0 {
        filters.push(FilterSpecifier::StatusCodeFilter(StatusCodeFilter {
            comparison: Some(ComparisonFilter {
                op: comparison_filter::Op::Ge as i32,
                value: Some(RuntimeUInt32 {
                    default_value: u32::from(a.min_status),
                    runtime_key: String::new(),
                }),
            }),
        }));
    }
    if a.sample < 1.0 {
        filters.push(FilterSpecifier::RuntimeFilter(RuntimeFilter {
            runtime_key: String::new(),
            percent_sampled: Some(FractionalPercent {
                numerator: (a.sample * 1_000_000.0).round() as u32,
                denominator: fractional_percent::DenominatorType::Million as i32,
            }),
            use_independent_randomness: false,
        }));
    }
    let filter = match filters.len() {
        0 => None,
        1 => filters.pop().map(|f| AccessLogFilter {
            filter_specifier: Some(f),
        }),
        _ => Some(AccessLogFilter {
            filter_specifier: Some(FilterSpecifier::AndFilter(AndFilter {
                filters: filters
                    .into_iter()
                    .map(|f| AccessLogFilter {
                        filter_specifier: Some(f),
                    })
                    .collect(),
            })),
        }),
    };
    pb::AccessLog {
        name: name.to_string(),
        filter,
        config_type: Some(pb::access_log::ConfigType::TypedConfig(config)),
    }
}

/// A text format as Envoy wants it (ending in a newline).
fn text(t: &str) -> substitution_format_string::Format {
    substitution_format_string::Format::TextFormatSource(DataSource {
        specifier: Some(data_source::Specifier::InlineString(format!("{t}\n"))),
        ..Default::default()
    })
}

/// Envoy's access logs as the model's (at most one; `p` is the field path of the list).
pub(crate) fn from_pb(logs: &[pb::AccessLog], p: &str) -> Fr<Option<AccessLog>> {
    let Some(log) = logs.first() else {
        return Ok(None);
    };
    if logs.len() > 1 {
        return Err(FieldError::new(
            format!("{p}[1]"),
            "one access log per listener is supported",
        ));
    }
    let p = format!("{p}[0]");
    let Some(pb::access_log::ConfigType::TypedConfig(config)) = &log.config_type else {
        return Err(FieldError::new(
            format!("{p}.typed_config"),
            "is required (a file, stdout or stderr access logger)",
        ));
    };
    let cp = format!("{p}.typed_config");
    let (path, format) = if config.type_url == <FileAccessLog as prost::Name>::type_url() {
        let f: FileAccessLog = unany(config, &cp)?;
        #[allow(deprecated)]
        let format = match f.access_log_format {
            None => None,
            Some(file_access_log::AccessLogFormat::LogFormat(s)) => Some(s),
            Some(file_access_log::AccessLogFormat::Format(t)) => Some(SubstitutionFormatString {
                format: Some(substitution_format_string::Format::TextFormat(t)),
                ..Default::default()
            }),
            Some(file_access_log::AccessLogFormat::JsonFormat(j)) => {
                Some(SubstitutionFormatString {
                    format: Some(substitution_format_string::Format::JsonFormat(j)),
                    ..Default::default()
                })
            }
            Some(_) => {
                return Err(FieldError::new(
                    format!("{cp}.access_log_format"),
                    "unsupported format (use log_format)",
                ));
            }
        };
        (f.path, format)
    } else if config.type_url == <StdoutAccessLog as prost::Name>::type_url() {
        let f: StdoutAccessLog = unany(config, &cp)?;
        let format = f
            .access_log_format
            .map(|stdout_access_log::AccessLogFormat::LogFormat(s)| s);
        ("stdout".to_string(), format)
    } else if config.type_url == <StderrAccessLog as prost::Name>::type_url() {
        let f: StderrAccessLog = unany(config, &cp)?;
        let format = f
            .access_log_format
            .map(|stderr_access_log::AccessLogFormat::LogFormat(s)| s);
        ("stderr".to_string(), format)
    } else {
        return Err(FieldError::new(
            cp,
            format!(
                "unsupported access logger `{}` (file, stdout and stderr are supported)",
                config.type_url
            ),
        ));
    };
    let format = match format.and_then(|f| f.format) {
        None => AccessLogFormat::Text,
        Some(substitution_format_string::Format::JsonFormat(_)) => AccessLogFormat::Json,
        #[allow(deprecated)]
        Some(substitution_format_string::Format::TextFormat(t)) => template(&t),
        Some(substitution_format_string::Format::TextFormatSource(DataSource {
            specifier: Some(data_source::Specifier::InlineString(t)),
            ..
        })) => template(&t),
        Some(_) => {
            return Err(FieldError::new(
                format!("{cp}.log_format.text_format_source"),
                "only an inline string is supported",
            ));
        }
    };
    let mut a = AccessLog {
        path,
        format,
        ..AccessLog::default()
    };
    if let Some(f) = &log.filter {
        filter(f, &format!("{p}.filter"), &mut a)?;
    }
    Ok(Some(a))
}

/// A template as the model holds it (Envoy's trailing newline removed; Envoy's default format
/// is `text`).
fn template(t: &str) -> AccessLogFormat {
    let t = t.strip_suffix('\n').unwrap_or(t);
    if t == ENVOY_DEFAULT_FORMAT {
        AccessLogFormat::Text
    } else {
        AccessLogFormat::Template(t.to_string())
    }
}

/// Applies a status-code (`>=`) or runtime sampling filter, or an `AndFilter` of them.
fn filter(f: &AccessLogFilter, p: &str, a: &mut AccessLog) -> Fr<()> {
    match &f.filter_specifier {
        Some(FilterSpecifier::StatusCodeFilter(s)) => {
            let c = s.comparison.as_ref();
            let ge = c.is_some_and(|c| c.op == comparison_filter::Op::Ge as i32);
            let value = c.and_then(|c| c.value.as_ref()).map(|v| v.default_value);
            match (ge, value.and_then(|v| u16::try_from(v).ok())) {
                (true, Some(v)) => a.min_status = v,
                _ => {
                    return Err(FieldError::new(
                        format!("{p}.status_code_filter.comparison"),
                        "only `GE` with a value is supported",
                    ));
                }
            }
        }
        Some(FilterSpecifier::RuntimeFilter(r)) => {
            let Some(fp) = &r.percent_sampled else {
                return Err(FieldError::new(
                    format!("{p}.runtime_filter.percent_sampled"),
                    "is required",
                ));
            };
            use fractional_percent::DenominatorType as D;
            let denominator = match D::try_from(fp.denominator) {
                Ok(D::Hundred) => 100.0,
                Ok(D::TenThousand) => 10_000.0,
                Ok(D::Million) => 1_000_000.0,
                Err(_) => {
                    return Err(FieldError::new(
                        format!("{p}.runtime_filter.percent_sampled.denominator"),
                        "unknown denominator",
                    ));
                }
            };
            a.sample = (f64::from(fp.numerator) / denominator).min(1.0);
        }
        Some(FilterSpecifier::AndFilter(and)) => {
            for (i, f) in and.filters.iter().enumerate() {
                filter(f, &format!("{p}.and_filter.filters[{i}]"), a)?;
            }
        }
        _ => {
            return Err(FieldError::new(
                p,
                "unsupported filter (status_code_filter with GE, runtime_filter and and_filter are supported)",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(config: envoy_types::pb::google::protobuf::Any) -> pb::AccessLog {
        pb::AccessLog {
            name: "x".into(),
            filter: None,
            config_type: Some(pb::access_log::ConfigType::TypedConfig(config)),
        }
    }

    #[test]
    fn unsupported_loggers_filters_and_lists_are_errors_naming_the_field() {
        let grpc = envoy_types::pb::google::protobuf::Any {
            type_url: "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig".into(),
            value: Vec::new(),
        };
        let e = from_pb(&[log(grpc)], "hcm.access_log").unwrap_err();
        assert_eq!(e.field, "hcm.access_log[0].typed_config");
        assert!(e.message.contains("unsupported access logger"), "{e:?}");

        let file = any(&FileAccessLog {
            path: "/tmp/a".into(),
            access_log_format: None,
        });
        let e = from_pb(&[log(file.clone()), log(file.clone())], "a").unwrap_err();
        assert_eq!(e.field, "a[1]");

        let mut l = log(file);
        l.filter = Some(AccessLogFilter {
            filter_specifier: Some(FilterSpecifier::StatusCodeFilter(StatusCodeFilter {
                comparison: Some(ComparisonFilter {
                    op: comparison_filter::Op::Eq as i32,
                    value: None,
                }),
            })),
        });
        let e = from_pb(&[l], "a").unwrap_err();
        assert_eq!(e.field, "a[0].filter.status_code_filter.comparison");
    }

    #[test]
    fn every_setting_survives_the_round_trip() {
        for path in ["stdout", "stderr", "/var/log/a.log"] {
            for format in [
                AccessLogFormat::Json,
                AccessLogFormat::Text,
                AccessLogFormat::Template("%DURATION%".into()),
            ] {
                for (min_status, sample) in [(0, 1.0), (500, 1.0), (0, 0.25), (400, 0.001)] {
                    let a = AccessLog {
                        path: path.into(),
                        format: format.clone(),
                        min_status,
                        sample,
                    };
                    assert_eq!(from_pb(&[to_pb(&a)], "a").unwrap(), Some(a));
                }
            }
        }
    }
}
