//! What the viewer needs from an encoder `.onnx`: one float input of shape [N, 3, S, S]
//! (square images in [0, 1], at the size the encoder was trained at) and one float output of
//! shape [N, D]. Anything else is refused with a message saying which shape was found.

use anyhow::{ensure, Result};

/// An input or output as the runtime describes it: name, whether it is a float32 tensor, and
/// its dimensions (-1 or any negative number for a dynamic one).
#[derive(Debug, Clone)]
pub struct Port {
    pub name: String,
    pub is_f32: bool,
    pub dims: Vec<i64>,
}

fn show(dims: &[i64]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|&d| if d < 0 { "N".into() } else { d.to_string() })
        .collect();
    format!("[{}]", parts.join(", "))
}

/// What the viewer feeds the encoder and gets back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shapes {
    /// Side S of the square input images.
    pub side: usize,
    /// Embedding width D.
    pub dim: usize,
}

/// Checks the model's ports and returns the image side S and the embedding width D.
pub fn check(inputs: &[Port], outputs: &[Port]) -> Result<Shapes> {
    ensure!(
        inputs.len() == 1 && outputs.len() == 1,
        "the model has {} inputs and {} outputs; the viewer needs an image encoder with one \
         input [N, 3, S, S] and one output [N, D] (export one with `trainer export`)",
        inputs.len(),
        outputs.len()
    );
    let (input, output) = (&inputs[0], &outputs[0]);
    let image_ok = input.dims.len() == 4
        && input.dims[1] == 3
        && input.dims[2] >= 8
        && input.dims[2] == input.dims[3];
    ensure!(
        input.is_f32 && image_ok,
        "the model's input '{}' is {}{}; the viewer feeds float32 square RGB images \
         [N, 3, S, S] (S fixed, at least 8)",
        input.name,
        if input.is_f32 { "" } else { "not float32, " },
        show(&input.dims)
    );
    ensure!(
        output.is_f32 && output.dims.len() == 2 && output.dims[1] > 0,
        "the model's output '{}' is {}{}; the viewer needs float32 embeddings [N, D]",
        output.name,
        if output.is_f32 { "" } else { "not float32, " },
        show(&output.dims)
    );
    Ok(Shapes {
        side: input.dims[2] as usize,
        dim: output.dims[1] as usize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: &str, dims: &[i64]) -> Port {
        Port {
            name: name.into(),
            is_f32: true,
            dims: dims.to_vec(),
        }
    }

    #[test]
    fn accepts_the_exported_encoder_and_names_what_is_wrong() {
        let images = port("images", &[-1, 3, 32, 32]);
        let embedding = port("embedding", &[-1, 512]);
        let shapes = check(&[images.clone()], &[embedding.clone()]).unwrap();
        assert_eq!(shapes, Shapes { side: 32, dim: 512 });
        let stl = check(&[port("images", &[-1, 3, 96, 96])], &[embedding.clone()]).unwrap();
        assert_eq!(stl.side, 96);
        let err = check(&[port("x", &[1, 3, 224, 160])], &[embedding.clone()]);
        let err = err.unwrap_err().to_string();
        assert!(err.contains("input 'x' is [1, 3, 224, 160]"), "{err}");
        let err = check(&[port("x", &[-1, 3, -1, -1])], &[embedding.clone()]).unwrap_err();
        assert!(err.to_string().contains("is [N, 3, N, N]"), "{err}");
        let err = check(&[images.clone()], &[port("logits", &[-1, 10, 1])]);
        let err = err.unwrap_err().to_string();
        assert!(err.contains("output 'logits' is [N, 10, 1]"), "{err}");
        let err = check(&[images.clone(), images], &[embedding]).unwrap_err();
        assert!(err.to_string().contains("2 inputs and 1 outputs"));
    }
}
