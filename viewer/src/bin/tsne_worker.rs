//! The map's Web Worker, t-SNE and UMAP (trunk builds it with `data-type="worker"`), so the page stays
//! responsive while the layout converges.

#[cfg(target_arch = "wasm32")]
fn main() {
    viewer::worker::serve();
}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    eprintln!("tsne_worker runs as a Web Worker of the viewer page; build it with trunk");
    std::process::exit(2);
}
