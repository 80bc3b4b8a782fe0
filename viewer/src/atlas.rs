//! One texture of every sample's thumbnail (the TF Embedding Projector's sprite technique):
//! the map draws each point as a sprite cut from it, so 10,000 images cost one draw call.

use crate::samples::SampleSet;

/// Thumbnails in a square grid: `per_row` cells of `cell` x `cell` pixels per side, RGBA.
pub struct Atlas {
    pub rgba: Vec<u8>,
    /// Side of the texture in pixels (`per_row * cell`).
    pub side: usize,
    pub per_row: usize,
    pub cell: usize,
}

/// The thumbnail size that fits `n` cells into a texture of at most `max_side` pixels: 32 px
/// when they fit, else smaller (16 px for 10,000 in 2048), at least 4.
pub fn cell_size(n: usize, max_side: usize) -> usize {
    let per_row = (n as f64).sqrt().ceil().max(1.0) as usize;
    (max_side / per_row).clamp(4, 32)
}

/// Builds the atlas of every sample at `cell` pixels (a box filter when shrinking, nearest
/// when enlarging), cells in sample order, row by row.
pub fn build(set: &SampleSet, cell: usize) -> Atlas {
    let n = set.len();
    let per_row = (n as f64).sqrt().ceil().max(1.0) as usize;
    let side = per_row * cell;
    let mut rgba = vec![0u8; side * side * 4];
    let s = set.side;
    let plane = s * s;
    for i in 0..n {
        let image = set.image(i);
        let (cx, cy) = ((i % per_row) * cell, (i / per_row) * cell);
        for ty in 0..cell {
            // The source rows and columns this thumbnail pixel covers (at least one).
            let (y0, y1) = (ty * s / cell, ((ty + 1) * s / cell).max(ty * s / cell + 1));
            for tx in 0..cell {
                let (x0, x1) = (tx * s / cell, ((tx + 1) * s / cell).max(tx * s / cell + 1));
                let mut sum = [0u32; 3];
                for y in y0..y1 {
                    for x in x0..x1 {
                        for (c, total) in sum.iter_mut().enumerate() {
                            *total += image[c * plane + y * s + x] as u32;
                        }
                    }
                }
                let count = ((y1 - y0) * (x1 - x0)) as u32;
                let at = ((cy + ty) * side + cx + tx) * 4;
                for c in 0..3 {
                    rgba[at + c] = ((sum[c] + count / 2) / count) as u8;
                }
                rgba[at + 3] = 255;
            }
        }
    }
    Atlas {
        rgba,
        side,
        per_row,
        cell,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples::FORMAT;

    #[test]
    fn sizes_cells_to_fit_the_texture() {
        assert_eq!(cell_size(10_000, 2048), 20);
        assert_eq!(cell_size(1000, 2048), 32);
        assert_eq!(cell_size(1_000_000, 2048), 4);
    }

    #[test]
    fn shrinks_each_image_into_its_cell() {
        // Three 8x8 images: image 1 has a red top-left quarter (4x4) and is otherwise black.
        let json = format!(
            r#"{{"format":"{FORMAT}","count":3,"image_size":8,"layout":"planar-rgb-u8",
                "classes":["a"],"labels":[0,0,0]}}"#
        );
        let mut pixels = vec![0u8; 3 * 3 * 64];
        for y in 0..4 {
            for x in 0..4 {
                pixels[3 * 64 + y * 8 + x] = 200; // image 1, red plane
            }
        }
        pixels[2 * 3 * 64 + 64 + 7 * 8 + 7] = 40; // image 2, green, bottom-right pixel
        let set = SampleSet::parse(json.as_bytes(), pixels).unwrap();
        let atlas = build(&set, 2);
        // 3 images: a 2 x 2 grid of 2 px cells.
        assert_eq!((atlas.per_row, atlas.side, atlas.rgba.len()), (2, 4, 64));
        let px = |x: usize, y: usize| &atlas.rgba[(y * 4 + x) * 4..(y * 4 + x) * 4 + 4];
        // Image 1 sits in cell (1, 0): its top-left thumbnail pixel is the red quarter.
        assert_eq!(px(2, 0), &[200, 0, 0, 255]);
        assert_eq!(px(3, 0), &[0, 0, 0, 255]);
        // Image 2 in cell (0, 1): the bottom-right 4x4 block averages one pixel of 40.
        assert_eq!(px(1, 3), &[0, 3, 0, 255]);
        // The unused fourth cell stays transparent.
        assert_eq!(px(3, 3), &[0, 0, 0, 0]);
    }
}
