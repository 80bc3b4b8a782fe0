//! The map's points in WebGL2: one draw call of point sprites, each a coloured square or, with
//! "images on the map", its thumbnail cut from the atlas texture with a border in its class
//! colour. Where WebGL2 is missing the page draws the points with canvas 2D instead.

use anyhow::{anyhow, Result};
use js_sys::Float32Array;
use wasm_bindgen::JsCast;
use web_sys::{
    HtmlCanvasElement, WebGl2RenderingContext as Gl, WebGlBuffer, WebGlProgram, WebGlShader,
    WebGlTexture, WebGlUniformLocation,
};

use crate::atlas::Atlas;

const VERTEX: &str = r#"#version 300 es
in vec2 a_pos;
in vec3 a_colour;
in float a_cell;
uniform vec2 u_canvas;
uniform float u_size;
out vec3 v_colour;
out float v_cell;
void main() {
  gl_Position = vec4(a_pos.x / u_canvas.x * 2.0 - 1.0, 1.0 - a_pos.y / u_canvas.y * 2.0, 0.0, 1.0);
  gl_PointSize = u_size;
  v_colour = a_colour;
  v_cell = a_cell;
}
"#;

const FRAGMENT: &str = r#"#version 300 es
precision mediump float;
in vec3 v_colour;
in float v_cell;
uniform sampler2D u_atlas;
uniform float u_per_row;
uniform float u_images;
uniform float u_border;
out vec4 colour;
void main() {
  vec2 p = gl_PointCoord;
  bool edge = p.x < u_border || p.y < u_border || p.x > 1.0 - u_border || p.y > 1.0 - u_border;
  if (u_images < 0.5 || edge) {
    colour = vec4(v_colour, 1.0);
    return;
  }
  vec2 cell = vec2(mod(v_cell, u_per_row), floor(v_cell / u_per_row));
  vec2 inner = (p - u_border) / (1.0 - 2.0 * u_border);
  colour = texture(u_atlas, (cell + inner) / u_per_row);
}
"#;

/// Floats per point in the vertex buffer: screen x, y; colour r, g, b; atlas cell.
const STRIDE: usize = 6;

pub struct PointRenderer {
    gl: Gl,
    program: WebGlProgram,
    buffer: WebGlBuffer,
    texture: WebGlTexture,
    per_row: f32,
}

fn compile(gl: &Gl, kind: u32, source: &str) -> Result<WebGlShader> {
    let shader = gl
        .create_shader(kind)
        .ok_or_else(|| anyhow!("cannot create a shader"))?;
    gl.shader_source(&shader, source);
    gl.compile_shader(&shader);
    let ok = gl
        .get_shader_parameter(&shader, Gl::COMPILE_STATUS)
        .as_bool()
        .unwrap_or(false);
    match ok {
        true => Ok(shader),
        false => Err(anyhow!(
            "shader: {}",
            gl.get_shader_info_log(&shader).unwrap_or_default()
        )),
    }
}

impl PointRenderer {
    /// A renderer on `canvas`, or an error saying why WebGL2 is not available.
    pub fn new(canvas: &HtmlCanvasElement) -> Result<PointRenderer> {
        let gl: Gl = canvas
            .get_context("webgl2")
            .ok()
            .flatten()
            .ok_or_else(|| anyhow!("this browser has no WebGL2"))?
            .dyn_into()
            .map_err(|_| anyhow!("not a WebGL2 context"))?;
        let program = gl
            .create_program()
            .ok_or_else(|| anyhow!("cannot create a program"))?;
        gl.attach_shader(&program, &compile(&gl, Gl::VERTEX_SHADER, VERTEX)?);
        gl.attach_shader(&program, &compile(&gl, Gl::FRAGMENT_SHADER, FRAGMENT)?);
        gl.link_program(&program);
        if !gl
            .get_program_parameter(&program, Gl::LINK_STATUS)
            .as_bool()
            .unwrap_or(false)
        {
            return Err(anyhow!(
                "shader program: {}",
                gl.get_program_info_log(&program).unwrap_or_default()
            ));
        }
        let buffer = gl
            .create_buffer()
            .ok_or_else(|| anyhow!("cannot create a buffer"))?;
        let texture = gl
            .create_texture()
            .ok_or_else(|| anyhow!("cannot create a texture"))?;
        Ok(PointRenderer {
            gl,
            program,
            buffer,
            texture,
            per_row: 1.0,
        })
    }

    /// Uploads the thumbnails of the current samples.
    pub fn set_atlas(&mut self, atlas: &Atlas) -> Result<()> {
        let gl = &self.gl;
        gl.bind_texture(Gl::TEXTURE_2D, Some(&self.texture));
        let side = atlas.side as i32;
        gl.tex_image_2d_with_i32_and_i32_and_i32_and_format_and_type_and_opt_u8_array(
            Gl::TEXTURE_2D,
            0,
            Gl::RGBA as i32,
            side,
            side,
            0,
            Gl::RGBA,
            Gl::UNSIGNED_BYTE,
            Some(&atlas.rgba),
        )
        .map_err(|e| anyhow!("cannot upload the thumbnails: {e:?}"))?;
        for (key, value) in [
            (Gl::TEXTURE_MIN_FILTER, Gl::LINEAR),
            (Gl::TEXTURE_MAG_FILTER, Gl::LINEAR),
            (Gl::TEXTURE_WRAP_S, Gl::CLAMP_TO_EDGE),
            (Gl::TEXTURE_WRAP_T, Gl::CLAMP_TO_EDGE),
        ] {
            gl.tex_parameteri(Gl::TEXTURE_2D, key, value as i32);
        }
        self.per_row = atlas.per_row as f32;
        Ok(())
    }

    fn uniform(&self, name: &str) -> Option<WebGlUniformLocation> {
        self.gl.get_uniform_location(&self.program, name)
    }

    /// Draws `points` (STRIDE floats each: screen x, y, colour, atlas cell) as `size`-pixel
    /// sprites, thumbnails when `images`.
    pub fn draw(&self, points: &[f32], width: u32, height: u32, size: f32, images: bool) {
        let gl = &self.gl;
        gl.viewport(0, 0, width as i32, height as i32);
        gl.clear_color(1.0, 1.0, 1.0, 0.0);
        gl.clear(Gl::COLOR_BUFFER_BIT);
        gl.use_program(Some(&self.program));
        gl.bind_buffer(Gl::ARRAY_BUFFER, Some(&self.buffer));
        gl.buffer_data_with_array_buffer_view(
            Gl::ARRAY_BUFFER,
            &Float32Array::from(points),
            Gl::DYNAMIC_DRAW,
        );
        let bytes = (STRIDE * 4) as i32;
        for (name, size, offset) in [("a_pos", 2, 0), ("a_colour", 3, 2), ("a_cell", 1, 5)] {
            let at = gl.get_attrib_location(&self.program, name);
            if at >= 0 {
                gl.enable_vertex_attrib_array(at as u32);
                gl.vertex_attrib_pointer_with_i32(
                    at as u32,
                    size,
                    Gl::FLOAT,
                    false,
                    bytes,
                    offset * 4,
                );
            }
        }
        gl.active_texture(Gl::TEXTURE0);
        gl.bind_texture(Gl::TEXTURE_2D, Some(&self.texture));
        gl.uniform1i(self.uniform("u_atlas").as_ref(), 0);
        gl.uniform2f(
            self.uniform("u_canvas").as_ref(),
            width as f32,
            height as f32,
        );
        gl.uniform1f(self.uniform("u_size").as_ref(), size);
        gl.uniform1f(self.uniform("u_per_row").as_ref(), self.per_row);
        gl.uniform1f(
            self.uniform("u_images").as_ref(),
            if images { 1.0 } else { 0.0 },
        );
        gl.uniform1f(
            self.uniform("u_border").as_ref(),
            if images { 2.0 / size } else { 0.0 },
        );
        gl.draw_arrays(Gl::POINTS, 0, (points.len() / STRIDE) as i32);
    }
}

/// A `#rrggbb` colour as three floats in [0, 1].
pub fn rgb(hex: &str) -> [f32; 3] {
    let channel = |k: usize| {
        u8::from_str_radix(hex.get(1 + 2 * k..3 + 2 * k).unwrap_or("00"), 16).unwrap_or(0) as f32
            / 255.0
    };
    [channel(0), channel(1), channel(2)]
}
