//! The traffic layer's RED figures as OpenMetrics text, appended to the
//! agent's `/metrics`: per app, environment and release, requests by
//! status class, a duration histogram, requests in flight, connections
//! pinned, and the share of traffic each release takes. Counters start
//! from zero when the proxy process starts (Prometheus treats that as a
//! reset). Names are documented in `docs/api.md`.

use super::ProxyStatus;
use super::stats::BUCKETS_US;
use std::fmt::Write;

/// The families, without the closing `# EOF`.
pub fn encode(status: &ProxyStatus) -> String {
    let mut rows: Vec<(String, &super::BackendFigures)> = Vec::new();
    for route in &status.routes {
        let (app, env) = route.name.split_once('/').unwrap_or((&route.name, ""));
        for b in &route.backends {
            let labels = format!(
                "app=\"{}\",env=\"{}\",release=\"{}\"",
                escape(app),
                escape(env),
                escape(&b.release)
            );
            rows.push((labels, b));
        }
    }
    let mut out = String::new();
    let family = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
    };
    family(
        &mut out,
        "slipway_http_requests",
        "counter",
        "Responses the traffic layer sent, by status class (a 502/504 of its own is a 5xx).",
    );
    for (labels, b) in &rows {
        for (i, n) in b.responses.iter().enumerate() {
            let _ = writeln!(
                out,
                "slipway_http_requests_total{{{labels},class=\"{}xx\"}} {n}",
                i + 1
            );
        }
    }
    family(
        &mut out,
        "slipway_http_request_duration_seconds",
        "histogram",
        "Time from a request's arrival to the end of its response, through the traffic layer.",
    );
    for (labels, b) in &rows {
        let mut cumulative = 0;
        for (i, bound) in BUCKETS_US.iter().enumerate() {
            cumulative += b.duration_buckets.get(i).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "slipway_http_request_duration_seconds_bucket{{{labels},le=\"{}\"}} {cumulative}",
                *bound as f64 / 1e6
            );
        }
        let count: u64 = b.duration_buckets.iter().sum();
        let _ = writeln!(
            out,
            "slipway_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "slipway_http_request_duration_seconds_sum{{{labels}}} {}",
            b.duration_sum_us as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "slipway_http_request_duration_seconds_count{{{labels}}} {count}"
        );
    }
    family(
        &mut out,
        "slipway_http_requests_in_flight",
        "gauge",
        "Requests the release is answering now.",
    );
    for (labels, b) in &rows {
        let _ = writeln!(
            out,
            "slipway_http_requests_in_flight{{{labels}}} {}",
            b.in_flight
        );
    }
    family(
        &mut out,
        "slipway_traffic_connections_open",
        "gauge",
        "Upgraded (WebSocket) and TCP-mode connections pinned to the release.",
    );
    for (labels, b) in &rows {
        let _ = writeln!(
            out,
            "slipway_traffic_connections_open{{{labels}}} {}",
            b.open
        );
    }
    family(
        &mut out,
        "slipway_traffic_weight",
        "gauge",
        "The release's share of new requests (0: switched away from, draining).",
    );
    for (labels, b) in &rows {
        let _ = writeln!(out, "slipway_traffic_weight{{{labels}}} {}", b.weight);
    }
    out
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::{BackendFigures, Mode, RouteStatus};

    #[test]
    fn figures_become_labelled_families() {
        let mut buckets = vec![0; BUCKETS_US.len() + 1];
        buckets[3] = 2;
        buckets[5] = 1;
        let status = ProxyStatus {
            pid: 1,
            version: "0".into(),
            routes: vec![RouteStatus {
                name: "web/production".into(),
                listen: "127.0.0.1:80".parse().unwrap(),
                mode: Mode::Http,
                backends: vec![BackendFigures {
                    release: "1.2.0-7".into(),
                    addr: "127.0.0.1:4000".parse().unwrap(),
                    weight: 1,
                    in_flight: 2,
                    open: 0,
                    responses: [0, 2, 0, 0, 1],
                    duration_buckets: buckets,
                    duration_sum_us: 6_500,
                }],
            }],
        };
        let text = encode(&status);
        let labels = r#"app="web",env="production",release="1.2.0-7""#;
        for line in [
            format!("slipway_http_requests_total{{{labels},class=\"2xx\"}} 2"),
            format!("slipway_http_requests_total{{{labels},class=\"5xx\"}} 1"),
            format!("slipway_http_request_duration_seconds_bucket{{{labels},le=\"0.001\"}} 2"),
            format!("slipway_http_request_duration_seconds_bucket{{{labels},le=\"0.005\"}} 3"),
            format!("slipway_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} 3"),
            format!("slipway_http_request_duration_seconds_count{{{labels}}} 3"),
            format!("slipway_http_requests_in_flight{{{labels}}} 2"),
            format!("slipway_traffic_weight{{{labels}}} 1"),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }
}
