//! Compiles the C++ shim (dual levels, autocast, device memory) against the libtorch that torch-sys found, links
//! `torch_cuda` even though no Rust symbol needs it (so CUDA is visible when present)
//! and records libtorch's folder as an rpath so the binary runs without LD_LIBRARY_PATH.
use std::path::PathBuf;

fn main() {
    const SHIM: [&str; 3] = ["csrc/dual_level.cpp", "csrc/autocast.cpp", "csrc/device_memory.cpp"];
    for f in SHIM.iter().chain(&["csrc/guarded.h"]) {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let lib = PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB")
            .expect("torch-sys did not report DEP_TCH_LIBTORCH_LIB; run through `make`"),
    );
    let include = lib.join("../include");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        // Every torch >= 2.7 wheel is built with the new libstdc++ ABI.
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .files(SHIM)
        .compile("meanflow_shim");
    build_dist(&include);

    println!("cargo:rustc-link-search=native={}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        // --as-needed would drop torch_cuda (no symbol is referenced from it) and with it
        // the CUDA backend registration.
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    // RUNPATH (not RPATH), so LD_LIBRARY_PATH can still point at another torch/lib.
    println!("cargo:rustc-link-arg=-Wl,--enable-new-dtags,-rpath,{}", lib.display());
}

/// The data-parallel shim (csrc/dist.cpp) over libtorch's c10d: Gloo always, against the
/// declaration-only gloo headers in csrc/gloo/; NCCL with the `nccl` feature, against the
/// `nccl.h` and CUDA headers of the nvidia-* wheels next to torch (or MEANFLOW_CUDA_INCLUDE).
fn build_dist(include: &std::path::Path) {
    for f in ["csrc/dist.cpp", "csrc/gloo"] {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-env-changed=MEANFLOW_CUDA_INCLUDE");
    let mut b = cc::Build::new();
    b.cpp(true)
        .pic(true)
        .warnings(false)
        .include(include)
        .include(include.join("torch/csrc/api/include"))
        .include("csrc")
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("USE_C10D_GLOO", None)
        .file("csrc/dist.cpp");
    if std::env::var_os("CARGO_FEATURE_NCCL").is_some() {
        b.define("USE_C10D_NCCL", None).define("MF_WITH_NCCL", None).define("USE_CUDA", None);
        let mut dirs: Vec<PathBuf> = std::env::var("MEANFLOW_CUDA_INCLUDE")
            .map(|v| std::env::split_paths(&v).collect())
            .unwrap_or_default();
        // torch/include/.. is site-packages/torch; the nvidia wheels sit beside it.
        if let Ok(rd) = std::fs::read_dir(include.join("../../nvidia")) {
            for e in rd.flatten() {
                for sub in ["include", "cu13/include"] {
                    let d = e.path().join(sub);
                    if d.is_dir() {
                        dirs.push(d);
                    }
                }
            }
        }
        for d in dirs {
            // CUDA 13 keeps thrust/cub/libcudacxx under include/cccl.
            if d.join("cccl").is_dir() {
                b.include(d.join("cccl"));
            }
            b.include(d);
        }
    }
    b.compile("meanflow_dist");
}
