//! The engine's side of `benches/compare/run.sh`: times one case and prints its median.
//!
//! `cargo bench --bench compare -- <case> <threads> <reps>` prints `ours_ms=<median>`.
//! Cases mirror `benches/compare/peers.py` exactly (shapes, dtype f32, fresh outputs).

use std::time::Instant;
use tensorforge::{DType, Device, Result, Tensor};

fn randn(shape: impl Into<tensorforge::Shape>) -> Result<Tensor> {
    Tensor::randn(0.0, 1.0, shape, DType::F32, Device::Cpu)
}

/// Builds the inputs of `case` and returns a closure running it once.
fn case(name: &str) -> Result<Box<dyn Fn() -> Result<Tensor>>> {
    if let Some(n) = name.strip_prefix("sgemm") {
        let n: usize = n.parse().map_err(|_| tensorforge::Error::msg(format!("bad case {name}")))?;
        let (a, b) = (randn((n, n))?, randn((n, n))?);
        return Ok(Box::new(move || a.matmul(&b)));
    }
    Ok(match name {
        "bmm64x128" => {
            let (a, b) = (randn((64, 128, 128))?, randn((64, 128, 128))?);
            Box::new(move || a.matmul(&b))
        }
        "add16M" => {
            let (a, b) = (randn(1 << 24)?, randn(1 << 24)?);
            Box::new(move || a.add(&b))
        }
        "conv2d_n32c64k64" => {
            let (x, w) = (randn((32, 64, 32, 32))?, randn((64, 64, 3, 3))?);
            let opt = tensorforge::ops::Conv2dOptions { padding: (1, 1), ..Default::default() };
            Box::new(move || x.conv2d(&w, None, opt))
        }
        "softmax4096x1024" => {
            let a = randn((4096, 1024))?;
            Box::new(move || a.softmax(-1))
        }
        _ => return Err(tensorforge::Error::msg(format!("unknown case {name}"))),
    })
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let [name, threads, reps] = args.as_slice() else {
        eprintln!("usage: compare <case> <threads> <reps>");
        std::process::exit(2);
    };
    let threads: usize = threads.parse().unwrap_or(1);
    let reps: usize = reps.parse().unwrap_or(10);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| tensorforge::Error::msg(e.to_string()))?;
    pool.install(|| -> Result<()> {
        let run = case(name)?;
        run()?; // warm-up: page-in, thread start
        let mut times: Vec<f64> = (0..reps)
            .map(|_| {
                let t = Instant::now();
                let out = run();
                let ms = t.elapsed().as_secs_f64() * 1e3;
                out.map(|_| ms)
            })
            .collect::<Result<_>>()?;
        times.sort_by(f64::total_cmp);
        println!("ours_ms={:.4}", times[times.len() / 2]);
        Ok(())
    })
}
