//! Compiles `csrc/`: `fused_autograd.cpp`, the autograd nodes of the CPU training
//! pass's fused kernels (`src/fused/`), `weight_grads.cpp`, weight gradients added
//! into f32 without autograd (`src/weight_grads.rs`), and `operator_profile.cpp`,
//! libtorch's profiler for `src/operator_profile.rs`, against the libtorch that
//! torch-sys links: its headers beside the library folder torch-sys reports,
//! torch-sys's C++ ABI, and libtorch's OpenMP runtime.

use std::env;
use std::path::PathBuf;

fn main() {
    let sources = [
        "csrc/fused_autograd.cpp",
        "csrc/operator_profile.cpp",
        "csrc/weight_grads.cpp",
    ];
    for path in sources
        .iter()
        .chain(&["csrc/guarded.h", "csrc/weight_grads.h"])
    {
        println!("cargo:rerun-if-changed={path}");
    }
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    // torch-sys's `links = "tch"` metadata: the folder of libtorch's libraries.
    let lib = PathBuf::from(
        env::var("DEP_TCH_LIBTORCH_LIB")
            .expect("torch-sys reports libtorch's library folder (DEP_TCH_LIBTORCH_LIB)"),
    );
    let root = lib.parent().expect("libtorch's lib folder has a parent");
    let abi = env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        // `at::parallel_for` is inline: without OpenMP here its loop runs on the
        // calling thread alone (ATen/ParallelOpenMP.h), whatever libtorch's pool.
        .flag("-fopenmp")
        .files(sources)
        .compile("lsp_csrc");
    // OpenMP's runtime: libtorch's own copy (libtorch_cpu needs it by this name), so
    // that the nodes and libtorch's operators share one pool.
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib:+verbatim=libgomp.so.1");
}
