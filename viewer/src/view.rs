//! Mapping between map coordinates and canvas pixels: fit, zoom about the cursor, pan, and
//! finding the point under the cursor.

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct View {
    /// Canvas pixels per map unit.
    pub scale: f64,
    /// Canvas position of the map origin.
    pub offset: (f64, f64),
}

impl Default for View {
    fn default() -> Self {
        View {
            scale: 1.0,
            offset: (0.0, 0.0),
        }
    }
}

impl View {
    /// Shows every point of `coords` (x, y pairs) inside a `width` x `height` canvas with a margin.
    pub fn fit(coords: &[f64], width: f64, height: f64, margin: f64) -> View {
        let (mut min_x, mut max_x, mut min_y, mut max_y) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for p in coords.chunks(2) {
            min_x = min_x.min(p[0]);
            max_x = max_x.max(p[0]);
            min_y = min_y.min(p[1]);
            max_y = max_y.max(p[1]);
        }
        if coords.is_empty() {
            return View::default();
        }
        let span_x = (max_x - min_x).max(1e-12);
        let span_y = (max_y - min_y).max(1e-12);
        let scale = ((width - 2.0 * margin) / span_x).min((height - 2.0 * margin) / span_y);
        let center = ((min_x + max_x) / 2.0, (min_y + max_y) / 2.0);
        View {
            scale,
            offset: (
                width / 2.0 - center.0 * scale,
                height / 2.0 - center.1 * scale,
            ),
        }
    }

    pub fn to_screen(&self, x: f64, y: f64) -> (f64, f64) {
        (
            x * self.scale + self.offset.0,
            y * self.scale + self.offset.1,
        )
    }

    pub fn to_map(&self, sx: f64, sy: f64) -> (f64, f64) {
        (
            (sx - self.offset.0) / self.scale,
            (sy - self.offset.1) / self.scale,
        )
    }

    /// Zooms by `factor` keeping the map point under (sx, sy) where it is.
    pub fn zoom_at(&mut self, sx: f64, sy: f64, factor: f64) {
        let (mx, my) = self.to_map(sx, sy);
        self.scale *= factor;
        self.offset = (sx - mx * self.scale, sy - my * self.scale);
    }

    pub fn pan(&mut self, dx: f64, dy: f64) {
        self.offset.0 += dx;
        self.offset.1 += dy;
    }

    /// The point drawn nearest to (sx, sy), if one is within `radius` pixels.
    pub fn pick(&self, coords: &[f64], sx: f64, sy: f64, radius: f64) -> Option<usize> {
        self.pick_where(coords, sx, sy, radius, |_| true)
    }

    /// Like [`View::pick`], among the points `shown` accepts (the visible classes).
    pub fn pick_where(
        &self,
        coords: &[f64],
        sx: f64,
        sy: f64,
        radius: f64,
        shown: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        coords
            .chunks(2)
            .enumerate()
            .filter(|&(i, _)| shown(i))
            .map(|(i, p)| {
                let (px, py) = self.to_screen(p[0], p[1]);
                (i, (px - sx).powi(2) + (py - sy).powi(2))
            })
            .filter(|&(_, d2)| d2 <= radius * radius)
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_zoom_pan_and_pick() {
        let coords = [-1.0, -1.0, 1.0, 1.0, 0.5, -0.5];
        let mut view = View::fit(&coords, 220.0, 120.0, 10.0);
        assert_eq!(view.to_screen(-1.0, -1.0), (60.0, 10.0));
        assert_eq!(view.to_screen(1.0, 1.0), (160.0, 110.0));
        assert_eq!(view.pick(&coords, 161.0, 108.0, 4.0), Some(1));
        assert_eq!(view.pick(&coords, 110.0, 60.0, 4.0), None);
        assert_eq!(
            view.pick_where(&coords, 161.0, 108.0, 4.0, |i| i != 1),
            None
        );
        assert_eq!(
            view.pick_where(&coords, 161.0, 108.0, 80.0, |i| i != 1),
            Some(2)
        );
        view.zoom_at(160.0, 110.0, 2.0);
        assert_eq!(view.to_screen(1.0, 1.0), (160.0, 110.0));
        assert_eq!(view.to_screen(0.0, 0.0), (60.0, 10.0));
        view.pan(5.0, -5.0);
        assert_eq!(view.to_map(65.0, 5.0), (0.0, 0.0));
    }
}
