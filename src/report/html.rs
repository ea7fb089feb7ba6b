//! The report as a self-contained page: the charts an ops lead would rather
//! look at than read, drawn by plotters as inline SVG (no script, no file
//! beside it), then the same figures as tables.

use plotters::prelude::*;

use super::Report;

/// One bar chart: a value per named bar.
struct Bars<'a> {
    title: &'a str,
    unit: &'a str,
    bars: Vec<(String, f64)>,
    max: f64,
}

fn svg(chart: &Bars<'_>) -> String {
    let mut out = String::new();
    if chart.bars.is_empty() {
        return format!("<p><em>{}: nothing to show.</em></p>", escape(chart.title));
    }
    {
        let root = SVGBackend::with_string(&mut out, (760, 340)).into_drawing_area();
        let names: Vec<&str> = chart.bars.iter().map(|(n, _)| n.as_str()).collect();
        let drawn = (|| -> Result<(), Box<dyn std::error::Error + '_>> {
            root.fill(&WHITE)?;
            let mut c = ChartBuilder::on(&root)
                .caption(chart.title, ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(56)
                .build_cartesian_2d((0..names.len() - 1).into_segmented(), 0.0..chart.max)?;
            c.configure_mesh()
                .disable_x_mesh()
                .y_desc(chart.unit)
                .x_label_formatter(&|v| match v {
                    SegmentValue::CenterOf(i) => names.get(*i).map_or(String::new(), |n| n.to_string()),
                    _ => String::new(),
                })
                .x_labels(names.len())
                .draw()?;
            c.draw_series(
                Histogram::vertical(&c)
                    .style(RGBColor(46, 110, 180).filled())
                    .margin(6)
                    .data(chart.bars.iter().enumerate().map(|(i, (_, v))| (i, *v))),
            )?;
            root.present()?;
            Ok(())
        })();
        if let Err(e) = drawn {
            return format!("<p><em>{}: cannot draw ({e}).</em></p>", escape(chart.title));
        }
    }
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Lead times in bands of hours, as counts.
fn lead_bands(leads: &[f64]) -> Vec<(String, f64)> {
    const EDGES: [f64; 8] = [2.0, 4.0, 8.0, 12.0, 24.0, 48.0, 96.0, f64::INFINITY];
    let mut counts = [0u64; EDGES.len()];
    for l in leads {
        let band = EDGES.iter().position(|e| l < e).unwrap_or(EDGES.len() - 1);
        counts[band] += 1;
    }
    let mut low = 0.0;
    EDGES
        .iter()
        .zip(counts)
        .map(|(&high, n)| {
            let name = if high.is_finite() { format!("{low}–{high} h") } else { format!("> {low} h") };
            low = high;
            (name, n as f64)
        })
        .collect()
}

fn percent_bars(rows: impl Iterator<Item = (String, u64, u64)>) -> Vec<(String, f64)> {
    rows.filter(|(_, _, total)| *total > 0)
        .map(|(name, part, total)| (name, 100.0 * part as f64 / total as f64))
        .collect()
}

/// The hold-out measure, when the report has one: contacts per 1,000
/// parcels told in each group, and the share the messages spared.
fn holdout(r: &Report) -> String {
    let Some(h) = &r.holdout else { return String::new() };
    let pct = |x: f64| format!("{:.1} %", 100.0 * x);
    let groups = [("messaged", &h.messaged), ("held out", &h.held_out)];
    let bars: Vec<(String, f64)> =
        groups.iter().filter_map(|(name, g)| Some((name.to_string(), g.contacts_per_1000?))).collect();
    let most = bars.iter().map(|(_, v)| *v).fold(1.0, f64::max);
    let chart = svg(&Bars {
        title: "Contacts after the first alert, per 1,000 parcels told",
        unit: "contacts per 1,000",
        bars,
        max: most * 1.2,
    });
    let effect = match (h.reduction, h.reduction_ci95) {
        (Some(r), Some((lo, hi))) => {
            format!(
                "The messages spared <strong>{}</strong> of the contacts (95 % interval {} to {}).",
                pct(r),
                pct(lo),
                pct(hi)
            )
        }
        (Some(r), None) => format!("The messages spared <strong>{}</strong> of the contacts.", pct(r)),
        _ => "No effect is measurable: the held-out group had no contacts.".to_string(),
    };
    format!(
        "<h2>What the messages change</h2>\n<p>{} of the parcels were held out: their customers were told \
         nothing. {} parcels told were messaged, {} held out. {effect}</p>\n<figure>{chart}</figure>\n",
        pct(h.share),
        h.messaged.parcels,
        h.held_out.parcels,
    )
}

/// The whole page.
pub fn page(r: &Report) -> String {
    let leads = lead_bands(&r.leads);
    let most = leads.iter().map(|(_, n)| *n).fold(1.0, f64::max);
    let by_rule = percent_bars(
        r.rules
            .iter()
            .filter(|(name, _)| !name.starts_with('('))
            .map(|(name, f)| (name.clone(), f.contacts_preempted, f.contacts_preempted + f.contacts_missed)),
    );
    let by_topic = percent_bars(r.topics.iter().map(|(t, f)| (t.to_string(), f.preempted, f.contacts)));
    let charts = [
        Bars {
            title: "Lead time: how long before the customer's contact forewarn spoke",
            unit: "contacts",
            bars: leads,
            max: most * 1.1,
        },
        Bars {
            title: "Contacts preempted, by the rule that spoke first",
            unit: "% of its contacts",
            bars: by_rule,
            max: 100.0,
        },
        Bars {
            title: "Contacts preempted, by contact topic",
            unit: "% of the topic's contacts",
            bars: by_topic,
            max: 100.0,
        },
    ];
    let calibration = match (&r.predicted_late.precision, &r.predicted_late.recall) {
        (Some(p), Some(rc)) => svg(&Bars {
            title: "predicted_late against the parcels really late",
            unit: "%",
            bars: vec![("precision".into(), 100.0 * p), ("recall".into(), 100.0 * rc)],
            max: 100.0,
        }),
        _ => format!(
            "<p>predicted_late is not in the rule pack: {} parcels were late, none foreseen.</p>",
            r.predicted_late.late
        ),
    };
    let pct = |x: Option<f64>| x.map_or("–".to_string(), |v| format!("{:.1} %", 100.0 * v));
    let hours = |x: Option<f64>| x.map_or("–".to_string(), |v| format!("{v:.1} h"));
    let mut rules = String::new();
    for (name, f) in &r.rules {
        rules.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            escape(name),
            f.problem_parcels,
            f.contacts_preempted,
            f.contacts_missed,
            hours(f.median_lead_hours),
            hours(f.p10_lead_hours),
            f.noise_parcels
        ));
    }
    let charts: String = charts.iter().map(|c| format!("<figure>{}</figure>\n", svg(c))).collect();
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>forewarn report</title>\n\
         <style>body{{font-family:sans-serif;max-width:820px;margin:2em auto;color:#222}}\
         table{{border-collapse:collapse}}td,th{{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}}\
         td:first-child,th:first-child{{text-align:left}}figure{{margin:1.5em 0}}</style></head><body>\n\
         <h1>Did forewarn speak first?</h1>\n\
         <p><strong>{}</strong> of the contacts about problem parcels came after forewarn had told the customer \
         ({} of {}); median lead time <strong>{}</strong>, p10 {}. {} parcels had a problem, {} of them were told; \
         {} parcels were told of a problem they never had.</p>\n{charts}<figure>{calibration}</figure>\n{}\
         <h2>By rule</h2>\n<table><tr><th>rule</th><th>problem parcels</th><th>preempted</th><th>missed</th>\
         <th>median lead</th><th>p10 lead</th><th>noise</th></tr>\n{rules}</table>\n</body></html>\n",
        pct(r.contacts_preempted_share),
        r.contacts_preempted,
        r.contacts,
        hours(r.median_lead_hours),
        hours(r.p10_lead_hours),
        r.problem_parcels,
        r.problem_parcels_told,
        r.noise_parcels,
        holdout(r),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hold_out_shows_both_groups_and_what_the_messages_spared() {
        use crate::report::{Group, Holdout};
        assert!(!page(&Report::default()).contains("What the messages change"), "no hold-out, no section");
        let group = |parcels, per| Group { parcels, contacts: 0, contacts_per_1000: Some(per) };
        let r = Report {
            holdout: Some(Holdout {
                share: 0.05,
                messaged: group(52_882, 311.5),
                held_out: group(2_779, 442.2),
                reduction: Some(0.296),
                reduction_ci95: Some((0.238, 0.354)),
            }),
            ..Report::default()
        };
        let html = page(&r);
        assert!(
            html.contains("spared <strong>29.6 %</strong> of the contacts (95 % interval 23.8 % to 35.4 %)"),
            "{html}"
        );
        assert!(html.contains("52882 parcels told were messaged, 2779 held out"));
        let chart = &html[html.find("What the messages change").unwrap()..];
        for label in ["messaged", "held out"] {
            assert!(chart.contains(&format!(">\n{label}\n</text>")), "a bar a group: {label}");
        }
        assert_eq!(chart.matches("<rect").count(), 3, "the background and the two groups' bars");
    }

    #[test]
    fn lead_times_fall_in_their_bands() {
        let bands = lead_bands(&[1.0, 3.0, 3.5, 30.0, 200.0]);
        let counts: Vec<f64> = bands.iter().map(|(_, n)| *n).collect();
        assert_eq!(counts, [1.0, 2.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0]);
        assert_eq!(bands[0].0, "0–2 h");
        assert_eq!(bands[7].0, "> 96 h");
    }

    #[test]
    fn charts_draw_one_bar_or_many_and_say_when_there_is_nothing() {
        for n in [1, 2, 8] {
            let bars = (0..n).map(|i| (format!("bar{i}"), 10.0 * f64::from(i + 1))).collect();
            let drawn = svg(&Bars { title: "t <&>", unit: "u", bars, max: 100.0 });
            assert!(drawn.starts_with("<svg") && drawn.contains(&format!("bar{}", n - 1)), "{n} bars: {drawn:.200}");
            assert_eq!(drawn.matches("<rect").count(), 1 + n as usize, "the background and one rectangle a bar");
        }
        let empty = svg(&Bars { title: "t <&>", unit: "u", bars: Vec::new(), max: 1.0 });
        assert!(empty.contains("nothing to show") && empty.contains("t &lt;&amp;&gt;"));
    }
}
