//! PNG line charts, one panel per metric, drawn with plotters' bitmap backend. Text uses an
//! embedded DejaVu Sans (from the `dejavu` crate) through plotters' `ab_glyph` feature, so no
//! system font or fontconfig is needed. Sizes are bounded by `iot_query::chart_size`.

use std::{collections::BTreeMap, sync::Once};

use chrono::{DateTime, Utc};
use iot_proto::storage::v1::ReadingPoint;
use plotters::prelude::*;

use crate::error::{ApiError, ApiResult};

/// More panels than this would be unreadable; the rest are left out (and said so).
const MAX_PANELS: usize = 8;
const FONT: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for style in [FontStyle::Normal, FontStyle::Bold] {
            if plotters::style::register_font(FONT, style, dejavu::sans::regular()).is_err() {
                tracing::error!("cannot register the chart font");
            }
        }
    });
}

fn chart_error<E: std::fmt::Debug>(error: E) -> ApiError {
    ApiError::Unexpected(anyhow::anyhow!("drawing the chart failed: {error:?}"))
}

fn time_format(span_us: i64) -> &'static str {
    match span_us {
        s if s <= 2 * 3_600_000_000 => "%H:%M:%S",
        s if s <= 2 * 86_400_000_000 => "%d %H:%M",
        _ => "%Y-%m-%d",
    }
}

/// Renders `points` (any order within a metric is fine; drawn in time order) as PNG bytes.
pub fn render_png(title: &str, points: &[ReadingPoint], width: u32, height: u32) -> ApiResult<Vec<u8>> {
    register_font();
    let mut series: BTreeMap<&str, Vec<(DateTime<Utc>, f64)>> = BTreeMap::new();
    for point in points {
        if let Some(ts) = DateTime::<Utc>::from_timestamp_micros(point.ts_us) {
            series.entry(point.metric.as_str()).or_default().push((ts, point.value));
        }
    }
    let omitted = series.len().saturating_sub(MAX_PANELS);
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_error)?;
        let heading = if omitted > 0 { format!("{title} ({omitted} more metrics not shown)") } else { title.to_string() };
        let root = root.titled(&heading, (FONT, 18).into_font().color(&BLACK)).map_err(chart_error)?;
        if series.is_empty() {
            let (w, h) = root.dim_in_pixel();
            root.draw(&Text::new(
                "no readings in this range",
                ((w as i32) / 2 - 90, (h as i32) / 2),
                (FONT, 16).into_font().color(&BLACK),
            ))
            .map_err(chart_error)?;
        }
        let panels = root.split_evenly((series.len().clamp(1, MAX_PANELS), 1));
        let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
        for (index, (panel, (metric, mut data))) in panels.iter().zip(series).enumerate() {
            data.sort_by_key(|(ts, _)| *ts);
            let (Some(first), Some(last)) = (data.first(), data.last()) else { continue };
            let (mut x0, mut x1) = (first.0, last.0);
            if x0 == x1 {
                x0 -= chrono::Duration::seconds(30);
                x1 += chrono::Duration::seconds(30);
            }
            let (mut y0, mut y1) = data.iter().fold((f64::MAX, f64::MIN), |(lo, hi), (_, v)| (lo.min(*v), hi.max(*v)));
            let pad = if y1 > y0 { (y1 - y0) * 0.08 } else { y0.abs().max(1.0) * 0.1 };
            y0 -= pad;
            y1 += pad;
            let format = time_format((x1 - x0).num_microseconds().unwrap_or(i64::MAX));
            let mut chart = ChartBuilder::on(panel)
                .margin(8)
                // Room for the last time label, which is centred on the right edge.
                .margin_right(28)
                .x_label_area_size(40)
                .y_label_area_size(64)
                .build_cartesian_2d(x0..x1, y0..y1)
                .map_err(chart_error)?;
            chart
                .configure_mesh()
                .x_desc("time (UTC)")
                .y_desc(metric)
                .x_labels(6)
                .y_labels(5)
                .x_label_formatter(&|t: &DateTime<Utc>| t.format(format).to_string())
                .y_label_formatter(&|v: &f64| format!("{v:.4}").trim_end_matches('0').trim_end_matches('.').to_string())
                .label_style((FONT, 12))
                .axis_desc_style((FONT, 13))
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .map_err(chart_error)?;
            let color = colors[index % colors.len()];
            chart.draw_series(LineSeries::new(data.iter().copied(), color.stroke_width(2))).map_err(chart_error)?;
            if data.len() <= 60 {
                chart
                    .draw_series(data.iter().map(|(t, v)| Circle::new((*t, *v), 3, color.filled())))
                    .map_err(chart_error)?;
            }
        }
        root.present().map_err(chart_error)?;
    }
    encode_png(&rgb, width, height)
}

fn encode_png(rgb: &[u8], width: u32, height: u32) -> ApiResult<Vec<u8>> {
    let mut out = Vec::with_capacity(rgb.len() / 8);
    {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(chart_error)?;
        writer.write_image_data(rgb).map_err(chart_error)?;
        writer.finish().map_err(chart_error)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn renders_requested_size_with_and_without_data() {
        let points: Vec<ReadingPoint> = (0..50)
            .map(|i| ReadingPoint { metric: if i % 2 == 0 { "temperature".into() } else { "humidity".into() }, ts_us: 1_700_000_000_000_000 + i * 60_000_000, value: (i as f64).sin() })
            .collect();
        for data in [&points[..], &[]] {
            let png_bytes = render_png("dev", data, 640, 360).unwrap();
            let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
            let reader = decoder.read_info().unwrap();
            assert_eq!((reader.info().width, reader.info().height), (640, 360));
        }
    }
}
