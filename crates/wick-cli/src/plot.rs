//! The classic alignment picture of a translation (`wick translate --attention OUT.svg|.png`):
//! target tokens down, source tokens across, one panel per attention layer (or per head).

use std::path::Path;
use std::sync::Once;

use anyhow::{Context, Result, bail};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use wick_train::attention::{AttentionMap, display_token};

const FONT: &str = "sans-serif";
const CELL: i32 = 26;
const LABEL_SIZE: f64 = 14.0;
const TITLE_SIZE: f64 = 16.0;
const GAP: i32 = 28;
const PANELS_PER_ROW: usize = 4;

fn register_font() {
    static ONCE: Once = Once::new();
    // Ubuntu Light ships inside epaint_default_fonts (Ubuntu Font Licence); drawing needs
    // a font whose metrics are known, and system fonts may be missing.
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(
            FONT,
            FontStyle::Normal,
            epaint_default_fonts::UBUNTU_LIGHT,
        );
    });
}

/// Which panels to draw: one per layer (head-averaged), or every head of one layer.
#[derive(Clone, Copy, Debug)]
pub enum Panels {
    LayerMeans,
    HeadsOf(usize),
}

/// Draws `map` to `path` (`.svg` or `.png`).
pub fn draw(map: &AttentionMap, panels: Panels, path: &Path) -> Result<()> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let panels: Vec<(String, Vec<Vec<f32>>)> = match panels {
        Panels::LayerMeans => (0..map.layers.len())
            .map(|l| {
                // One panel of one head (an RNN's single alignment) needs no layer name.
                let title = match (map.layers.len(), map.layers[l].len()) {
                    (1, 1) => "attention".to_string(),
                    (_, 1) => format!("layer {}", l + 1),
                    (_, heads) => format!("layer {} (mean of {heads} heads)", l + 1),
                };
                (title, map.mean_over_heads(l))
            })
            .collect(),
        Panels::HeadsOf(layer) => {
            if layer == 0 || layer > map.layers.len() {
                bail!(
                    "--heads {layer}: the model has decoder layers 1 to {}",
                    map.layers.len()
                )
            }
            map.layers[layer - 1]
                .iter()
                .enumerate()
                .map(|(h, w)| (format!("layer {layer}, head {}", h + 1), w.clone()))
                .collect()
        }
    };
    register_font();
    let src: Vec<String> = map.src_tokens.iter().map(|t| display_token(t)).collect();
    let tgt: Vec<String> = map.tgt_tokens.iter().map(|t| display_token(t)).collect();
    let layout = Layout::new(&src, &tgt, panels.len());
    let size = (layout.width as u32, layout.height as u32);
    let result = match ext.as_deref() {
        Some("svg") => {
            let root = SVGBackend::new(path, size).into_drawing_area();
            paint(&root, &layout, &src, &tgt, &panels)
                .and_then(|()| root.present().map_err(|e| anyhow::anyhow!("{e}")))
        }
        Some("png") => {
            let root = BitMapBackend::new(path, size).into_drawing_area();
            paint(&root, &layout, &src, &tgt, &panels)
                .and_then(|()| root.present().map_err(|e| anyhow::anyhow!("{e}")))
        }
        _ => bail!(
            "{}: the attention plot must end in .svg or .png",
            path.display()
        ),
    };
    result.with_context(|| format!("drawing the attention plot {}", path.display()))
}

/// Pixel geometry of the figure.
struct Layout {
    left: i32,
    top: i32,
    grid_w: i32,
    grid_h: i32,
    cols: usize,
    width: i32,
    height: i32,
}

impl Layout {
    fn new(src: &[String], tgt: &[String], n_panels: usize) -> Self {
        // Label extents from the font itself, so long subwords never overlap the grid.
        let width_of = |labels: &[String]| {
            labels
                .iter()
                .map(|l| text_width(l, LABEL_SIZE))
                .max()
                .unwrap_or(0)
        };
        let left = width_of(tgt) + 10;
        let top = width_of(src) + 10 + TITLE_SIZE as i32 + 8;
        let grid_w = CELL * src.len() as i32;
        let grid_h = CELL * tgt.len() as i32;
        let cols = n_panels.clamp(1, PANELS_PER_ROW);
        let rows = n_panels.div_ceil(cols) as i32;
        let colour_bar = 80;
        let width = GAP + cols as i32 * (left + grid_w + GAP) + colour_bar;
        let height = GAP / 2 + rows * (top + grid_h + GAP);
        Self {
            left,
            top,
            grid_w,
            grid_h,
            cols,
            width,
            height: height.max(top + 200),
        }
    }

    /// Top-left corner of panel `k`'s grid.
    fn origin(&self, k: usize) -> (i32, i32) {
        let (r, c) = ((k / self.cols) as i32, (k % self.cols) as i32);
        (
            GAP + c * (self.left + self.grid_w + GAP) + self.left,
            GAP / 2 + r * (self.top + self.grid_h + GAP) + self.top,
        )
    }
}

fn text_width(text: &str, size: f64) -> i32 {
    register_font();
    let font: FontDesc = (FONT, size).into_font();
    font.box_size(text).map_or(
        (text.chars().count() as f64 * size * 0.6) as i32,
        |(w, _)| w as i32,
    )
}

fn colour(w: f32) -> RGBColor {
    ViridisRGB.get_color(w.clamp(0.0, 1.0))
}

fn paint<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    layout: &Layout,
    src: &[String],
    tgt: &[String],
    panels: &[(String, Vec<Vec<f32>>)],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("{e}");
    root.fill(&WHITE).map_err(err)?;
    let label = TextStyle::from((FONT, LABEL_SIZE).into_font()).color(&BLACK);
    let title = TextStyle::from((FONT, TITLE_SIZE).into_font()).color(&BLACK);
    for (k, (name, weights)) in panels.iter().enumerate() {
        let (x0, y0) = layout.origin(k);
        root.draw(&Text::new(
            name.clone(),
            (x0, y0 - layout.top + 4),
            title.pos(Pos::new(HPos::Left, VPos::Top)),
        ))
        .map_err(err)?;
        for (t, row) in weights.iter().enumerate() {
            for (s, &w) in row.iter().enumerate() {
                let (x, y) = (x0 + CELL * s as i32, y0 + CELL * t as i32);
                root.draw(&Rectangle::new(
                    [(x, y), (x + CELL, y + CELL)],
                    colour(w).filled(),
                ))
                .map_err(err)?;
            }
        }
        root.draw(&Rectangle::new(
            [(x0, y0), (x0 + layout.grid_w, y0 + layout.grid_h)],
            BLACK.stroke_width(1),
        ))
        .map_err(err)?;
        for (t, name) in tgt.iter().enumerate() {
            root.draw(&Text::new(
                name.clone(),
                (x0 - 6, y0 + CELL * t as i32 + CELL / 2),
                label.pos(Pos::new(HPos::Right, VPos::Center)),
            ))
            .map_err(err)?;
        }
        for (s, name) in src.iter().enumerate() {
            // Read bottom to top, ending just above the column.
            root.draw(&Text::new(
                name.clone(),
                (x0 + CELL * s as i32 + CELL / 2, y0 - 6),
                label
                    .transform(FontTransform::Rotate270)
                    .pos(Pos::new(HPos::Left, VPos::Center)),
            ))
            .map_err(err)?;
        }
    }
    // Colour scale: probability 0 (bottom) to 1 (top).
    let (_, gy) = layout.origin(0);
    let bar_x = layout.width - 70;
    let bar_h = layout.grid_h.max(120);
    let steps = 50;
    for i in 0..steps {
        let y = gy + bar_h - (i + 1) * bar_h / steps;
        let y1 = gy + bar_h - i * bar_h / steps;
        root.draw(&Rectangle::new(
            [(bar_x, y), (bar_x + 16, y1)],
            colour((i as f32 + 0.5) / steps as f32).filled(),
        ))
        .map_err(err)?;
    }
    for v in [0.0, 0.5, 1.0] {
        let y = gy + bar_h - (v * bar_h as f64) as i32;
        root.draw(&Text::new(
            format!("{v:.1}"),
            (bar_x + 22, y),
            label.pos(Pos::new(HPos::Left, VPos::Center)),
        ))
        .map_err(err)?;
    }
    Ok(())
}
