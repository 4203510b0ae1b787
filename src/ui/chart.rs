//! Charts as SVG, drawn on the server by `plotters` (no script, no external asset): a
//! subject's scores over time with the marks its rules and actions left, and the overview's
//! events per minute. plotters escapes every text it writes (the caption is a subject key,
//! which is the provider's), so the SVG can go into a page as it is.

use plotters::prelude::*;

use crate::ui::pages::Mark;
use crate::ui::pages::overview::Minute;
use crate::ui::pages::subject::Point;

/// The scores' colours, in the order of their names.
const SCORE_COLOURS: [RGBColor; 4] = [
    RGBColor(0x1F, 0x77, 0xB4),
    RGBColor(0x2C, 0xA0, 0x2C),
    RGBColor(0x8C, 0x56, 0x4B),
    RGBColor(0x17, 0xBE, 0xCF),
];

/// Each mark's colour, and its row in the band above the scores (rules' marks are
/// triangles, actions' squares). Tests find marks by these colours.
pub fn mark_style(mark: Mark) -> (RGBColor, usize) {
    match mark {
        Mark::Enforce => (RGBColor(0xD6, 0x27, 0x28), 0),
        Mark::Shadow => (RGBColor(0x94, 0x67, 0xBD), 1),
        Mark::Tripped => (RGBColor(0xFF, 0x7F, 0x0E), 2),
        Mark::Cooldown => (RGBColor(0x7F, 0x7F, 0x7F), 2),
        Mark::Error => (RGBColor(0xBC, 0xBD, 0x22), 2),
        Mark::ActionOk => (RGBColor(0x2C, 0x2C, 0x2C), 3),
        Mark::ActionFailed => (RGBColor(0xE3, 0x77, 0xC2), 3),
    }
}

/// The widest range of scores drawn (far beyond any score, far below f64's overflow).
const MAX_SPAN: f64 = 1e100;

/// Marks in the legend's order.
const MARKS: [Mark; 7] = [
    Mark::Enforce,
    Mark::Shadow,
    Mark::Tripped,
    Mark::Cooldown,
    Mark::Error,
    Mark::ActionOk,
    Mark::ActionFailed,
];

/// The time of day of `ms` (UTC), for the x axis.
fn clock(ms: i64) -> String {
    let day_ms = ms.rem_euclid(86_400_000);
    let (h, m, s) = (day_ms / 3_600_000, day_ms / 60_000 % 60, day_ms / 1000 % 60);
    format!("{h:02}:{m:02}:{s:02}")
}

/// The SVG of `points` (oldest first) for the scores `names`, captioned `caption`; `None`
/// with nothing to draw, or should plotters fail (the page then says so instead).
pub fn scores(caption: &str, names: &[String], points: &[Point]) -> Option<String> {
    let (first, last) = (points.first()?.at_ms, points.last()?.at_ms);
    let values = points.iter().flat_map(|p| p.scores.values().copied());
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let (lo, hi) = match (lo.is_finite(), hi.is_finite()) {
        (true, true) if hi - lo > f64::EPSILON => (lo, hi),
        (true, true) => {
            let pad = lo.abs().max(1.0) * 0.1;
            (lo - pad, hi + pad)
        }
        _ => (0.0, 1.0),
    };
    let span = hi - lo;
    // The marks' band above the scores: four rows.
    let row_y = |row: usize| hi + span * (0.12 + 0.08 * row as f64);
    let top = row_y(3) + span * 0.08;
    let bottom = lo - span * 0.05;
    // Scores are the provider's: near f64's limits the axis (and plotters' search for its
    // tick marks, which never ends on an infinite range) cannot be drawn. No chart then.
    let drawable = span > 0.0 && span <= MAX_SPAN && top.is_finite() && bottom.is_finite();
    if !drawable {
        return None;
    }
    // Room on the left for the legend, a little on the right; for one event (or one
    // batch), a second either side.
    let (left, right) = match last - first {
        0 => (1_000, 1_000),
        span => ((span / 4).max(1), (span / 30).max(1)),
    };
    let fine = last - first < 60_000;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 340)).into_drawing_area();
        root.fill(&WHITE).ok()?;
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(28)
            .y_label_area_size(48)
            .build_cartesian_2d((first - left)..(last + right), bottom..top)
            .ok()?;
        chart
            .configure_mesh()
            .x_labels(8)
            .x_label_formatter(&|ms| match fine {
                // Events within a minute: to the millisecond, or they share one label.
                true => format!("{}.{:03}", clock(*ms), ms.rem_euclid(1000)),
                false => clock(*ms),
            })
            .y_labels(6)
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .ok()?;
        for (i, name) in names.iter().enumerate() {
            let colour = SCORE_COLOURS[i % SCORE_COLOURS.len()];
            let series: Vec<(i64, f64)> = points
                .iter()
                .filter_map(|p| Some((p.at_ms, *p.scores.get(name)?)))
                .collect();
            chart
                .draw_series(LineSeries::new(series.clone(), colour.stroke_width(2)))
                .ok()?
                .label(name.as_str())
                .legend(move |(x, y)| Circle::new((x + 8, y), 4, colour.filled()));
            chart
                .draw_series(
                    series
                        .into_iter()
                        .map(|xy| Circle::new(xy, 4, colour.filled())),
                )
                .ok()?;
        }
        for mark in MARKS {
            let (colour, row) = mark_style(mark);
            let at: Vec<i64> = points
                .iter()
                .filter(|p| p.marks.contains(&mark))
                .map(|p| p.at_ms)
                .collect();
            if at.is_empty() {
                continue;
            }
            let y = row_y(row);
            if row < 3 {
                chart
                    .draw_series(
                        at.into_iter()
                            .map(|x| TriangleMarker::new((x, y), 6, colour.filled())),
                    )
                    .ok()?
                    .label(mark.label())
                    .legend(move |(x, y)| TriangleMarker::new((x + 8, y), 5, colour.filled()));
            } else {
                chart
                    .draw_series(at.into_iter().map(|x| {
                        EmptyElement::at((x, y))
                            + Rectangle::new([(-5, -5), (5, 5)], colour.filled())
                    }))
                    .ok()?
                    .label(mark.label())
                    .legend(move |(x, y)| {
                        Rectangle::new([(x + 4, y - 4), (x + 12, y + 4)], colour.filled())
                    });
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()
            .ok()?;
        root.present().ok()?;
    }
    Some(svg.replacen("<svg ", "<svg class=\"chart\" role=\"img\" ", 1))
}

/// The SVG of events decided per minute from `since_ms` (its minute included, as the store
/// counted it) to `now_ms`.
pub fn per_minute(minutes: &[Minute], since_ms: i64, now_ms: i64) -> Option<String> {
    let end = now_ms / 60_000 * 60_000 + 60_000;
    let start = since_ms / 60_000 * 60_000;
    let most = minutes.iter().map(|m| m.count).max().unwrap_or(0).max(1);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 220)).into_drawing_area();
        root.fill(&WHITE).ok()?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(28)
            .y_label_area_size(56)
            .build_cartesian_2d(start..end, 0u64..most + most / 10 + 1)
            .ok()?;
        chart
            .configure_mesh()
            .x_labels(7)
            .x_label_formatter(&|ms| clock(*ms)[..5].to_owned())
            .light_line_style(WHITE.mix(0.0))
            .y_desc("events / min")
            .draw()
            .ok()?;
        chart
            .draw_series(minutes.iter().filter(|m| m.at_ms >= start).map(|m| {
                Rectangle::new(
                    [(m.at_ms + 4_000, 0), (m.at_ms + 56_000, m.count)],
                    SCORE_COLOURS[0].filled(),
                )
            }))
            .ok()?;
        root.present().ok()?;
    }
    Some(svg.replacen("<svg ", "<svg class=\"chart\" role=\"img\" ", 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn point(at_ms: i64, trust: f64, marks: Vec<Mark>) -> Point {
        Point {
            at_ms,
            scores: BTreeMap::from([("trust".to_owned(), trust)]),
            marks,
        }
    }

    fn count(svg: &str, needle: &str) -> usize {
        svg.matches(needle).count()
    }

    #[test]
    fn one_point_per_event_and_a_mark_per_rule_and_action() {
        let points = [
            point(1_000_000, 0.9, vec![]),
            point(1_060_000, 0.4, vec![Mark::Enforce, Mark::ActionOk]),
            point(
                1_120_000,
                0.3,
                vec![Mark::Shadow, Mark::Enforce, Mark::ActionFailed],
            ),
        ];
        let svg = scores("acme/usr_1", &["trust".to_owned()], &points).unwrap();
        // The score's colour: one circle per event, one in the legend.
        assert_eq!(count(&svg, "<circle"), 4, "{svg}");
        let fill = |m: Mark| {
            let RGBColor(r, g, b) = mark_style(m).0;
            format!("fill=\"#{r:02X}{g:02X}{b:02X}\"")
        };
        // Marks and their legend entries (triangles are polygons; squares rects).
        assert_eq!(
            count(&svg, &fill(Mark::Enforce)),
            3,
            "two events, one legend entry"
        );
        assert_eq!(count(&svg, &fill(Mark::Shadow)), 2);
        assert_eq!(count(&svg, &fill(Mark::ActionOk)), 2);
        assert_eq!(count(&svg, &fill(Mark::ActionFailed)), 2);
        assert_eq!(count(&svg, &fill(Mark::Tripped)), 0);
        assert!(svg.starts_with("<svg class=\"chart\" role=\"img\" "));
    }

    #[test]
    fn scores_at_the_edge_of_f64_draw_no_chart_rather_than_hang() {
        for (a, b) in [(0.0, 1.7e308), (-1e308, 1e308), (1e200, 1e200)] {
            // Drawn on a thread of its own: before the guard, plotters never returned.
            let (done, drawn) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let points = [point(1_000_000, a, vec![]), point(1_060_000, b, vec![])];
                let _ = done.send(scores("x", &["trust".to_owned()], &points));
            });
            let svg = drawn.recv_timeout(std::time::Duration::from_secs(60));
            assert!(matches!(svg, Ok(None)), "{a} {b}: {svg:?}");
        }
        let flat = [point(1_000_000, 0.5, vec![]), point(1_060_000, 0.5, vec![])];
        assert!(scores("x", &["trust".to_owned()], &flat).is_some());
    }

    #[test]
    fn a_hostile_caption_is_text_inside_the_svg() {
        let points = [point(1_000_000, 1.0, vec![])];
        let svg = scores(
            "acme/</svg><script>document.title='pwned'</script>",
            &["trust".to_owned()],
            &points,
        )
        .unwrap();
        assert!(!svg.contains("<script"), "{svg}");
        assert!(svg.contains("&lt;/svg&gt;&lt;script&gt;"));
        assert_eq!(clock(1_764_570_605_000), "06:30:05");
    }
}
