//! The viewer page's entry point (`trunk serve` / `trunk build` in viewer/).

#[cfg(target_arch = "wasm32")]
fn main() {
    viewer::start();
}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    eprintln!(
        "the viewer runs in a browser: build and serve it with `trunk serve` in viewer/ \
         (see the README)"
    );
    std::process::exit(2);
}
