//! The report's line charts, drawn with plotters to SVG and PNG from the same code.
//! Text is rendered from the DejaVu Sans the binary embeds, so a machine needs no
//! font libraries.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

/// One line of a chart, with an optional band (low, high) around it.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub band: Option<Vec<(f64, f64, f64)>>,
}

/// A chart: a title, axis labels and its lines.
pub struct Chart {
    /// File stem: `plots/<stem>.svg` and `.png`.
    pub stem: &'static str,
    pub title: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
            .unwrap_or_else(|_| panic!("the embedded DejaVu Sans is a valid font"));
    });
}

const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// The axis range covering `values`, padded; a single value gets a unit range.
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        return (lo - 0.5, hi + 0.5);
    }
    let pad = 0.05 * (hi - lo);
    (lo - pad, hi + pad)
}

impl Chart {
    fn x_range(&self) -> (f64, f64) {
        let xs = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0));
        let (lo, hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(x), hi.max(x))
        });
        if lo.is_finite() {
            (lo - 0.5, hi + 0.5)
        } else {
            (0.0, 1.0)
        }
    }

    fn y_range(&self) -> (f64, f64) {
        range(self.series.iter().flat_map(|s| {
            let points = s.points.iter().map(|p| p.1);
            let band = s.band.iter().flatten().flat_map(|b| [b.1, b.2]);
            points.chain(band).collect::<Vec<_>>()
        }))
    }

    fn draw<DB: DrawingBackend>(&self, area: DrawingArea<DB, Shift>) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static,
    {
        let err = |e: DrawingAreaErrorKind<DB::ErrorType>| {
            anyhow::anyhow!("drawing {}: {e:?}", self.stem)
        };
        area.fill(&WHITE).map_err(err)?;
        let (x0, x1) = self.x_range();
        let (y0, y1) = self.y_range();
        let mut chart = ChartBuilder::on(&area)
            .caption(&self.title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("iteration")
            .y_desc(self.y_label.as_str())
            // Iterations are whole numbers: label only those.
            .x_label_formatter(&|x| {
                if (x - x.round()).abs() < 1e-9 {
                    format!("{x:.0}")
                } else {
                    String::new()
                }
            })
            .light_line_style(WHITE.mix(0.0))
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(err)?;
        for (i, s) in self.series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            if let Some(band) = &s.band {
                let upper = band.iter().map(|b| (b.0, b.2));
                let lower = band.iter().rev().map(|b| (b.0, b.1));
                chart
                    .draw_series(std::iter::once(Polygon::new(
                        upper.chain(lower).collect::<Vec<_>>(),
                        colour.mix(0.15).filled(),
                    )))
                    .map_err(err)?;
            }
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    colour.stroke_width(2),
                ))
                .map_err(err)?
                .label(s.name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, colour.filled())))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(err)?;
        area.present().map_err(err)?;
        Ok(())
    }

    /// Writes `<dir>/<stem>.svg` and `<dir>/<stem>.png`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        register_font();
        let size = (800, 420);
        let svg = dir.join(format!("{}.svg", self.stem));
        self.draw(SVGBackend::new(&svg, size).into_drawing_area())?;
        let png = dir.join(format!("{}.png", self.stem));
        self.draw(BitMapBackend::new(&png, size).into_drawing_area())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_pad_and_never_collapse() {
        assert_eq!(range([1.0, 1.0].into_iter()), (0.5, 1.5));
        let (lo, hi) = range([0.0, 10.0, f64::NAN].into_iter());
        assert_eq!((lo, hi), (-0.5, 10.5));
        assert_eq!(range(std::iter::empty()), (0.0, 1.0));
    }
}
