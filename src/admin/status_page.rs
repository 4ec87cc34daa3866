//! The status page, `GET /` on the admin listener: every upstream and backend at a glance, for
//! a person. One HTML document with its CSS inline (light and dark), charts drawn on the server
//! as inline SVG, no script and no external asset; it reloads itself every five seconds.
//!
//! Per backend: its state in words (healthy; ejected and for how long yet; half-open; down by
//! its active check; drained; not answering), where it came from (static, or its `dns:`/`srv:`
//! entry and SRV tier), a bar per five seconds of the last five minutes (responses, 5xx
//! responses, failures) and its failures by kind over that span and since start. Per upstream:
//! the same chart summed, the use of its retry budget, its discovery entries. Then the routes'
//! request counts, and the configuration's reloads.
//!
//! The recent counts come from `history` (sampled off the request path); everything else is
//! read from the same state `/status` reads. Every name that comes from the configuration, DNS
//! or an error message is escaped.

use std::fmt::Write;
use std::time::Duration;

use crate::error_page::escape_html as esc;
use crate::failure::{FailureKind, Source};
use crate::history::{Bar, Recent, SLOT, SLOTS};
use crate::state::Shared;
use crate::upstream::Pool;
use crate::upstream::backend::Backend;
use crate::upstream::budget::{self, Usage};
use crate::upstream::health::State;

/// Seconds between the page's own reloads.
pub(crate) const REFRESH_SECONDS: u32 = 5;

const CSS: &str = "\
:root{color-scheme:light dark;--bg:#f6f6f4;--fg:#1c1c1f;--mute:#6a6a72;--card:#fff;--line:#e3e3df;\
--ok:#25884d;--okbg:#e1f3e7;--warn:#a86f00;--warnbg:#fbefd3;--bad:#cc3a2f;--badbg:#fbe2df;--bar:#3f9c63}\
@media (prefers-color-scheme:dark){:root{--bg:#141416;--fg:#ececf0;--mute:#9b9ba4;--card:#1e1e22;\
--line:#34343b;--ok:#5ccf8a;--okbg:#17331f;--warn:#e6b34a;--warnbg:#3a2e10;--bad:#ff7468;--badbg:#45201c;--bar:#4cbf7a}}\
*{box-sizing:border-box}\
body{margin:0;padding:1.25rem 1.5rem;background:var(--bg);color:var(--fg);\
font:14px/1.45 system-ui,-apple-system,\"Segoe UI\",Roboto,sans-serif}\
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:.25rem 1rem}\
h1{font-size:1.35rem;margin:0}h2{font-size:1.1rem;margin:0 0 .6rem}\
.sub{color:var(--mute);font-size:.85em;font-weight:400}\
section{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:1rem 1.2rem;margin:1rem 0;overflow-x:auto}\
table{border-collapse:collapse;width:100%}\
th,td{text-align:left;padding:.45rem .6rem .45rem 0;border-top:1px solid var(--line);vertical-align:top}\
th{color:var(--mute);font-size:.75em;font-weight:600;text-transform:uppercase;letter-spacing:.04em;border-top:0}\
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}\
code{font:12.5px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}\
.badge{display:inline-block;padding:.05rem .55rem;border-radius:99px;font-weight:600;font-size:.85em;white-space:nowrap;margin:0 .2rem .2rem 0}\
.ok{background:var(--okbg);color:var(--ok)}.warn{background:var(--warnbg);color:var(--warn)}.bad{background:var(--badbg);color:var(--bad)}\
.summary{display:flex;flex-wrap:wrap;gap:.5rem 2rem;margin-bottom:.6rem}\
.summary div{min-width:14rem}\
ul{list-style:none;margin:0;padding:0}li{white-space:nowrap}\
b{font-variant-numeric:tabular-nums}\
svg{display:block}svg .r{fill:var(--bar)}svg .e{fill:var(--warn)}svg .f{fill:var(--bad)}\
svg .a{stroke:var(--line)}svg .t{fill:var(--line)}\
svg .sr{stroke:var(--bar)}svg .se{stroke:var(--warn)}svg .sf{stroke:var(--bad)}\
.key i{display:inline-block;width:.7em;height:.7em;border-radius:2px;margin:0 .25em 0 .6em}\
.key .r{background:var(--bar)}.key .e{background:var(--warn)}.key .f{background:var(--bad)}\
footer{color:var(--mute);font-size:.85em}";

/// The page, as it is now.
pub(crate) fn render(shared: &Shared) -> String {
    let snapshot = shared.current();
    let mut out = String::with_capacity(8 * 1024);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"color-scheme\" content=\"light dark\">\n\
         <title>faultline status</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
    );
    header(&mut out, shared);
    for pool in snapshot.upstreams.iter() {
        upstream(&mut out, pool, &shared.history().read(pool));
    }
    routes(&mut out, &snapshot.routes);
    let _ = write!(
        out,
        "<footer>Bars: {slot} s each, the last {minutes} minutes, newest on the right. \
         <span class=\"key\"><i class=\"r\"></i>responses<i class=\"e\"></i>of which 5xx\
         <i class=\"f\"></i>failures</span>. \
         Machine-readable: <a href=\"/status\">/status</a> (JSON), <a href=\"/metrics\">/metrics</a> (Prometheus).</footer>\n\
         </body>\n</html>\n",
        slot = SLOT.as_secs(),
        minutes = SLOT.as_secs() * SLOTS as u64 / 60,
    );
    out
}

fn header(out: &mut String, shared: &Shared) {
    let lifecycle = shared.lifecycle();
    let (class, word) = if lifecycle.terminating() {
        ("bad", "shutting down")
    } else if lifecycle.draining() {
        ("warn", "upgrading")
    } else if lifecycle.ready() {
        ("ok", "ready")
    } else {
        ("warn", "starting")
    };
    let (ok, failed) = shared.reload_counts();
    let reloads = if failed > 0 {
        format!("<span class=\"badge bad\">{failed} failed</span>")
    } else {
        String::new()
    };
    let source = shared.source().map_or_else(
        || "built in (no file to reload)".to_string(),
        |p| format!("<code>{}</code>", esc(&p.display().to_string())),
    );
    let _ = writeln!(
        out,
        "<header><h1>faultline</h1><span class=\"badge {class}\">{word}</span>\
         <span class=\"sub\">as of {clock} UTC · configuration {source} · reloads: {ok} applied {reloads}· \
         this page reloads every {REFRESH_SECONDS} s</span></header>",
        clock = clock(),
    );
}

/// The time of day, UTC, as `hh:mm:ss`.
fn clock() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let day = secs % 86_400;
    format!("{:02}:{:02}:{:02}", day / 3600, day / 60 % 60, day % 60)
}

fn upstream(out: &mut String, pool: &Pool, recent: &[Recent]) {
    let backends = pool.backends();
    let taking = (0..backends.len())
        .filter(|&i| pool.is_up(i) && backends.get(i).is_some_and(|b| !b.draining()))
        .count();
    let class = match taking {
        0 => "bad",
        n if n < backends.len() => "warn",
        _ => "ok",
    };
    let name = esc(pool.name());
    let _ = write!(
        out,
        "<section class=\"upstream\" data-upstream=\"{name}\">\n<h2>{name} \
         <span class=\"badge {class}\">{taking} of {} taking traffic</span></h2>\n<div class=\"summary\">",
        backends.len()
    );
    let mut sum = [Bar::default(); SLOTS];
    for r in recent {
        for (s, b) in sum.iter_mut().zip(&r.bars) {
            s.responses += b.responses;
            s.failures += b.failures;
            s.server_errors += b.server_errors;
        }
    }
    let span = recent.iter().map(|r| r.span).max().unwrap_or_default();
    let responses: u64 = recent.iter().map(|r| r.attempts(None)).sum();
    let failures: u64 = recent.iter().map(Recent::failures).sum();
    out.push_str("<div>");
    sparkline(out, &sum, 240, 40);
    rates(out, responses, failures, span);
    out.push_str("</div>");
    retry_budget(out, pool);
    out.push_str("</div>\n");
    discovery(out, pool);
    out.push_str(
        "<table>\n<thead><tr><th>backend</th><th>state</th><th>last 5 minutes</th>\
         <th>failures by kind <span class=\"sub\">(5 min / since start)</span></th></tr></thead>\n<tbody>\n",
    );
    for (i, (b, r)) in backends.iter().zip(recent).enumerate() {
        backend(out, pool, i, b, r);
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
}

fn rates(out: &mut String, responses: u64, failures: u64, span: Duration) {
    let seconds = span.as_secs_f64().max(1.0);
    let total = responses + failures;
    let share = if total == 0 {
        0.0
    } else {
        failures as f64 * 100.0 / total as f64
    };
    let _ = write!(
        out,
        "<span class=\"sub\"><b>{:.1}</b>/s responses · <b>{failures}</b> failures ({share:.1} %) \
         in the last {}</span>",
        responses as f64 / seconds,
        duration(span),
    );
}

fn retry_budget(out: &mut String, pool: &Pool) {
    let Usage {
        requests,
        retries,
        allowed,
        percent,
    } = pool.budget.usage();
    let used = retries as f64 / allowed.max(1) as f64;
    let class = match used {
        u if u >= 0.9 => "f",
        u if u >= 0.5 => "e",
        _ => "r",
    };
    let refused = pool
        .metrics
        .budget_exhausted
        .load(std::sync::atomic::Ordering::Relaxed);
    let rule = match percent {
        Some(p) => format!(
            "{p} % of {requests} requests, at least {}",
            budget::MIN_RETRIES_PER_WINDOW
        ),
        None => format!(
            "at least {} (no retry has drawn on it yet)",
            budget::MIN_RETRIES_PER_WINDOW
        ),
    };
    let width = (used.min(1.0) * 160.0).round();
    let _ = write!(
        out,
        "<div class=\"budget\"><span class=\"sub\">retry budget, last {window} s</span>\
         <svg width=\"160\" height=\"8\" role=\"img\" aria-label=\"retry budget used\">\
         <rect class=\"t\" width=\"160\" height=\"8\" rx=\"2\"/><rect class=\"{class}\" width=\"{width}\" height=\"8\" rx=\"2\"/></svg>\
         <span class=\"sub\"><b>{retries}</b> of <b>{allowed}</b> retries ({pct:.0} %) · allowed: {rule} · \
         refused since start: <b>{refused}</b></span></div>",
        window = budget::WINDOW.as_secs(),
        pct = used * 100.0,
    );
}

fn discovery(out: &mut String, pool: &Pool) {
    let mut sources = pool.sources().peekable();
    if sources.peek().is_none() {
        return;
    }
    out.push_str("<ul class=\"discovery sub\">");
    for source in sources {
        let label = source.to_string();
        let addresses = pool.answer(source).map_or(0, <[_]>::len);
        let last = match pool.refreshes().last(&label) {
            None => "not looked up yet".to_string(),
            Some(l) => {
                let ago = l.at.elapsed().unwrap_or_default();
                let error = l
                    .error
                    .as_deref()
                    .map(|e| format!(": {}", esc(e)))
                    .unwrap_or_default();
                format!(
                    "last lookup {} ago: {}{error}",
                    duration(ago),
                    l.result.as_str()
                )
            }
        };
        let _ = write!(
            out,
            "<li><code>{}</code> · {addresses} addresses · {last}</li>",
            esc(&label)
        );
    }
    out.push_str("</ul>\n");
}

/// A backend's states: `(key, badge class, words)`, the one that matters most first.
fn states(pool: &Pool, i: usize, b: &Backend) -> Vec<(&'static str, &'static str, String)> {
    let mut states = Vec::new();
    if b.draining() {
        states.push(("draining", "warn", "draining".to_string()));
    }
    match b.state() {
        State::Healthy => {}
        State::Ejected(left) => states.push((
            "ejected",
            "bad",
            format!("ejected, {} left", duration(left)),
        )),
        State::HalfOpen => states.push(("half_open", "warn", "half-open: probing".to_string())),
    }
    if pool.active_interval().is_some() && !pool.actively_healthy(i) {
        states.push(("down", "bad", "down by active check".to_string()));
    }
    if b.lagging() {
        states.push(("lagging", "warn", "not answering".to_string()));
    }
    if states.is_empty() {
        states.push(("healthy", "ok", "healthy".to_string()));
    }
    states
}

fn backend(out: &mut String, pool: &Pool, i: usize, b: &Backend, r: &Recent) {
    let states = states(pool, i, b);
    let name = esc(b.name());
    let key = states.first().map_or("healthy", |s| s.0);
    let _ = write!(
        out,
        "<tr class=\"backend\" data-backend=\"{name}\" data-state=\"{key}\"><td><code>{name}</code><br><span class=\"sub\">{}",
        esc(b.source())
    );
    if b.tier() > 0 {
        let _ = write!(out, ", SRV tier {}", b.tier());
    }
    out.push_str("</span></td><td class=\"state\">");
    for (_, class, words) in &states {
        let _ = write!(out, "<span class=\"badge {class}\">{words}</span>");
    }
    let passive = if pool.passive_health() {
        format!(
            "{} ejections · {} failures in a row",
            b.breaker().ejections_total(),
            b.breaker().consecutive_failures()
        )
    } else {
        "passive health off: never ejected".to_string()
    };
    let _ = write!(
        out,
        "<br><span class=\"sub\">{passive} · {} pending</span></td><td>",
        b.pending()
    );
    sparkline(out, &r.bars, 180, 28);
    rates(out, r.attempts(None), r.failures(), r.span);
    out.push_str("</td><td>");
    kinds(out, b, r);
    out.push_str("</td></tr>\n");
}

/// The failure kinds a backend had, over the span and since start, each with a bar.
fn kinds(out: &mut String, b: &Backend, r: &Recent) {
    let rows: Vec<_> = FailureKind::ALL
        .iter()
        .map(|k| (*k, r.attempts(Some(*k)), b.metrics().attempts(Some(*k))))
        .filter(|(_, recent, total)| *recent > 0 || *total > 0)
        .collect();
    if rows.is_empty() {
        out.push_str("<span class=\"sub\">none</span>");
        return;
    }
    let most = rows.iter().map(|(_, n, _)| *n).max().unwrap_or(0).max(1);
    out.push_str("<ul class=\"kinds\">");
    for (kind, recent, total) in rows {
        let width = (recent as f64 * 60.0 / most as f64).round();
        let class = if kind.is_upstream() { "f" } else { "e" };
        let _ = write!(
            out,
            "<li data-kind=\"{k}\"><svg width=\"60\" height=\"8\" style=\"display:inline-block\" aria-hidden=\"true\">\
             <rect class=\"t\" width=\"60\" height=\"8\" rx=\"2\"/><rect class=\"{class}\" width=\"{width}\" height=\"8\" rx=\"2\"/></svg> \
             <code>{k}</code> <b>{recent}</b> <span class=\"sub\">/ {total}</span></li>",
            k = kind.as_str()
        );
    }
    out.push_str("</ul>");
}

/// Bars of responses (5xx on top of them) and failures per interval, scaled to the busiest,
/// in whole pixels. Each bar is a vertical stroke as wide as the bar, one path per colour: a
/// few bytes per bar, so a busy backend's chart stays around 2 KiB.
fn sparkline(out: &mut String, bars: &[Bar], width: u32, height: u32) {
    let step = width / u32::try_from(bars.len()).unwrap_or(u32::MAX).max(1);
    let bar_width = step.saturating_sub(1).max(1);
    let top = bars
        .iter()
        .map(|b| b.responses + b.failures)
        .max()
        .unwrap_or(0);
    let (responses, failures): (u64, u64) = bars
        .iter()
        .fold((0, 0), |(r, f), b| (r + b.responses, f + b.failures));
    let chart = u64::from(height - 1);
    let mut paths = [String::new(), String::new(), String::new()];
    for (i, b) in bars.iter().enumerate() {
        let total = b.responses + b.failures;
        if total == 0 {
            continue;
        }
        // At least a pixel for anything counted.
        let full = (total * chart).div_ceil(top).max(1);
        let part = |n: u64| {
            if n == 0 { 0 } else { (n * full / total).max(1) }
        };
        let failed = part(b.failures).min(full);
        let server_errors = part(b.server_errors.min(b.responses)).min(full - failed);
        let ok = full - failed - server_errors;
        // The middle of the bar, in half pixels.
        let x2 = u64::try_from(i).unwrap_or(u64::MAX) * u64::from(step) * 2 + u64::from(bar_width);
        let x = format!("{}{}", x2 / 2, if x2 % 2 == 1 { ".5" } else { "" });
        // Stacked from the baseline: responses, then 5xx responses, then failures.
        let mut y = chart;
        for (path, h) in paths.iter_mut().zip([ok, server_errors, failed]) {
            if h > 0 {
                let _ = write!(path, "M{x} {y}v-{h}");
                y -= h;
            }
        }
    }
    let _ = write!(
        out,
        "<svg width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" \
         aria-label=\"{responses} responses and {failures} failures in the last minutes\">\
         <title>{responses} responses, {failures} failures; {slot} s per bar</title>\
         <path class=\"a\" d=\"M0 {base}.5H{width}\"/>",
        base = height - 1,
        slot = SLOT.as_secs(),
    );
    for (class, d) in ["sr", "se", "sf"].iter().zip(&paths) {
        if !d.is_empty() {
            let _ = write!(
                out,
                "<path class=\"{class}\" stroke-width=\"{bar_width}\" d=\"{d}\"/>"
            );
        }
    }
    out.push_str("</svg>");
}

fn routes(out: &mut String, routes: &crate::metrics::RouteTable) {
    out.push_str(
        "<section class=\"routes\">\n<h2>Routes <span class=\"sub\">since start</span></h2>\n<table>\n\
         <thead><tr><th>route</th><th class=\"n\">origin 1xx–3xx</th><th class=\"n\">origin 4xx</th>\
         <th class=\"n\">origin 5xx</th><th class=\"n\">answered by the proxy</th>\
         <th class=\"n\">client gone</th><th class=\"n\">retries</th></tr></thead>\n<tbody>\n",
    );
    for r in routes.all() {
        let origin = r.requests_by_class(Source::Origin);
        let proxy: u64 = r.requests_by_class(Source::Proxy).iter().sum();
        let client: u64 = r.requests_by_class(Source::Client).iter().sum();
        let _ = writeln!(
            out,
            "<tr><td><code>{}</code></td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{proxy}</td><td class=\"n\">{client}</td><td class=\"n\">{}</td></tr>",
            esc(r.name()),
            origin[0] + origin[1] + origin[2],
            origin[3],
            origin[4],
            r.retries_total(),
        );
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
}

/// A duration in words a person reads at a glance: `0.4 s`, `12 s`, `3 min 5 s`.
fn duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 10.0 {
        format!("{secs:.1} s")
    } else if secs < 120.0 {
        format!("{} s", secs.ceil())
    } else {
        let whole = d.as_secs();
        format!("{} min {} s", whole / 60, whole % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(Duration::from_millis(400)), "0.4 s");
        assert_eq!(duration(Duration::from_millis(12_300)), "13 s");
        assert_eq!(duration(Duration::from_secs(185)), "3 min 5 s");
    }

    #[test]
    fn a_busy_backend_takes_a_few_kib() {
        let backends: Vec<String> = (1..=10)
            .map(|i| format!("{{ address: \"127.0.0.{i}:80\" }}"))
            .collect();
        let yaml = format!(
            "listeners: [{{ address: \"127.0.0.1:8080\" }}]\nupstreams:\n  app:\n    backends: [{}]\nroutes: [{{ upstream: app }}]\n",
            backends.join(", ")
        );
        let config = crate::config::Config::from_yaml(&yaml).expect("config");
        let shared = Shared::new(&config, Default::default(), vec![], None).expect("state");
        let snapshot = shared.current();
        let pool = snapshot.upstreams.iter().next().expect("a pool");
        for b in pool.backends() {
            for kind in FailureKind::ALL.iter().filter(|k| k.is_upstream()) {
                b.metrics().failure(*kind);
            }
        }
        let mut recent = shared.history().read(pool);
        for r in &mut recent {
            for (i, bar) in r.bars.iter_mut().enumerate() {
                let i = i as u64;
                *bar = Bar {
                    responses: 50 + i * 7 % 13 * 9,
                    failures: i % 5,
                    server_errors: i % 3,
                };
            }
        }
        let mut section = String::new();
        upstream(&mut section, pool, &recent);
        // Every interval drawn in three colours and every upstream-side kind listed.
        assert!(section.len() < 10 * 6 * 1024, "{} bytes", section.len());
    }

    #[test]
    fn a_quiet_chart_is_its_baseline() {
        let mut out = String::new();
        sparkline(&mut out, &[Bar::default(); SLOTS], 240, 40);
        assert!(out.contains("class=\"a\""));
        assert!(!out.contains("class=\"sr\""), "{out}");
        let mut busy = [Bar::default(); SLOTS];
        busy[SLOTS - 1] = Bar {
            responses: 9,
            failures: 1,
            server_errors: 3,
        };
        let mut out = String::new();
        sparkline(&mut out, &busy, 240, 40);
        // The busiest bar fills the 39 pixels: a tenth failures on top, 3 in 9 responses 5xx
        // below them, the rest ordinary responses.
        assert!(
            out.contains("<path class=\"sr\" stroke-width=\"3\" d=\"M237.5 39v-25\"/>"),
            "{out}"
        );
        assert!(out.contains("d=\"M237.5 14v-11\""), "{out}");
        assert!(
            out.contains("<path class=\"sf\" stroke-width=\"3\" d=\"M237.5 3v-3\"/>"),
            "{out}"
        );
    }
}
