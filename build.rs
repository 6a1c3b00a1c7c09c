//! With feature `regen-abi`: regenerates `src/backend/cuda/abi.rs` from `kernels/abi.h` with
//! bindgen (needs libclang). Plain builds do nothing here, so they need no libclang; the
//! generated file is committed and CI regenerates it to check that it is current. The kernel
//! sources are embedded with `include_str!`, which cargo already tracks.
//!
//! With feature `cuda-emu`: compiles `kernels/*.cu` as host C++ against `kernels/emu/shim.h`
//! (the CUDA emulator, see docs/EMULATOR.md), with a table of every `extern "C"` kernel found
//! in the preprocessed source, so the Rust side launches kernels by name as it does on a GPU.
//! `TENSORFORGE_EMU_SANITIZE=address|undefined|thread` builds them under that sanitizer.
//!
//! Always: writes `$OUT_DIR/ops.h`, the kernels' op codes, from the `op_enum!` tables in
//! `src/backend/mod.rs`, the one place an op is listed (its code is its position there).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    ops_header();
    #[cfg(feature = "regen-abi")]
    regen_abi();
    #[cfg(feature = "cuda-emu")]
    emu::build();
}

/// The kernel families, as in `src/backend/cuda/compile.rs`'s MODULES.
#[cfg(feature = "cuda-emu")]
mod emu {
    use std::fmt::Write as _;
    use std::path::{Path, PathBuf};

    const FAMILIES: &[&str] =
        &["fill", "cast", "unary", "binary", "reduce", "softmax", "matmul", "index", "optim", "conv", "ctc", "rnn"];

    /// Names of the `extern "C"` functions defined in `file` (the family's own `.cu`, after the
    /// preprocessor, so macro-instantiated kernels count): those are its kernels.
    pub fn kernel_names(expanded: &str, file: &str) -> Vec<String> {
        let mut names = Vec::new();
        let mut in_file = false;
        for line in expanded.lines() {
            if let Some(rest) = line.strip_prefix("# ") {
                // Line markers: `# 12 "path/to/file.cu" 2`
                in_file = rest.split('"').nth(1).is_some_and(|f| f.ends_with(file));
                continue;
            }
            if !in_file {
                continue;
            }
            let mut rest = line;
            while let Some(i) = rest.find("extern \"C\"") {
                rest = &rest[i + 10..];
                let words: Vec<&str> = rest.trim_start().splitn(2, '(').collect();
                let head: Vec<&str> = words[0].split_whitespace().collect();
                if head.len() == 2 && head[0] == "void" && words.len() == 2 {
                    names.push(head[1].to_string());
                }
            }
        }
        names
    }

    fn sanitize(b: &mut cc::Build) {
        if let Ok(s) = std::env::var("TENSORFORGE_EMU_SANITIZE")
            && !s.is_empty()
        {
            b.flag(format!("-fsanitize={s}")).flag("-fno-omit-frame-pointer").flag("-fno-sanitize-recover=all");
            // rustc links through the C compiler but with -nodefaultlibs, which drops the
            // sanitizer runtimes: name them.
            for (check, lib) in [("address", "asan"), ("undefined", "ubsan"), ("thread", "tsan")] {
                if s.split(',').any(|x| x == check) {
                    println!("cargo:rustc-link-lib=dylib={lib}");
                }
            }
        }
    }

    pub fn build() {
        println!("cargo:rerun-if-env-changed=TENSORFORGE_EMU_SANITIZE");
        let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("emu");
        std::fs::create_dir_all(&out).unwrap();
        let kernels = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
        println!("cargo:rerun-if-changed={}", kernels.display());
        let base = || {
            let mut b = cc::Build::new();
            b.cpp(true)
                .std("c++17")
                .include(&kernels)
                .include(kernels.join("emu"))
                .include(std::env::var("OUT_DIR").unwrap())
                .opt_level(1)
                .warnings(false)
                .flag_if_supported("-Wno-unknown-pragmas")
                .flag("-fno-strict-aliasing");
            sanitize(&mut b);
            b
        };
        let mut table = String::from("#include \"shim.h\"\n#include <stddef.h>\n");
        let mut all = String::from("static const TfEmuKernel* const families[] = {");
        let mut build = base();
        for fam in FAMILIES {
            let tu = out.join(format!("{fam}.cpp"));
            let head = format!("#include \"shim.h\"\n#include \"{fam}.cu\"\n");
            std::fs::write(&tu, &head).unwrap();
            let expanded = base().file(&tu).expand();
            let names = kernel_names(&String::from_utf8_lossy(&expanded), &format!("{fam}.cu"));
            assert!(!names.is_empty(), "no kernels found in kernels/{fam}.cu");
            let mut src = head;
            writeln!(src, "extern \"C\" const TfEmuKernel tf_emu_family_{fam}[] = {{").unwrap();
            for n in &names {
                writeln!(src, "    TF_EMU_KERNEL({n}),").unwrap();
            }
            src.push_str("    {nullptr, nullptr}};\n");
            std::fs::write(&tu, src).unwrap();
            build.file(&tu);
            writeln!(table, "extern \"C\" const TfEmuKernel tf_emu_family_{fam}[];").unwrap();
            write!(all, "tf_emu_family_{fam}, ").unwrap();
        }
        table.push_str(&all);
        table.push_str(
            "nullptr};\n// Kernel i over every family in order, or null past the last.\n\
             extern \"C\" const TfEmuKernel* tf_emu_builtin(size_t i) {\n\
             \x20   for (const TfEmuKernel* const* f = families; *f; ++f)\n\
             \x20       for (const TfEmuKernel* k = *f; k->name; ++k)\n\
             \x20           if (i-- == 0) return k;\n\
             \x20   return nullptr;\n}\n",
        );
        let t = out.join("table.cpp");
        std::fs::write(&t, table).unwrap();
        build.file(&t).file(kernels.join("emu/runtime.cpp"));
        build.compile("tensorforge_emu");
    }
}

/// The `op_enum!` tables of `src/backend/mod.rs` as C enums: `UnaryOp { Neg => "neg", … }`
/// becomes `enum TfUnaryOp { TF_UNARY_NEG = 0, … }` (the prefix from the enum's name, each
/// constant from the op's name), numbered as the Rust enum's `code()`.
fn ops_header() {
    let src_path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/backend/mod.rs");
    println!("cargo:rerun-if-changed={src_path}");
    let src = std::fs::read_to_string(src_path).expect("read src/backend/mod.rs");
    let mut out = String::from(
        "/* The kernels' op codes, generated by build.rs from the op_enum! tables in\n \
         * src/backend/mod.rs (an op's code is its position there). Do not edit. */\n\
         #ifndef TF_OPS_H\n#define TF_OPS_H\n",
    );
    let mut rest = src.as_str();
    let mut tables = 0;
    while let Some(i) = rest.find("op_enum!(") {
        rest = &rest[i + "op_enum!(".len()..];
        let body = &rest[..rest.find(");").expect("op_enum!( without );")];
        // Skip the doc comments; then `Name { Variant => "name", ... }`.
        let code: String = body.lines().filter(|l| !l.trim_start().starts_with("///")).collect::<Vec<_>>().join(" ");
        let open = code.find('{').expect("op_enum! table without {");
        let name = code[..open].trim();
        let prefix = name.strip_suffix("Op").expect("op_enum! names end in Op").to_uppercase();
        out.push_str(&format!("enum Tf{name} {{"));
        for (k, entry) in
            code[open + 1..code.rfind('}').unwrap()].split(',').filter(|e| !e.trim().is_empty()).enumerate()
        {
            let kname = entry.split('"').nth(1).expect("op_enum! entry `Variant => \"name\"`");
            out.push_str(&format!(" TF_{prefix}_{} = {k},", kname.to_uppercase()));
        }
        out.push_str(" };\n");
        tables += 1;
    }
    assert!(tables >= 4, "expected the op_enum! tables in src/backend/mod.rs, found {tables}");
    out.push_str("#endif\n");
    let dst = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("ops.h");
    if std::fs::read_to_string(&dst).ok().as_deref() != Some(out.as_str()) {
        std::fs::write(&dst, out).expect("write ops.h");
    }
}

#[cfg(feature = "regen-abi")]
fn regen_abi() {
    println!("cargo:rerun-if-changed=kernels/abi.h");
    let bindings = bindgen::Builder::default()
        .header("kernels/abi.h")
        .allowlist_type("Tf.*")
        .allowlist_var("TF_.*")
        .derive_debug(true)
        .derive_copy(true)
        .derive_default(true)
        .layout_tests(false)
        .generate_comments(false)
        .raw_line("//! The kernel ABI, generated by bindgen from `kernels/abi.h` (`cargo build --features regen-abi`).")
        .raw_line("#![allow(non_camel_case_types, non_upper_case_globals, dead_code, clippy::all)]")
        .generate()
        .expect("bindgen could not parse kernels/abi.h");
    bindings.write_to_file("src/backend/cuda/abi.rs").expect("cannot write src/backend/cuda/abi.rs");
}
